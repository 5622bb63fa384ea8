"""The hardware catalog against ``shared/reference/hardware.md`` and its error contract.

Expected numbers are the reference's tables (§2.1 accelerators, §2.2 prices, §2.3 tiers and
links, §2.4 measured ratios), hand-computed ratios of its measured columns, and invariants that
hold for any chip (FP8 at least BF16, fractions in (0, 1]).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from hardware.catalog import (
    BUILTIN_CATALOG_DIR,
    HARDWARE_PATH_ENV,
    get_accelerator,
    get_entry,
    get_link,
    get_tier,
    list_accelerators,
    list_entries,
    list_links,
    list_tiers,
    load_accelerator_file,
)
from hardware.errors import KvsimError
from hardware.specs import Efficiency
from sim.cli import main

REQUIRED_IDS = [
    "a10g",
    "l4",
    "l40s",
    "a100-40gb-sxm",
    "a100-80gb-sxm",
    "h100-sxm",
    "h100-pcie",
    "h200-sxm",
    "b200",
    "gb200",
    "mi250x",
    "mi300x",
    "mi325x",
    "gaudi2",
    "gaudi3",
    "tpu-v5e",
    "tpu-v5p",
    "tpu-v6e",
    "rtx-4090",
    "rtx-5090",
]
REQUIRED_TIERS = [
    "ddr5-genoa-socket",
    "ddr5-spr-socket",
    "grace-lpddr5x",
    "nvme-gen4",
    "nvme-gen5",
    "nvme-gen4-raid4",
    "nvme-gen5-raid4",
    "cxl-expander",
    "remote-rdma-store",
]
REQUIRED_LINKS = [
    "pcie-gen4-x16",
    "pcie-gen5-x16",
    "pcie-gen6-x16",
    "nvlink-c2c",
    "rdma-200g",
    "rdma-400g",
]

USER_DEVICE = """\
id = "my-gpu"
name = "My GPU"
vendor = "acme"
bf16_flops_per_s = 100e12  # datasheet
memory_bytes = 48_000_000_000  # datasheet
memory_bytes_per_s = 1.0e12  # datasheet
host_link_bytes_per_s = 32e9  # PCIe 4.0 x16
price_usd_per_hour = 1.25  # our contract
price_date = "2026-01"
price_source = "internal contract"

