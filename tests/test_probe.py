"""The device probe: profile arithmetic on hand-made measurements, and one real CPU run."""

from __future__ import annotations

import pytest

from hardware.catalog import get_accelerator, load_accelerator_file
from hardware.probe import GemmPoint, Measurement, ProbeResult, profile_toml
from sim.cli import main


def _m(value: float) -> Measurement:
    return Measurement(value, value * 0.9, value * 1.1, 5)


def _result() -> ProbeResult:
    return ProbeResult(
        device="cuda",
        device_name="NVIDIA H100 80GB HBM3",
        dtype="bf16",
        date="2026-11-29",
        memory_bytes=80 * 10**9,
        gemm=(GemmPoint(16, 4096, 4096, _m(100e12)), GemmPoint(4096, 4096, 4096, _m(700e12))),
        memory_copy_bytes_per_s=_m(2.68e12),
        attention_flops_per_s=_m(494.5e12),
        host_to_device_bytes_per_s=_m(51.2e9),
        device_to_host_bytes_per_s=_m(50e9),
    )


def test_profile_with_base_keeps_datasheet_peaks_and_fits_fractions(tmp_path):
    base = get_accelerator("h100-sxm")
    path = tmp_path / "h100-probed.toml"
    path.write_text(profile_toml(_result(), "h100-probed", base))
    probed = load_accelerator_file(path)
    assert probed.bf16_flops_per_s == base.bf16_flops_per_s
    assert probed.memory_bytes_per_s == base.memory_bytes_per_s
    # measured / datasheet, by hand: 700/989, 2.68/3.35, 494.5/989, 51.2/64
    assert probed.efficiency.gemm_fraction == pytest.approx(700 / 989, abs=1e-4)
    assert probed.efficiency.hbm_fraction == pytest.approx(0.8, abs=1e-4)
    assert probed.efficiency.attention_fraction == pytest.approx(0.5, abs=1e-4)
    assert probed.efficiency.host_link_fraction == pytest.approx(0.8, abs=1e-4)


def test_profile_without_base_uses_measured_rates_as_peaks(tmp_path):
    path = tmp_path / "local.toml"
    path.write_text(profile_toml(_result(), "local-gpu"))
    probed = load_accelerator_file(path)
    assert probed.bf16_flops_per_s == pytest.approx(700e12)
    assert probed.memory_bytes_per_s == pytest.approx(2.68e12)
    assert probed.host_link_bytes_per_s == pytest.approx(51.2e9)
    assert probed.efficiency.gemm_fraction == 1.0


def test_probe_refuses_to_write_into_the_catalog(capsys):
    from hardware.catalog import BUILTIN_CATALOG_DIR

    code = main(["probe", "--quick", "--out", str(BUILTIN_CATALOG_DIR / "accelerators" / "x.toml")])
    assert code == 2
    assert "built-in catalog" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_cpu_probe_writes_a_loadable_profile(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "cpu.toml"
    assert main(["probe", "--quick", "--repeats", "3", "--out", str(out)]) == 0
    profile = load_accelerator_file(out)
    assert profile.bf16_flops_per_s > 1e9  # any CPU of this century does a GFLOP/s in bf16
    assert profile.memory_bytes_per_s > 1e9
    assert 0 < profile.efficiency.attention_fraction <= 1
