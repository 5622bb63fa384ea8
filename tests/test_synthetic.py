"""Synthetic generators, fit and scale: statistics match their parameters within sampling
error (fixed seeds, tolerances of four standard errors derived from the sample size unless
stated), prefix block ids follow the content they stand for, bad specs name their field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.integrate import quad

from hardware.errors import KvsimError
from sim.cli import main
from sim.cli.trace_gen_cmd import load_spec
from workloads.fit import fit, scale
from workloads.synthetic import (
    GammaArrivals,
    MmppArrivals,
    PoissonArrivals,
    SyntheticSpec,
    WeibullArrivals,
    generate,
    generate_workload,
)
from workloads.synthetic.layout import clip_to_context
from workloads.traces import read_trace
from workloads.workload import Workload

LOGNORMAL = {"dist": "lognormal", "median": 1000, "sigma": 0.8}
BASE = {
    "arrival": "poisson",
    "rate_per_s": 4.0,
    "requests": 2000,
    "prompt_tokens": LOGNORMAL,
    "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.8},
}
AZURE_CONV = Path("azure2023/AzureLLMInferenceTrace_conv.csv")


def spec(**changes) -> dict:
    return {**BASE, **changes}


def cv_standard_error(dist, n: int) -> float:
    """Delta-method standard error of the sample CV of ``n`` draws from ``dist``:
    ``Var ĉ ≈ c²/n [(μ₄ - σ⁴)/(4σ⁴) - μ₃/(μσ²) + σ²/μ²]`` with central moments μ₃, μ₄
    (normal data: ``c²(1/2 + c²)/n``; exponential: ``1/n``)."""
    mean, var, skew, kurt = (float(x) for x in dist.stats(moments="mvsk"))
    sd = math.sqrt(var)
    mu3, mu4 = skew * sd**3, (kurt + 3) * var**2
    c2 = var / mean**2
    return math.sqrt(c2 / n * ((mu4 - var**2) / (4 * var**2) - mu3 / (mean * var) + c2))


def ideal_prefix_hits(workload) -> np.ndarray:
    """Per request, leading blocks already referenced by an earlier request (ids are chained,
    so an id seen anywhere before means the whole prefix up to it was seen)."""
    seen: set[int] = set()
    hits = np.zeros(len(workload), dtype=np.int64)
    for i in range(len(workload)):
        ids = workload.prefix_of(i).tolist()
        k = 0
        while k < len(ids) and ids[k] in seen:
            k += 1
        hits[i] = k
        seen.update(ids)
    return hits


# ---- arrivals ---------------------------------------------------------------------------
RENEWALS = [
    ({"arrival": "poisson"}, sps.expon()),
    ({"arrival": "gamma", "cv": 0.5}, sps.gamma(4.0)),
    ({"arrival": "gamma", "cv": 3.0}, sps.gamma(1 / 9)),
    ({"arrival": "weibull", "shape": 0.7}, sps.weibull_min(0.7)),
    ({"arrival": "weibull", "cv": 2.0}, None),
]


@pytest.mark.parametrize(
    ("arrival", "dist"),
    RENEWALS,
    ids=["poisson", "gamma-0.5", "gamma-3", "weibull-0.7", "weibull-cv2"],
)
def test_renewal_rate_and_cv_match_parameters(arrival, dist):
    n, rate = 20_000, 8.0
    d = spec(rate_per_s=rate, requests=n, prompt_tokens=10, output_tokens=10, **arrival)
    parsed = SyntheticSpec.from_dict(d)
    if dist is None:  # the weibull given by cv: its shape solved from the CV formula
        dist = sps.weibull_min(parsed.arrival.shape)
        assert math.isclose(dist.std() / dist.mean(), 2.0, rel_tol=1e-9)
    workload = generate(parsed, np.random.default_rng(7))
    gaps = np.diff(np.concatenate([[0.0], workload.arrival_s]))
    true_cv = dist.std() / dist.mean()
    assert len(workload) == n
    assert abs(gaps.mean() - 1 / rate) <= 4 * true_cv / rate / math.sqrt(n)
    assert abs(gaps.std() / gaps.mean() - true_cv) <= 4 * cv_standard_error(dist, n)


def test_weibull_cv_formula_against_rayleigh_and_exponential():
    # Weibull shape 2 is the Rayleigh distribution, CV sqrt(4/π - 1); shape 1 is exponential.
    assert math.isclose(WeibullArrivals(1.0, 2.0).cv, math.sqrt(4 / math.pi - 1), rel_tol=1e-12)
    assert math.isclose(WeibullArrivals(1.0, 1.0).cv, 1.0, rel_tol=1e-12)


def test_poisson_index_of_dispersion_is_one():
    windows, rate = 4000, 10.0
    workload = generate_workload(spec(rate_per_s=rate, requests=None, duration_s=windows), 3)
    counts = np.histogram(workload.arrival_s, bins=windows, range=(0, windows))[0]
    # (m - 1) I is χ² with m - 1 degrees of freedom for Poisson counts: SE of I = sqrt(2/(m-1)).
    assert abs(counts.var(ddof=1) / counts.mean() - 1) <= 4 * math.sqrt(2 / (windows - 1))
    assert abs(counts.mean() - rate) <= 4 * math.sqrt(rate / windows)


def test_duration_bounds_and_requests_bound_whichever_first():
    by_duration = generate_workload(spec(requests=None, duration_s=100.0), 1)
    assert by_duration.arrival_s.max() < 100.0
    both = generate_workload(spec(requests=50, duration_s=1000.0), 1)
    assert len(both) == 50
    short = generate_workload(spec(requests=100_000, duration_s=10.0), 1)
    assert short.arrival_s.max() < 10.0 and len(short) < 100


def test_mmpp_rate_and_dispersion_match_fischer_meier_hellstern():
    process = MmppArrivals((20.0, 2.0), mean_on_s=5.0, mean_off_s=15.0)
    # hand: mean rate (20·5 + 2·15) / 20 = 6.5 req/s
    assert process.mean_rate_per_s == pytest.approx(6.5)
    duration, window = 20_000.0, 10.0
    d = spec(arrival="mmpp", rates_per_s=[20.0, 2.0], mean_on_s=5.0, mean_off_s=15.0)
    d.pop("rate_per_s")
    d.update(requests=None, duration_s=duration)
    rates, dispersions = [], []
    for seed in range(6):
        arrivals = generate_workload(d, seed).arrival_s
        counts = np.histogram(arrivals, bins=int(duration / window), range=(0, duration))[0]
        rates.append(len(arrivals) / duration)
        dispersions.append(counts.var() / counts.mean())
    # count over the whole run has variance IDC(T) λ T
    rate_se = math.sqrt(process.index_of_dispersion(duration) * 6.5 * duration) / duration
    assert all(abs(r - 6.5) <= 4 * rate_se for r in rates)
    expected = process.index_of_dispersion(window)
    assert expected > 40  # bursty: far from Poisson's 1
    spread = np.std(dispersions, ddof=1) / math.sqrt(len(dispersions))
    assert abs(np.mean(dispersions) - expected) <= 4 * spread + 0.02 * expected


def test_mmpp_requests_mode_returns_exactly_that_many():
    d = spec(arrival="mmpp", rates_per_s=[5.0, 0.0], mean_on_s=2.0, mean_off_s=50.0)
    d.pop("rate_per_s")
    workload = generate_workload(d, 4)
    assert len(workload) == 2000
    gaps = np.diff(workload.arrival_s)
    assert gaps.std() / gaps.mean() > 2  # on/off bursts


def test_diurnal_rate_curve_recovered_per_window():
    rate, amplitude, period, peak = 10.0, 0.6, 3600.0, 900.0
    d = spec(
        arrival="diurnal",
        rate_per_s=rate,
        amplitude=amplitude,
        period_s=period,
        peak_s=peak,
        requests=None,
        duration_s=2 * period,
    )
    arrivals = generate_workload(d, 11).arrival_s
    edges = np.arange(0, 2 * period + 1, 300.0)
    observed = np.histogram(arrivals, bins=edges)[0]

    def curve(t: float) -> float:
        return rate * (1 + amplitude * math.cos(2 * math.pi * (t - peak) / period))

    expected = np.array([quad(curve, a, b)[0] for a, b in zip(edges[:-1], edges[1:], strict=True)])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < sps.chi2.ppf(0.9999, len(expected))
    assert observed.argmax() in (2, 3, 14, 15)  # windows around t = 900 s and 4500 s


def test_rate_table_piecewise_counts():
    d = spec(arrival="rate_table", table=[[0, 2.0], [600, 0.0], [900, 8.0]], duration_s=1500.0)
    d.pop("rate_per_s")
    d.pop("requests")
    arrivals = generate_workload(d, 5).arrival_s
    counts = np.histogram(arrivals, bins=[0, 600, 900, 1500])[0]
    assert counts[1] == 0
    for count, expected in ((counts[0], 1200), (counts[2], 4800)):
        assert abs(count - expected) <= 4 * math.sqrt(expected)


# ---- lengths ----------------------------------------------------------------------------
def test_lognormal_quantiles_within_sampling_error():
    n = 20_000
    workload = generate_workload(spec(requests=n, prompt_tokens=LOGNORMAL), 2)
    dist = sps.lognorm(s=0.8, scale=1000)
    for q in (0.1, 0.5, 0.9, 0.99):
        x = dist.ppf(q)
        se = math.sqrt(q * (1 - q) / n) / dist.pdf(x)  # asymptotic SE of a sample quantile
        assert abs(np.quantile(workload.prompt_tokens, q) - x) <= 4 * se + 1  # +1: rounding


def test_uniform_fixed_and_inline_empirical_lengths():
    n = 20_000
    d = spec(
        requests=n,
        prompt_tokens={"dist": "uniform", "low": 100, "high": 200},
        output_tokens={"dist": "empirical", "values": [10, 20, 20, 70]},
    )
    workload = generate_workload(d, 9)
    prompts = workload.prompt_tokens
    assert prompts.min() >= 100 and prompts.max() <= 200
    sd = math.sqrt((101**2 - 1) / 12)  # discrete uniform on 101 integers
    assert abs(prompts.mean() - 150) <= 4 * sd / math.sqrt(n)
    values, counts = np.unique(workload.output_tokens, return_counts=True)
    assert values.tolist() == [10, 20, 70]
    for count, p in zip(counts, (0.25, 0.5, 0.25), strict=True):
        assert abs(count / n - p) <= 4 * math.sqrt(p * (1 - p) / n)
    fixed = generate_workload(spec(prompt_tokens=321, output_tokens=7), 0)
    assert set(fixed.prompt_tokens) == {321} and set(fixed.output_tokens) == {7}


def test_empirical_lengths_from_a_trace(traces_dir):
    trace = traces_dir / AZURE_CONV
    source = read_trace(trace).prompt_tokens
    n = 20_000
    d = spec(
        requests=n, prompt_tokens={"dist": "empirical", "trace": str(trace), "column": "prompt"}
    )
    generated = generate_workload(d, 1).prompt_tokens
    assert set(np.unique(generated)) <= set(np.unique(source))
    for q in (0.5, 0.9, 0.99):
        x = np.quantile(source, q)
        p = float((source <= x).mean())
        assert abs(float((generated <= x).mean()) - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_relative_trace_path_resolves_against_base_dir(traces_dir):
    d = spec(prompt_tokens={"dist": "empirical", "trace": str(AZURE_CONV), "column": "output"})
    workload = generate_workload(d, 0, base_dir=traces_dir)
    assert workload.prompt_tokens.max() <= 1000  # Azure conv outputs are capped at 1000
    with pytest.raises(KvsimError, match=r"workload\.synthetic\.prompt_tokens\.trace: no such"):
        generate_workload(d, 0, base_dir=traces_dir / "missing")


@given(prompt=st.integers(1, 10**6), output=st.integers(1, 10**6), context=st.integers(2, 10**6))
def test_clip_to_context_invariants(prompt, output, context):
    p, o = clip_to_context(np.array([prompt]), np.array([output]), context)
    assert p[0] >= 1 and o[0] >= 1 and p[0] + o[0] <= context
    if prompt + output <= context:
        assert (p[0], o[0]) == (prompt, output)


def test_context_clip_respects_the_tighter_limit_and_keeps_fitting_requests():
    d = spec(prompt_tokens={"dist": "lognormal", "median": 1500, "sigma": 1.0})
    free = generate_workload(d, 8)
    clipped = generate_workload({**d, "max_context_tokens": 4096}, 8, max_context_tokens=2048)
    total = clipped.prompt_tokens + clipped.output_tokens
    assert total.max() <= 2048 and clipped.output_tokens.min() >= 1
    fits = free.prompt_tokens + free.output_tokens <= 2048
    assert 0 < fits.mean() < 1
    assert np.array_equal(clipped.prompt_tokens[fits], free.prompt_tokens[fits])
    assert np.array_equal(clipped.output_tokens[fits], free.output_tokens[fits])


# ---- prefix structure -------------------------------------------------------------------
PREFIXES = {
    "none": {},
    "system_prompt": {"kind": "system_prompt", "prompt_tokens": 2000, "share": 0.5},
    "rag": {"kind": "rag", "documents": 50, "document_tokens": 1500, "system_prompt_tokens": 600},
    "multi_turn": {
        "kind": "multi_turn",
        "turns": {"dist": "uniform", "low": 1, "high": 6},
        "think_time_s": {"dist": "exponential", "mean": 20},
    },
    "agent": {"kind": "agent", "steps": 4, "tool_output_tokens": 300, "system_prompt_tokens": 3000},
}


@pytest.mark.parametrize("kind", PREFIXES)
def test_block_ids_cover_every_prompt_like_mooncake(kind):
    workload = generate_workload(spec(prefix=PREFIXES[kind], max_context_tokens=32_768), 5)
    lengths = np.diff(workload.prefix_offsets)
    assert np.array_equal(lengths, -(-workload.prompt_tokens // 512))  # ceil(input / 512)
    assert len(workload) == 2000 and np.all(np.diff(workload.arrival_s) >= 0)
    first_seen = np.unique(workload.prefix_hashes, return_index=True)[1]
    assert np.array_equal(
        np.sort(workload.prefix_hashes[np.sort(first_seen)]), np.arange(len(first_seen))
    )  # dense ids 0..k-1, first-seen order
    if kind == "none":
        assert len(np.unique(workload.prefix_hashes)) == len(workload.prefix_hashes)


def test_system_prompt_share_gives_hand_computed_hit_fraction():
    # 2000-token system prompt, 300 own tokens: with it a prompt is 2300 tokens = 5 blocks of
    # which floor(2000/512) = 3 are pure system prompt (the 4th mixes in the user's tokens);
    # without it one 300-token block. Every request after the first with the prompt hits 3.
    n, share = 4000, 0.5
    d = spec(requests=n, prompt_tokens=300, prefix={**PREFIXES["system_prompt"], "share": share})
    workload = generate_workload(d, 12)
    m = int((workload.prompt_tokens == 2300).sum())
    assert set(workload.prompt_tokens) == {300, 2300}
    assert abs(m / n - share) <= 4 * math.sqrt(share * (1 - share) / n)
    hits = ideal_prefix_hits(workload)
    assert hits.sum() / len(workload.prefix_hashes) == pytest.approx(3 * (m - 1) / (5 * m + n - m))


def test_multi_turn_history_is_a_prefix_of_the_next_turn():
    d = spec(
        requests=3000,
        prefix={
            "kind": "multi_turn",
            "turns": {"dist": "uniform", "low": 1, "high": 6},
            "think_time_s": 10.0,
        },
    )
    workload = generate_workload(d, 6)
    assert len(workload) == 3000 and workload.session_id.min() == 0
    sessions = {}
    for i in range(len(workload)):
        sessions.setdefault(int(workload.session_id[i]), []).append(i)
    sizes = np.array([len(turns) for turns in sessions.values()][:-1])  # the last may be cut
    assert abs(sizes.mean() - 3.5) <= 4 * math.sqrt(35 / 12 / len(sizes))
    for turns in sessions.values():
        for prev, cur in zip(turns, turns[1:], strict=False):
            history = workload.prompt_tokens[prev] + workload.output_tokens[prev]
            assert workload.prompt_tokens[cur] > history
            assert workload.arrival_s[cur] - workload.arrival_s[prev] == pytest.approx(10.0)
            full = workload.prompt_tokens[prev] // 512
            assert np.array_equal(workload.prefix_of(cur)[:full], workload.prefix_of(prev)[:full])
            if workload.prompt_tokens[prev] % 512:  # the partial block is not reused
                assert workload.prefix_of(cur)[full] != workload.prefix_of(prev)[full]
    owners = {}
    for session, turns in sessions.items():
        for h in np.concatenate([workload.prefix_of(i) for i in turns]):
            assert owners.setdefault(int(h), session) == session  # no id crosses sessions


def test_multi_turn_sessions_end_at_the_context_limit():
    d = spec(
        requests=1000,
        max_context_tokens=6000,
        prefix={"kind": "multi_turn", "turns": 20, "think_time_s": 5.0},
    )
    workload = generate_workload(d, 3)
    assert len(workload) == 1000
    assert (workload.prompt_tokens + workload.output_tokens).max() <= 6000
    assert np.bincount(workload.session_id).max() < 20


def test_rag_document_popularity_follows_zipf():
    s, n = 1.1, 20_000
    d = spec(
        requests=n,
        prompt_tokens=100,
        prefix={"kind": "rag", "documents": 200, "document_tokens": 1024, "zipf_s": s},
    )
    workload = generate_workload(d, 4)
    first_blocks = workload.prefix_hashes[workload.prefix_offsets[:-1]]  # identifies the doc
    freq = np.sort(np.unique(first_blocks, return_counts=True)[1])[::-1]
    ranks = np.arange(1, 21)
    slope = np.polyfit(np.log(ranks), np.log(freq[:20]), 1)[0]
    assert slope == pytest.approx(-s, abs=0.1)
    weights = np.arange(1, 201) ** -s
    assert freq[0] / n == pytest.approx(weights[0] / weights.sum(), abs=4 * math.sqrt(0.25 / n))
    hits = ideal_prefix_hits(workload)
    assert np.all(hits <= 2)  # only the two document blocks are ever shared


def test_agent_steps_append_action_and_tool_output():
    workload = generate_workload(spec(prefix=PREFIXES["agent"]), 2)
    by_session = {}
    for i in range(len(workload)):
        by_session.setdefault(int(workload.session_id[i]), []).append(i)
    shared = {tuple(workload.prefix_of(i)[:5]) for i in range(len(workload))}
    assert len(shared) == 1  # floor(3000 / 512) = 5 tool-description blocks, shared by all
    for steps in by_session.values():
        for prev, cur in zip(steps, steps[1:], strict=False):
            growth = workload.prompt_tokens[cur] - workload.prompt_tokens[prev]
            assert growth == workload.output_tokens[prev] + 300
            assert workload.arrival_s[cur] - workload.arrival_s[prev] == pytest.approx(1.0)


# ---- determinism ------------------------------------------------------------------------
def test_same_seed_same_workload_different_seed_differs():
    d = spec(arrival="gamma", cv=2.0, prefix=PREFIXES["multi_turn"], max_context_tokens=16_384)
    a, b, c = generate_workload(d, 42), generate_workload(d, 42), generate_workload(d, 43)
    columns = ("arrival_s", "prompt_tokens", "output_tokens", "session_id", "prefix_hashes")
    for name in columns:
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)


# ---- fit and scale ----------------------------------------------------------------------
def _assert_same_lengths(generated, source, n):
    for column in ("prompt_tokens", "output_tokens"):
        values, reference = getattr(generated, column), getattr(source, column)
        for q in (0.5, 0.9, 0.99):
            x = np.quantile(reference, q)
            p = float((reference <= x).mean())
            assert abs(float((values <= x).mean()) - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_fit_reproduces_azure_conversation_trace(traces_dir):
    trace = read_trace(traces_dir / AZURE_CONV)
    fitted = fit(trace)
    generated = generate(fitted, np.random.default_rng(0))
    n = len(trace)
    # rate: the rate table fixes the expected count; renewal noise has variance ≈ c² n
    cv_op = fitted.arrival.cv
    assert abs(len(generated) - n) <= 4 * cv_op * math.sqrt(n)
    gaps_trace, gaps_gen = np.diff(trace.arrival_s), np.diff(generated.arrival_s)
    cv_trace = gaps_trace.std() / gaps_trace.mean()  # 1.09 (shared/reference/traces.md)
    assert gaps_gen.std() / gaps_gen.mean() == pytest.approx(cv_trace, abs=4 / math.sqrt(n))

    def dispersion_60s(arrivals):
        counts = np.histogram(arrivals, bins=np.arange(arrivals[0], arrivals[-1] + 60, 60))[0]
        return counts.var() / counts.mean()

    # traces.md: index of dispersion 20.6 at 60 s; a renewal (Gamma) fit would give ≈ CV² ≈ 1.2
    assert dispersion_60s(generated.arrival_s) == pytest.approx(
        dispersion_60s(trace.arrival_s), rel=0.25
    )
    _assert_same_lengths(generated, trace, len(generated))


def test_fit_picks_poisson_or_gamma_from_the_cv():
    poisson = generate_workload(spec(requests=5000), 1)
    assert isinstance(fit(poisson).arrival, PoissonArrivals)
    bursty = fit(generate_workload(spec(arrival="gamma", cv=2.5, requests=5000), 1)).arrival
    assert isinstance(bursty, GammaArrivals)
    assert bursty.cv == pytest.approx(2.5, abs=4 * math.sqrt(2.5**2 * (2.5**2 + 1) / 2 / 5000))
    assert bursty.rate_per_s == pytest.approx(4.0, abs=4 * 4.0 * 2.5 / math.sqrt(5000))


def test_scale_compress_doubles_the_rate_and_keeps_requests():
    base = generate_workload(spec(arrival="gamma", cv=2.0, prefix=PREFIXES["system_prompt"]), 1)
    double = scale(base, 2.0)
    assert double.duration_s == pytest.approx(base.duration_s / 2)
    assert len(double) / double.duration_s == pytest.approx(2 * len(base) / base.duration_s)
    for name in ("prompt_tokens", "output_tokens", "prefix_hashes", "session_id"):
        assert np.array_equal(getattr(double, name), getattr(base, name))


def test_scale_resample_doubles_the_rate_and_keeps_lengths():
    n, c = 5000, 2.0
    base = generate_workload(spec(arrival="gamma", cv=c, requests=n), 1)
    double = scale(base, 2.0, method="resample", rng=np.random.default_rng(2))
    assert double.arrival_s.max() <= base.arrival_s[-1] - base.arrival_s[0]
    # count noise c² 2n plus the fitted rate's error (2n · c / sqrt(n))²
    assert abs(len(double) - 2 * n) <= 4 * c * math.sqrt(6 * n)
    _assert_same_lengths(double, base, len(double))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"factor": 0}, "factor"),
        ({"factor": 2, "method": "resample"}, "rng"),
        ({"factor": 2, "method": "stretch"}, "method"),
    ],
)
def test_scale_rejects_bad_arguments(kwargs, field):
    with pytest.raises(KvsimError) as err:
        scale(generate_workload(spec(requests=10), 0), **kwargs)
    assert err.value.field == field


# ---- bad specs --------------------------------------------------------------------------
BAD = [
    (
        spec(prompt_tokens={"dist": "lognormal", "median": 1000, "sigma": -1}),
        "workload.synthetic.prompt_tokens.sigma: must be > 0, got -1",
    ),
    (spec(rate=4.0), "workload.synthetic.rate: unknown key"),
    (spec(cv=2.0), "workload.synthetic.cv: unknown key"),
    (spec(arrival="bursty"), "workload.synthetic.arrival: must be one of poisson"),
    (spec(requests=0), "workload.synthetic.requests: must be >= 1, got 0"),
    (spec(requests=None), "workload.synthetic.requests: give requests, duration_s or both"),
    (spec(rate_per_s="fast"), "workload.synthetic.rate_per_s: must be a finite number"),
    (spec(prompt_tokens=0), "workload.synthetic.prompt_tokens: must be >= 1, got 0"),
    (
        spec(prompt_tokens={"dist": "exponential", "mean": 5}),
        "workload.synthetic.prompt_tokens.dist: must be one of fixed, lognormal",
    ),
    (
        spec(output_tokens={"dist": "uniform", "low": 9, "high": 3}),
        "workload.synthetic.output_tokens.high: must be >= low",
    ),
    (spec(arrival="weibull", shape=1.0, cv=1.0), "workload.synthetic.shape: give exactly one"),
    (
        spec(arrival="mmpp", rates_per_s=[1.0], mean_on_s=1, mean_off_s=1),
        "workload.synthetic.rates_per_s: must be [on_rate, off_rate]",
    ),
    (spec(arrival="diurnal", amplitude=1.5), "workload.synthetic.amplitude: must be <= 1"),
    (spec(arrival="rate_table", table=[[0, 1.0]]), "workload.synthetic.rate_per_s: unknown key"),
    (
        {
            **{k: v for k, v in BASE.items() if k != "rate_per_s"},
            "arrival": "rate_table",
            "table": [[0, 1.0], [0, 2.0]],
        },
        "workload.synthetic.table[1][0]: t_s must increase",
    ),
    (
        {
            **{k: v for k, v in BASE.items() if k != "rate_per_s"},
            "arrival": "rate_table",
            "table": [[0, 1.0], [60, 0.0]],
        },
        "workload.synthetic.duration_s: is required when",
    ),
    (spec(max_context_tokens=1), "workload.synthetic.max_context_tokens: must be >= 2"),
    (
        spec(prefix={"kind": "rag", "document_tokens": 100}),
        "workload.synthetic.prefix.documents: is required",
    ),
    (
        spec(prefix={"kind": "system_prompt", "prompt_tokens": 10, "share": 1.5}),
        "workload.synthetic.prefix.share: must be <= 1",
    ),
    (
        spec(prefix={"kind": "multi_turn", "turns": 3, "think_time_s": -1}),
        "workload.synthetic.prefix.think_time_s: must be >= 0",
    ),
    (
        spec(prefix={"kind": "agent", "steps": 3, "tool_output_tokens": 5, "documents": 2}),
        "workload.synthetic.prefix.documents: unknown key",
    ),
    (spec(prefix="rag"), "workload.synthetic.prefix: must be a table"),
]


@pytest.mark.parametrize(("d", "message"), BAD, ids=[m.split(": ")[0] for _, m in BAD])
def test_bad_specs_name_the_field(d, message):
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(KvsimError) as err:
        SyntheticSpec.from_dict(d)
    assert str(err.value).startswith(message)


def test_custom_source_prefixes_the_field_path():
    with pytest.raises(KvsimError, match=r"^scenario\.traffic\.requests: must be >= 1"):
        SyntheticSpec.from_dict(spec(requests=-3), source="scenario.traffic")


# ---- CLI --------------------------------------------------------------------------------
def test_trace_gen_writes_mooncake_jsonl_that_reads_back(tmp_path, capsys):
    spec_file = tmp_path / "scenario.toml"
    spec_file.write_text(
        "[workload.synthetic]\narrival = 'gamma'\nrate_per_s = 5.0\ncv = 2.0\nrequests = 400\n"
        "prompt_tokens = { dist = 'lognormal', median = 1000, sigma = 0.8 }\n"
        "output_tokens = 50\n[workload.synthetic.prefix]\nkind = 'system_prompt'\n"
        "prompt_tokens = 1100\nshare = 0.7\n"
    )
    out = tmp_path / "gen.jsonl"
    assert (
        main(["trace", "gen", "--spec", str(spec_file), "--seed", "3", "--out", str(out), "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 400
    expected = generate(load_spec(spec_file), np.random.default_rng(3))
    back = read_trace(out)
    assert np.array_equal(back.prompt_tokens, expected.prompt_tokens)
    assert np.array_equal(back.prefix_hashes, expected.prefix_hashes)
    assert np.allclose(back.arrival_s, expected.arrival_s - expected.arrival_s[0], atol=1e-3)
    assert not list(tmp_path.glob("*.tmp"))


def test_trace_gen_flags_and_errors(tmp_path, capsys):
    out = tmp_path / "gen.parquet"
    args = [
        "trace",
        "gen",
        "--rate",
        "3",
        "--requests",
        "100",
        "--prompt-median",
        "800",
        "--output-tokens",
        "20",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert len(Workload.from_parquet(out)) == 100
    assert main([*args, "--out", str(tmp_path / "gen.txt")]) == 2
    assert main([*args[:-2], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown output format .txt" in err and "--output-median or --output-tokens" in err
