"""Hardware & models: catalog browser, roofline of a model's prefill and decode against each
device's ridge point, and KV bytes vs context."""

from __future__ import annotations

import streamlit as st

from app import figures, hardware_data, ui
from app.uploads import read_as_upload, save_upload
from hardware.catalog import get_entry
from workloads.kv_format import KV_FORMATS
from workloads.model import ModelSpec
from workloads.model_catalog import model_from_hf_config

ROOFLINE_DTYPES = ("bf16", "fp8", "fp4", "int8")
DEFAULT_DEVICES = ("a100-80gb-sxm", "h100-sxm", "h200-sxm", "b200", "l4", "mi300x")

st.title("Hardware & models")
st.caption(
    "The catalogs kvsim prices runs with. Numbers are in SI units (GB = 10⁹ bytes); every "
    "catalog number cites its source (pick an entry to see them)."
)

catalog_models = {m.id: m for m in ui.models()}
devices = {a.id: a for a in ui.accelerators()}


def _uploaded_model() -> ModelSpec | None:
    upload = st.sidebar.file_uploader(
        "Custom model: a Hugging Face config.json", type=["json"], key="hw_model_upload"
    )
    if upload is None:
        return None
    model = None
    with ui.user_errors():
        path = save_upload(upload.name, upload.getvalue())
        model = read_as_upload(path, upload.name, model_from_hf_config)
        st.sidebar.success(f"Loaded {model.id}: {model.param_count() / 1e9:.2f} B parameters")
    return model


custom = _uploaded_model()
all_models = dict(catalog_models)
if custom is not None:
    all_models[custom.id] = custom

tab_acc, tab_tiers, tab_links, tab_models, tab_roof, tab_kv = st.tabs(
    ["Accelerators", "Memory tiers", "Links", "Models", "Roofline", "KV size"]
)

with tab_acc:
    st.dataframe(
        hardware_data.accelerator_frame(devices.values()), hide_index=True, width="stretch"
    )
    picked = st.selectbox("Sources of", sorted(devices), key="hw_sources_of")
    entry = get_entry(picked, kind="accelerator")
    st.caption(f"File: `{entry.path.name}`")
    st.dataframe(
        [{"field": k, "source": v} for k, v in entry.sources.items()],
        hide_index=True,
        width="stretch",
    )

with tab_tiers:
    st.dataframe(hardware_data.tier_frame(ui.tiers()), hide_index=True, width="stretch")

with tab_links:
    st.dataframe(hardware_data.link_frame(ui.links()), hide_index=True, width="stretch")

with tab_models:
    kv_dtype = st.selectbox("KV dtype for bytes/token", list(KV_FORMATS), index=1, key="hw_kv")
    st.dataframe(
        hardware_data.model_frame(all_models.values(), kv_dtype), hide_index=True, width="stretch"
    )

with tab_roof:
    left, right = st.columns([1, 3])
    with left:
        model_id = st.selectbox(
            "Model",
            list(all_models),
            index=list(all_models).index("llama-3.1-8b") if "llama-3.1-8b" in all_models else 0,
            key="roof_model",
        )
        peak_dtype = st.selectbox("Peak compute dtype", ROOFLINE_DTYPES, key="roof_dtype")
        weight_dtype = st.selectbox(
            "Weight dtype", ("bf16", "fp8", "int8", "int4"), key="roof_weight_dtype"
        )
        roof_kv = st.selectbox("KV dtype", list(KV_FORMATS), index=1, key="roof_kv")
        prompt = st.number_input(
            "Prefill prompt (tokens)", min_value=1, value=2048, step=256, key="roof_prompt"
        )
        batch = st.number_input(
            "Decode batch (sequences)", min_value=1, value=32, step=8, key="roof_batch"
        )
        context = st.number_input(
            "Decode context (tokens)", min_value=1, value=2048, step=256, key="roof_context"
        )
        chosen = st.multiselect(
            "Devices",
            sorted(devices),
            default=[d for d in DEFAULT_DEVICES if d in devices],
            key="roof_devices",
        )
    with right, ui.user_errors():
        model = all_models[model_id]
        if not chosen:
            st.info("Pick at least one device.")
        else:
            phases = hardware_data.phase_intensity_frame(
                model,
                devices[chosen[0]],
                prompt_tokens=int(prompt),
                decode_batch=int(batch),
                context_tokens=int(context),
                weight_dtype=weight_dtype,
                kv_dtype=roof_kv,
            )
            ridges = hardware_data.ridge_frame([devices[d] for d in chosen], peak_dtype)
            missing = sorted(set(chosen) - set(ridges["id"]) if len(ridges) else set(chosen))
            if missing:
                st.info(f"No {peak_dtype} tensor unit (left out): {', '.join(missing)}")
            if len(ridges):
                st.plotly_chart(figures.roofline_figure(ridges, phases), width="stretch")
                st.dataframe(
                    hardware_data.bound_table(phases, ridges), hide_index=True, width="stretch"
                )
            st.dataframe(phases, hide_index=True, width="stretch")

with tab_kv:
    left, right = st.columns([1, 3])
    with left:
        kv_models = st.multiselect(
            "Models",
            list(all_models),
            default=[
                m for m in ("llama-3.1-8b", "llama-3.1-70b", "deepseek-v3") if m in all_models
            ],
            key="kv_models",
        )
        kv_dtypes = st.multiselect(
            "KV dtypes", list(KV_FORMATS), default=["fp16", "fp8"], key="kv_dtypes"
        )
        device = st.selectbox(
            "Show HBM of", ["(none)", *sorted(devices)], index=0, key="kv_capacity_device"
        )
    with right:
        if not kv_models or not kv_dtypes:
            st.info("Pick at least one model and one KV dtype.")
        else:
            curves = hardware_data.kv_curve_frame([all_models[m] for m in kv_models], kv_dtypes)
            capacity = None if device == "(none)" else devices[device].memory_bytes / 1e9
            st.plotly_chart(figures.kv_bytes_figure(curves, capacity), width="stretch")
