"""What is asked of the hardware: model architectures, requests and workloads."""

from workloads.kv_format import KV_FORMATS, KvFormat, kv_format, weight_bytes_per_param
from workloads.model import ModelSpec, MoeSpec
from workloads.model_catalog import (
    MODEL_PATH_ENV,
    get_model,
    list_models,
    load_model_toml,
    model_from_hf_config,
)
from workloads.workload import Request, Workload

__all__ = [
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
