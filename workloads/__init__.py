"""What is asked of the hardware: model architectures, requests and workloads."""

from workloads.fetch import TRACES, TraceSource, cache_dir, fetch_trace
from workloads.fit import fit, scale
from workloads.kv_format import KV_FORMATS, KvFormat, kv_format, weight_bytes_per_param
from workloads.model import ModelSpec, MoeSpec
from workloads.model_catalog import (
    MODEL_PATH_ENV,
    get_model,
    list_models,
    load_model_toml,
    model_from_hf_config,
)
from workloads.stats import trace_stats
from workloads.synthetic import SyntheticSpec, generate, generate_workload
from workloads.traces import FORMATS, TraceFormat, TraceWarning, detect_format, read_trace
from workloads.workload import Request, Workload

__all__ = [
    "SyntheticSpec",
    "fit",
    "generate",
    "generate_workload",
    "scale",
    "FORMATS",
    "TRACES",
    "TraceFormat",
    "TraceSource",
    "TraceWarning",
    "cache_dir",
    "detect_format",
    "fetch_trace",
    "read_trace",
    "trace_stats",
    "KV_FORMATS",
    "MODEL_PATH_ENV",
    "KvFormat",
    "ModelSpec",
    "MoeSpec",
    "Request",
    "Workload",
    "get_model",
    "kv_format",
    "list_models",
    "load_model_toml",
    "model_from_hf_config",
    "weight_bytes_per_param",
]
