"""AppTest of the Hardware & models page: default render, changed knobs, a bad upload."""

from __future__ import annotations

import base64
import json

import numpy as np
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from app.navigation import APP_DIR

PAGE = str(APP_DIR / "pages" / "hardware_page.py")


@pytest.fixture
def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def _charts(at: AppTest) -> list:
    return [plotly.io.from_json(c.proto.spec) for c in at.get("plotly_chart")]


def _values(array) -> np.ndarray:
    """A plotly JSON array: a list, or numpy's typed-array encoding (dtype + base64)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array)


def test_default_render(page):
    assert not page.exception and not page.error
    assert [t.label for t in page.tabs] == [
        "Accelerators",
        "Memory tiers",
        "Links",
        "Models",
        "Roofline",
        "KV size",
    ]
    titles = [c.layout.title.text for c in _charts(page)]
    assert titles == [
        "Roofline: attainable compute vs arithmetic intensity",
        "KV cache of one sequence vs context length",
    ]
    # Sources of the default device are listed field by field.
    sources = page.dataframe[1].value
    assert "bf16_flops_per_s" in set(sources["field"])


def test_changed_knobs(page):
    page.selectbox(key="roof_dtype").set_value("fp4").run()
    assert not page.exception
    info = " ".join(i.value for i in page.info)
    assert "No fp4 tensor unit" in info and "h100-sxm" in info
    page.number_input(key="roof_batch").set_value(1).run()
    bound = page.dataframe[5].value  # the device × phase bound table
    assert set(bound["bound"]) == {"compute", "memory"}
    page.multiselect(key="kv_models").set_value(["llama-3.1-8b"]).run()
    page.multiselect(key="kv_dtypes").set_value(["fp16"]).run()
    kv = _charts(page)[1]
    assert len(kv.data) == 1
    # 128 KiB per token (Llama-3.1-8B, fp16) at its 131,072-token context.
    assert _values(kv.data[0].y)[-1] == pytest.approx(131072 * 131072 / 1e9)


def test_malformed_model_config_is_an_error_and_the_page_keeps_working(page):
    page.sidebar.file_uploader(key="hw_model_upload").set_value(
        ("config.json", b'{"model_type": "llama", "hidden_size": 4096', "application/json")
    ).run()
    assert not page.exception
    assert len(page.error) == 1 and "config.json" in page.error[0].value
    page.selectbox(key="roof_model").set_value("qwen2.5-7b").run()
    assert not page.exception and len(_charts(page)) == 2


def test_uploaded_model_joins_the_lists(page):
    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
    }
    page.sidebar.file_uploader(key="hw_model_upload").set_value(
        ("config.json", json.dumps(config).encode(), "application/json")
    ).run()
    assert not page.exception and not page.error
    model_id = page.sidebar.success[0].value.split(":")[0].removeprefix("Loaded ")
    assert model_id in page.selectbox(key="roof_model").options
