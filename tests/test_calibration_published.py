"""Published-latency CSVs: parsing errors name file, line and column; the catalog model's
error on the committed H200 measurements equals a pandas computation of the same MAPE.

Independent truths: the committed ``calibration/h200-sxm/steps.csv`` read by pandas, each
prediction taken straight from ``CostModel.prefill_s``/``decode_step_s`` on the catalog
entries, and the H200 README's hand-copied figures (smollm2 decode 1×512: 42.48 ms measured,
0.37 ms predicted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hardware.catalog import get_accelerator
from hardware.errors import KvsimError
from sim.calibration import mape_by_kind, published_errors, read_published
from sim.cli import validate_cmd
from sim.cost import CostModel
from workloads.model_catalog import get_model

H200_STEPS = Path(__file__).resolve().parents[1] / "calibration" / "h200-sxm" / "steps.csv"
HEADER = "model,hardware,tp,batch,prompt,context,prefill_ms,decode_ms\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "published.csv"
    path.write_text(text)
    return path


def _error(path: Path) -> KvsimError:
    with pytest.raises(KvsimError) as err:
        published_errors(read_published(path), source=str(path))
    return err.value


@pytest.mark.parametrize(
    ("body", "line", "field", "words"),
    [
        (HEADER.replace(",decode_ms", ""), 1, "decode_ms", "missing column"),
        (HEADER + "smollm2-135m,h200-sxm,1,1,128,128,abc,\n", 2, "prefill_ms", "'abc'"),
        (HEADER + "smollm2-135m,h200-sxm,1,1,128,128,1.5,\n" * 2
         + "smollm2-135m,h200-sxm,1,1,0,512,,-3\n", 4, "decode_ms", "positive"),
        (HEADER + "smollm2-135m,h200-sxm,1,two,128,128,1.5,\n", 2, "batch", "whole number"),
        (HEADER + "smollm2-135m,h200-sxm,0,1,128,128,1.5,\n", 2, "tp", ">= 1"),
        (HEADER + "smollm2-135m,h200-sxm,1,1,128,128,,\n", 2, "prefill_ms", "needs"),
        (HEADER + "smollm2-135m,h200-sxm,1,1,0,128,2.0,\n", 2, "prompt", ">= 1"),
        (HEADER + ",h200-sxm,1,1,128,128,2.0,\n", 2, "model", "empty"),
        (HEADER + "no-such-model,h200-sxm,1,1,128,128,2.0,\n", 2, "model", "no-such-model"),
        (HEADER + "smollm2-135m,no-such-gpu,1,1,128,128,2.0,\n", 2, "hardware", "no-such-gpu"),
        (HEADER + "smollm2-135m,h200-sxm,2,1,128,128,2.0,\n", 2, "tp", "heads"),
        (HEADER, 1, None, "no data rows"),
    ],
)  # fmt: skip
def test_bad_cells_name_file_line_and_column(
    tmp_path: Path, body: str, line: int, field: str | None, words: str
) -> None:
    path = _write(tmp_path, body)
    err = _error(path)
    assert err.source == str(path)
    assert err.line == line
    assert err.field == field
    assert words in err.message


def test_extra_columns_are_ignored_and_columns_may_be_reordered(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "decode_ms,prefill_ms,context,prompt,batch,tp,hardware,model,note\n"
        ",2.0,128,128,1,1,h200-sxm,smollm2-135m,anything\n",
    )
    (row,) = read_published(path)
    assert (row.model, row.batch, row.prompt, row.prefill_ms, row.decode_ms) == (
        "smollm2-135m", 1, 128, 2.0, None,
    )  # fmt: skip


def _pandas_reference() -> pd.DataFrame:
    data = pd.read_csv(H200_STEPS)
    predicted, measured, kinds = [], [], []
    for row in data.itertuples():
        cost = CostModel(get_model(row.model), get_accelerator(row.hardware), tp=int(row.tp))
        if not np.isnan(row.prefill_ms):
            predicted.append(cost.prefill_s(int(row.batch), int(row.prompt)) * 1e3)
            measured.append(row.prefill_ms)
            kinds.append("prefill")
        if not np.isnan(row.decode_ms):
            predicted.append(cost.decode_step_s(int(row.batch), int(row.context)) * 1e3)
            measured.append(row.decode_ms)
            kinds.append("decode")
    frame = pd.DataFrame({"kind": kinds, "measured": measured, "predicted": predicted})
    frame["ape"] = (frame["predicted"] / frame["measured"] - 1).abs()
    return frame


def test_h200_steps_mape_equals_a_pandas_computation() -> None:
    reference = _pandas_reference()
    frame = published_errors(read_published(H200_STEPS))
    assert len(frame) == len(reference) == 20
    assert (frame["kind"] == "prefill").sum() == 8 and (frame["kind"] == "decode").sum() == 12
    mape = mape_by_kind(frame)
    assert mape["all"] == pytest.approx(reference["ape"].mean(), rel=1e-12)
    for kind in ("prefill", "decode"):
        expected = reference.loc[reference["kind"] == kind, "ape"].mean()
        assert mape[kind] == pytest.approx(expected, rel=1e-12)
    # the README's row: smollm2-135m decode 1x512, 42.48 ms measured, 0.37 ms predicted
    row = frame[(frame["model"] == "smollm2-135m") & (frame["kind"] == "decode")].iloc[0]
    assert (row["batch"], row["tokens"]) == (1, 512)
    assert row["measured_ms"] == pytest.approx(42.4804)
    assert row["predicted_ms"] == pytest.approx(0.37, abs=0.01)


def test_validate_published_cli_prints_the_same_mape(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    validate_cmd.register(parser.add_subparsers())
    report = tmp_path / "h200.html"
    args = parser.parse_args(
        ["validate", "--published", str(H200_STEPS), "--report", str(report), "--json"]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    reference = _pandas_reference()
    assert out["published"]["mape"]["all"] == pytest.approx(reference["ape"].mean(), rel=1e-12)
    assert len(out["published"]["rows"]) == 20
    html = report.read_text()
    assert "plotly" in html and "smollm2-135m" in html
    assert not list(tmp_path.glob(".*.tmp"))
