"""Offload policies (``sim/policies/offload.py``): registry and validation, the overlap term of
the cost model, FlexGen-style static placement against a hand-computed bandwidth bound, and
selective fetch (only the selected tokens cross the link).

Hand numbers: Llama-3.1-8B KV is 2 (K, V) × 32 layers × 8 KV heads × 128 dims × 2 bytes =
131,072 bytes per token (``reference/models.md``); the H100 SXM's host link is PCIe 5.0 at
64 GB/s per direction × the 0.8 pinned-copy efficiency = 51.2 GB/s (``reference/hardware.md``
§2.1, §2.4); the Sapphire Rapids socket's DDR5 reads at 245.76 GB/s (§2.3)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from hardware.catalog import get_accelerator
from hardware.errors import KvsimError
from sim.cost import BatchShape, CostModel
from sim.policies import get_policy
from sim.policies.offload import FlexGenPlacement, SelectiveFetch, TierRates
from sim.run import resolve, run_scenario
from sim.scenario import Scenario
from workloads.model_catalog import get_model
from workloads.workload import Workload

KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
PCIE_BYTES_PER_S = 64e9 * 0.8
DDR5_BYTES_PER_S = 245.76e9
BATCH, PROMPT, OUTPUT = 32, 4096, 64


# ---- policies ------------------------------------------------------------------------------
def test_registered_with_defaults_and_named_errors():
    assert get_policy("offload", "prefix_store").prefetch is True
    flexgen = get_policy("offload", "flexgen")
    assert flexgen.fractions() == (0.0, 1.0, 0.0) and flexgen.attention == "cpu"
    assert get_policy("offload", "flexgen", gpu_fraction=0.5, cpu_fraction=0.3).fractions() == (
        pytest.approx((0.5, 0.3, 0.2))
    )
    with pytest.raises(KvsimError) as err:
        get_policy("offload", "flexgen", gpu_fraction=0.7, cpu_fraction=0.5)
    assert err.value.field == "policies.offload.cpu_fraction"
    with pytest.raises(KvsimError) as err:
        get_policy("offload", "flexgen", attention="tpu")
    assert err.value.field == "policies.offload.attention"
    with pytest.raises(KvsimError) as err:
        get_policy("offload", "selective_fetch", gpu_fraction=1.0)
    assert err.value.field == "policies.offload.gpu_fraction"


def test_pool_blocks_is_the_tightest_capacity_over_fraction():
    """100 GPU blocks at 40% on GPU hold 250 sequences' worth; 1,000 bytes of host at 50% of
    10-byte blocks bound it to 200; 10,000 bytes of disk at 10% to 10,000."""
    placement = FlexGenPlacement(gpu_fraction=0.4, cpu_fraction=0.5)
    assert placement.pool_blocks(100, 10.0, 1000.0, 10_000.0) == 200
    assert placement.pool_blocks(100, 10.0, 10**6, 10**6) == 250
    assert (
        FlexGenPlacement(gpu_fraction=1.0, cpu_fraction=0.0).pool_blocks(100, 10.0, None, None)
        == 100
    )


def test_offload_seconds_by_hand():
    rates = TierRates(link_bytes_per_s=50e9, host_bytes_per_s=200e9, disk_bytes_per_s=5e9)
    nbytes = 10e9
    fetch = FlexGenPlacement(gpu_fraction=0.5, cpu_fraction=0.5, attention="gpu")
    assert fetch.offload_s(nbytes, rates) == pytest.approx(0.5 * nbytes / 50e9)
    cpu = FlexGenPlacement(gpu_fraction=0.5, cpu_fraction=0.5, attention="cpu")
    assert cpu.offload_s(nbytes, rates) == pytest.approx(0.5 * nbytes / 200e9)
    assert cpu.gpu_read_fraction() == 0.5 and fetch.gpu_read_fraction() == 1.0
    # 30% on disk: the link carries 80% (0.16 s), the disk streams 30% (0.6 s): the disk sets it.
    disk = FlexGenPlacement(gpu_fraction=0.2, cpu_fraction=0.5, attention="gpu")
    assert disk.offload_s(nbytes, rates) == pytest.approx(0.3 * nbytes / 5e9)
    steps = disk.offload_s(np.array([nbytes, 2 * nbytes]), rates)
    assert steps == pytest.approx([0.6, 1.2])


# ---- cost model overlap --------------------------------------------------------------------
def _cost_model() -> CostModel:
    return CostModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm"))


def test_overlap_is_max_of_layers_and_transfer():
    model = _cost_model()
    batch = BatchShape.decode(8, 2048)
    plain = model.step(batch)
    layers_s = plain.duration_s - plain.overhead_s - plain.component("lm_head").time_s
    hidden = model.step(replace(batch, overlapped_transfer_s=0.5 * layers_s))
    assert hidden.duration_s == plain.duration_s and hidden.transfer_s == 0.0
    exposed = model.step(replace(batch, overlapped_transfer_s=3 * layers_s))
    assert exposed.duration_s == pytest.approx(plain.duration_s + 2 * layers_s, rel=1e-12)
    assert exposed.transfer_s == pytest.approx(2 * layers_s, rel=1e-12)


def test_stretch_with_overlap_equals_step_by_step():
    model = _cost_model()
    contexts = np.array([100, 3000, 9000])
    overlapped = np.array([0.0, 0.004, 0.02, 0.05, 0.001])
    stretch = model.decode_stretch(contexts, 5, overlapped_transfer_s=overlapped)
    for k, extra in enumerate(overlapped):
        batch = BatchShape(
            prefill_tokens=np.zeros(0, dtype=np.int64),
            prefill_context=np.zeros(0, dtype=np.int64),
            decode_context=contexts + k,
            overlapped_transfer_s=float(extra),
        )
        assert stretch[k] == pytest.approx(model.step(batch).duration_s, rel=1e-12)


# ---- FlexGen placement on a simple case ----------------------------------------------------
def _decode_scenario(policies: dict | None = None, **hardware) -> Scenario:
    """Llama-3.1-8B on one H100 with a host tier, a batch of 32 at most, one step's budget
    large enough to prefill the whole batch at once (:func:`_tpot` runs 32 prompts of 4,096
    tokens arriving at t = 0, then 63 decode steps of the whole batch in lockstep)."""
    data = {
        "model": {"name": "llama-3.1-8b"},
        "hardware": {"accelerator": "h100-sxm", "host_memory_tier": "ddr5-spr-socket", **hardware},
        "workload": {
            "synthetic": {
                "arrival": "poisson",
                "rate_per_s": 1e9,
                "requests": BATCH,
                "prompt_tokens": {"dist": "fixed", "value": PROMPT},
                "output_tokens": {"dist": "fixed", "value": OUTPUT},
            }
        },
        "scheduler": {"max_num_seqs": BATCH, "max_batched_tokens": BATCH * PROMPT},
        "policies": policies or {},
    }
    return Scenario.from_dict(data)


def _tpot(scenario: Scenario) -> float:
    batch = Workload(
        arrival_s=np.zeros(BATCH),
        prompt_tokens=np.full(BATCH, PROMPT),
        output_tokens=np.full(BATCH, OUTPUT),
    )
    requests = run_scenario(scenario, workload=batch).requests
    assert (requests["status"] == "finished").all()
    return float(requests["tpot_s"].mean())


def _bound_tpot(fraction: float, bytes_per_s: float) -> float:
    """Hand bound: decode step i (1..63) reads 32 × (4096 + i) tokens of KV; ``fraction`` of
    it crosses at ``bytes_per_s``, so the mean step is 32 × (4096 + 32) × 131,072 × fraction
    / rate."""
    return BATCH * (PROMPT + OUTPUT / 2) * KV_BYTES_PER_TOKEN * fraction / bytes_per_s


@pytest.mark.parametrize(
    ("attention", "rate"), [("gpu", PCIE_BYTES_PER_S), ("cpu", DDR5_BYTES_PER_S)]
)
def test_flexgen_all_offloaded_meets_the_bandwidth_bound(attention, rate):
    """All KV in host memory: each decode step moves the whole batch's KV over PCIe (GPU
    attention: 0.338 s) or streams it from DDR5 (CPU attention: 0.070 s); the GPU's own work
    (~12 ms) hides under it, so TPOT is the bound plus the unhidden LM head and step
    overhead (< 1%)."""
    scenario = _decode_scenario(
        {
            "offload": {
                "name": "flexgen",
                "gpu_fraction": 0.0,
                "cpu_fraction": 1.0,
                "attention": attention,
            }
        }
    )
    bound = _bound_tpot(1.0, rate)
    tpot = _tpot(scenario)
    assert bound <= tpot <= bound * 1.01


def test_flexgen_throughput_falls_monotonically_with_the_offloaded_fraction():
    """Fixed batch (it fits in HBM at every fraction): offloading more only adds transfer, so
    decode throughput never rises; once the transfer dominates it tracks the bound."""
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    tpots = []
    for offloaded in fractions:
        policy = {
            "name": "flexgen",
            "gpu_fraction": 1.0 - offloaded,
            "cpu_fraction": offloaded,
            "attention": "gpu",
        }
        tpots.append(_tpot(_decode_scenario({"offload": policy})))
    throughput = [BATCH / t for t in tpots]
    assert all(a >= b for a, b in itertools.pairwise(throughput))
    assert throughput[0] > 5 * throughput[-1]
    for offloaded, tpot in zip(fractions[2:], tpots[2:], strict=True):
        assert tpot == pytest.approx(_bound_tpot(offloaded, PCIE_BYTES_PER_S), rel=0.01)


def test_flexgen_pool_grows_by_the_offloaded_fraction():
    base = resolve(_decode_scenario()).memory.num_blocks
    half = resolve(
        _decode_scenario({"offload": {"name": "flexgen", "gpu_fraction": 0.5, "cpu_fraction": 0.5}})
    ).memory.num_blocks
    assert half == 2 * base


def test_flexgen_needs_its_tiers():
    with pytest.raises(KvsimError) as err:
        Scenario.from_dict(
            {
                **_decode_scenario().to_dict(),
                "policies": {
                    "offload": {"name": "flexgen", "gpu_fraction": 0.5, "cpu_fraction": 0.2}
                },
            }
        )
    assert err.value.field == "policies.offload.disk_fraction"


# ---- selective fetch -----------------------------------------------------------------------
def test_selective_fetch_moves_only_the_selected_tokens():
    """Quest reads 1,024 tokens' pages (plus its page index) of each ~4,100-token context on
    all but the first two layers; with selective fetch only those cross PCIe, so the step
    time is the selected bytes over 51.2 GB/s, about a quarter of fetching everything."""
    quest = {"name": "quest", "budget_tokens": 1024}
    scenario = _decode_scenario({"selection": quest, "offload": {"name": "selective_fetch"}})
    footprint = resolve(scenario).footprint
    steps = np.arange(1, OUTPUT)
    read = footprint.decode_read_tokens(PROMPT + steps, np.full(steps.size, PROMPT))
    bound = BATCH * float(read.mean()) * KV_BYTES_PER_TOKEN / PCIE_BYTES_PER_S
    tpot = _tpot(scenario)
    assert bound <= tpot <= bound * 1.02
    everything = _bound_tpot(1.0, PCIE_BYTES_PER_S)
    assert tpot < 0.4 * everything
    with pytest.raises(KvsimError) as err:
        resolve(_decode_scenario({"offload": {"name": "selective_fetch"}}))
    assert err.value.field == "policies.offload.name"
    assert isinstance(get_policy("offload", "selective_fetch"), SelectiveFetch)


def test_stretches_do_not_change_records_under_a_placement():
    """Decode stretches price the overlapped transfer exactly as single steps do."""
    scenario = _decode_scenario(
        {
            "offload": {
                "name": "flexgen",
                "gpu_fraction": 0.6,
                "cpu_fraction": 0.4,
                "attention": "cpu",
            }
        }
    )
    workload = Workload(
        arrival_s=np.linspace(0.0, 2.0, 8),
        prompt_tokens=np.arange(1, 9) * 300,
        output_tokens=np.arange(8, 0, -1) * 20,
    )
    fast = run_scenario(scenario, workload=workload).requests
    slow = run_scenario(scenario, workload=workload, step_mode=True).requests
    assert fast.equals(slow)