[efficiency]
gemm_fraction = 0.6  # our measurement
"""


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def _one_line_error(excinfo: pytest.ExceptionInfo[KvsimError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- the built-in catalog -------------------------------------------------------------------


@pytest.mark.parametrize("device_id", REQUIRED_IDS)
def test_every_required_accelerator_loads(device_id: str) -> None:
    device = get_accelerator(device_id)
    assert device.id == device_id
    assert get_accelerator(device_id.upper()) == device  # ids are case-insensitive


@pytest.mark.parametrize(
    ("device_id", "field", "expected"),
    [
        # reference §2.1, the row and source named in each comment
        ("h100-sxm", "bf16_flops_per_s", 989e12),  # A
        ("h100-sxm", "memory_bytes_per_s", 3.35e12),  # A
        ("h100-sxm", "memory_bytes", 80e9),  # 80 GB HBM3
        ("h100-sxm", "scale_up_bytes_per_s", 900e9 / 2),  # NVLink4 900 GB/s bidirectional
        ("a100-80gb-sxm", "bf16_flops_per_s", 312e12),  # A
        ("a100-80gb-sxm", "memory_bytes_per_s", 2.039e12),  # A
        ("a100-40gb-sxm", "memory_bytes_per_s", 1.555e12),  # L
        ("h200-sxm", "memory_bytes", 151_397_597_184),  # A, bytes
        ("h200-sxm", "memory_bytes_per_s", 4.8e12),  # A
        ("b200", "fp4_flops_per_s", 9000e12),  # A, K
        ("gb200", "scale_up_domain", 72),  # NVL72
        ("l40s", "memory_bytes", 46_068 * 2**20),  # A: 46,068 MiB usable
        ("mi300x", "memory_bytes", 192e9),  # 192 GB HBM3
        ("mi300x", "memory_bytes_per_s", 5.3e12),  # P
        ("mi325x", "memory_bytes", 256e9),  # 256 GB HBM3E
        ("gaudi3", "bf16_flops_per_s", 1835e12),  # I
        ("tpu-v5e", "bf16_flops_per_s", 197e12),  # G
        ("tpu-v6e", "scale_up_bytes_per_s", 800e9 / 2),  # G: ICI 800 GB/s bidirectional
        ("rtx-4090", "bf16_flops_per_s", 330.3e12 / 2),  # note 1: FP32 accumulate = half rate
        ("rtx-5090", "bf16_flops_per_s", 419e12 / 2),  # note 1, within rounding of 209.5
    ],
)
def test_spot_values_match_reference_table(device_id: str, field: str, expected: float) -> None:
    assert getattr(get_accelerator(device_id), field) == pytest.approx(expected, rel=1e-3)


def test_dtype_the_chip_lacks_is_a_clear_error() -> None:
    a100 = get_accelerator("a100-80gb-sxm")  # Ampere has no FP8 tensor unit (ref §2.1)
    with pytest.raises(KvsimError) as excinfo:
        a100.peak_flops_per_s("fp8")
    assert "fp8" in _one_line_error(excinfo)
    assert excinfo.value.source == "a100-80gb-sxm"
    assert a100.peak_flops_per_s("fp16") == 312e12


def test_every_price_is_dated_and_sourced() -> None:
    priced = [a for a in list_accelerators() if a.price_usd_per_hour is not None]
    assert {a.id for a in priced} >= {"h100-sxm", "a100-80gb-sxm", "mi300x", "tpu-v6e"}
    for device in priced:
        assert re.fullmatch(r"\d{4}(-\d{2}){0,2}", device.price_date or ""), device.id
        assert device.price_source, device.id
    # ref §2.2: AWS Capacity Blocks $4.916 per H100 GPU-hour, rates of January 2025
    h100 = get_accelerator("h100-sxm")
    assert (h100.price_usd_per_hour, h100.price_date) == (4.916, "2025-01")
    assert h100.with_price(2.0).price_source == "user override"


def test_invariants_hold_for_every_accelerator() -> None:
    for device in list_accelerators():
        assert device.memory_bytes > 0 and device.memory_bytes_per_s > 0, device.id
        rates = [device.bf16_flops_per_s, device.fp8_flops_per_s, device.fp4_flops_per_s]
        present = [r for r in rates if r is not None]
        assert present == sorted(present), device.id  # narrower dtypes are never slower
        assert (device.scale_up_bytes_per_s == 0) == (device.scale_up_domain == 1), device.id
        eff = device.efficiency
        for name in ("gemm_fraction", "attention_fraction", "hbm_fraction"):
            assert 0 < getattr(eff, name) <= 1, (device.id, name)
        assert 0 < eff.allreduce_bus_fraction <= 1 and 0 < eff.host_link_fraction <= 1


@pytest.mark.parametrize(
    ("device_id", "gemm", "bus_gb_s", "link_gb_s"),
    [
        # ref §2.4 median dense BF16 GEMM; ref §2.3 NCCL 8-GPU bus bandwidth of the link
        ("a100-80gb-sxm", 0.75, 215, 300),
        ("h100-sxm", 0.71, 353, 450),
        ("h200-sxm", 0.71, 353, 450),
        ("b200", 0.59, 641, 900),
    ],
)
def test_efficiency_is_the_measured_ratio(
    device_id: str, gemm: float, bus_gb_s: float, link_gb_s: float
) -> None:
    eff = get_accelerator(device_id).efficiency
    assert eff.gemm_fraction == gemm
    assert eff.allreduce_bus_fraction == pytest.approx(bus_gb_s / link_gb_s, abs=0.006)
    assert eff.hbm_fraction == 0.8  # aiconfigurator's derate for NVIDIA parts


def test_devices_without_measurements_keep_the_defaults() -> None:
    assert get_accelerator("mi300x").efficiency == Efficiency()
    assert get_accelerator("l40s").efficiency.gemm_fraction == 0.55


def test_every_number_in_the_catalog_cites_a_source() -> None:
    for kind in ("accelerator", "tier", "link"):
        for entry in list_entries(kind):
            data = tomllib.loads(entry.path.read_text(encoding="utf-8"))
            numbers = {k for k, v in data.items() if isinstance(v, int | float)}
            table = data.get("efficiency")
            if isinstance(table, dict):  # an accelerator's [efficiency]; a link's is a number
                numbers |= {
                    f"efficiency.{k}" for k, v in table.items() if isinstance(v, int | float)
                }
            assert numbers, entry.path
            missing = sorted(n for n in numbers if not entry.sources.get(n))
            assert not missing, (entry.path.name, missing)


def test_tiers_and_links_match_the_reference() -> None:
    assert {t.id for t in list_tiers()} >= set(REQUIRED_TIERS)
    assert {link.id for link in list_links()} >= set(REQUIRED_LINKS)
    assert get_tier("grace-lpddr5x").read_bytes_per_s == 486e9  # STREAM on GH200 (ref §2.3)
    assert get_tier("grace-lpddr5x").capacity_bytes == 480e9
    assert get_tier("nvme-gen4").read_bytes_per_s == 7.0e9  # PM1733 (Mooncake file)
    # RAID0 ~ the sum of its members (ref §2.3)
    single, raid = get_tier("nvme-gen4"), get_tier("nvme-gen4-raid4")
    assert raid.read_bytes_per_s == pytest.approx(4 * single.read_bytes_per_s)
    assert raid.capacity_bytes == 4 * single.capacity_bytes
    # DDR5 peak = channels x 8 B x MT/s (ref §2.3), derated by STREAM's 0.8
    assert get_tier("ddr5-genoa-socket").read_bytes_per_s == pytest.approx(12 * 8 * 4800e6 * 0.8)
    assert get_tier("ddr5-spr-socket").read_bytes_per_s == pytest.approx(8 * 8 * 4800e6 * 0.8)
    # measured achieved / peak (ref §2.3)
    assert get_link("pcie-gen4-x16").efficiency == pytest.approx(24.8 / 31.5, abs=0.005)
    assert get_link("nvlink-c2c").achieved_bytes_per_s == pytest.approx(375e9, rel=0.01)
    assert get_link("rdma-200g").achieved_bytes_per_s == pytest.approx(87e9 / 4)
    assert get_link("rdma-400g").achieved_bytes_per_s == pytest.approx(190e9 / 8)
    for tier in list_tiers():
        assert tier.kind in ("dram", "cxl", "nvme", "remote")
        assert tier.capacity_bytes > 0 and tier.read_bytes_per_s > 0 and tier.write_bytes_per_s > 0


# --- user files -----------------------------------------------------------------------------


def test_hardware_path_adds_devices_and_overrides_builtins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = (BUILTIN_CATALOG_DIR / "accelerators" / "h100-sxm.toml").read_text(encoding="utf-8")
    cheaper = builtin.replace("price_usd_per_hour = 4.916", "price_usd_per_hour = 1.5")
    _write(tmp_path, "h100-sxm.toml", cheaper)
    _write(tmp_path, "my-gpu.toml", USER_DEVICE)
    _write(tmp_path / "links", "my-link.toml", 'id = "My-Link"\nname = "x"\nbytes_per_s = 1e9\n')
    monkeypatch.setenv(HARDWARE_PATH_ENV, str(tmp_path))
    assert get_accelerator("h100-sxm").price_usd_per_hour == 1.5
    mine = get_accelerator("MY-GPU")
    assert (mine.bf16_flops_per_s, mine.efficiency.gemm_fraction) == (100e12, 0.6)
    assert mine.efficiency.hbm_fraction == Efficiency().hbm_fraction  # unset keeps the default
    assert get_link("my-link").bytes_per_s == 1e9
    assert get_entry("my-gpu").path == tmp_path / "my-gpu.toml"
    monkeypatch.delenv(HARDWARE_PATH_ENV)
    assert get_accelerator("h100-sxm").price_usd_per_hour == 4.916  # env change is honoured
    with pytest.raises(KvsimError):
        get_accelerator("my-gpu")


def test_extra_files_and_single_file_load(tmp_path: Path) -> None:
    path = _write(tmp_path, "anything.toml", USER_DEVICE)
    assert load_accelerator_file(path).memory_bytes == 48_000_000_000
    assert "my-gpu" in {a.id for a in list_accelerators(extra_files=[path])}
    assert get_accelerator("my-gpu", extra_files=[path]).vendor == "acme"


def test_hardware_path_entry_must_be_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HARDWARE_PATH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(KvsimError) as excinfo:
        list_accelerators()
    assert "nowhere" in _one_line_error(excinfo)


def test_unknown_id_lists_close_matches() -> None:
    with pytest.raises(KvsimError) as excinfo:
        get_accelerator("h100")
    message = _one_line_error(excinfo)
    assert "'h100'" in message and "h100-sxm" in message and "h100-pcie" in message
    with pytest.raises(KvsimError, match="nvme-gen4"):
        get_tier("nvme-gen3")


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.toml", 'id = "bad"\nname = "Bad"\nvendor = \n')
    with pytest.raises(KvsimError) as excinfo:
        load_accelerator_file(path)
    message = _one_line_error(excinfo)
    assert excinfo.value.line == 3
    assert message.startswith(f"{path}:3: malformed TOML")


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "expect"),
    [
        ("memory_bytes_per_s = 1.0e12  # datasheet\n", "", "memory_bytes_per_s", None, "missing"),
        ("bf16_flops_per_s", "bf16_flops_per_sec", "bf16_flops_per_sec", 4, "bf16_flops_per_s"),
        ("memory_bytes = 48_000_000_000", "memory_bytes = -1", "memory_bytes", 5, ">= 0"),
        ("= 1.0e12", '= "fast"', "memory_bytes_per_s", 6, "expected a number"),
        ("memory_bytes = 48_000_000_000", "memory_bytes = 4.5", "memory_bytes", 5, "whole"),
        ('price_date = "2026-01"\n', "", "price_date", None, "required when"),
        ('price_date = "2026-01"', 'price_date = "soon"', "price_date", 9, "YYYY"),
        ("gemm_fraction = 0.6", "gemm_fraction = 1.5", "efficiency.gemm_fraction", 13, "(0, 1]"),
        ("gemm_fraction", "gemm_frac", "efficiency.gemm_frac", 13, "unknown key"),
        ('id = "my-gpu"', 'id = "my gpu"', "id", 1, "lower-case"),
    ],
)
def test_bad_fields_are_one_line_errors_naming_file_and_field(
    tmp_path: Path, old: str, new: str, field: str, line: int | None, expect: str
) -> None:
    assert old in USER_DEVICE
    path = _write(tmp_path, "dev.toml", USER_DEVICE.replace(old, new, 1))
    with pytest.raises(KvsimError) as excinfo:
        load_accelerator_file(path)
    message = _one_line_error(excinfo)
    assert (excinfo.value.source, excinfo.value.field, excinfo.value.line) == (
        str(path),
        field,
        line,
    )
    assert expect in message and field in message and str(path) in message


def test_duplicate_ids_in_one_directory_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, "a.toml", USER_DEVICE)
    _write(tmp_path / "accelerators", "b.toml", USER_DEVICE)
    monkeypatch.setenv(HARDWARE_PATH_ENV, str(tmp_path))
    with pytest.raises(KvsimError, match="duplicate accelerator id 'my-gpu'"):
        list_accelerators()


# --- CLI ------------------------------------------------------------------------------------


def test_cli_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hardware", "list", "--json"]) == 0
    rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)["accelerators"]}
    assert set(rows) >= set(REQUIRED_IDS)
    assert rows["h100-sxm"]["bf16_flops_per_s"] == 989e12
    assert rows["mi300x"]["memory_bytes"] == 192_000_000_000


def test_cli_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hardware", "list"]) == 0
    out = capsys.readouterr().out
    h100_row = next(line for line in out.splitlines() if line.startswith("h100-sxm "))
    assert h100_row.split()[-5:] == ["989.0", "80.0", "3.350", "4.92", "2025-01"]


def test_cli_show_json_has_values_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hardware", "show", "h100-sxm", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "accelerator"
    assert shown["fields"]["bf16_flops_per_s"]["value"] == 989e12
    assert "A" in shown["fields"]["bf16_flops_per_s"]["source"]
    assert shown["fields"]["efficiency.gemm_fraction"]["value"] == 0.71


def test_cli_show_finds_tiers_and_tiers_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hardware", "show", "nvme-gen5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "tier"
    assert main(["hardware", "tiers", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {t["id"] for t in listed["tiers"]} >= set(REQUIRED_TIERS)
    assert {link["id"] for link in listed["links"]} >= set(REQUIRED_LINKS)


def test_cli_unknown_id_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hardware", "show", "h100x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "h100x" in captured.err and "h100-sxm" in captured.err


def test_cli_hardware_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, "mine.toml", USER_DEVICE)
    assert main(["hardware", "show", "my-gpu", "--json", "--hardware-file", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["fields"]["vendor"]["value"] == "acme"
    bad = _write(tmp_path, "bad.toml", USER_DEVICE.replace("= 1.0e12", "= -1.0e12"))
    assert main(["hardware", "list", "--hardware-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{bad}:6: memory_bytes_per_s" in err
