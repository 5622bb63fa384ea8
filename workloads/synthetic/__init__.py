"""Synthetic workload generators: arrival processes, length distributions and prefix
structure, parsed from a ``[workload.synthetic]`` table and drawn from one seeded
``np.random.Generator``. See ``docs/workloads_synthetic.md``."""

from workloads.synthetic.arrivals import (
    ArrivalProcess,
    DiurnalArrivals,
    GammaArrivals,
    MmppArrivals,
    PoissonArrivals,
    RateTableArrivals,
    WeibullArrivals,
)
from workloads.synthetic.distributions import (
    Distribution,
    Empirical,
    Exponential,
    Fixed,
    Lognormal,
    Uniform,
)
from workloads.synthetic.prefix import (
    AgentPrefix,
    MultiTurnPrefix,
    NoPrefix,
    PrefixSpec,
    RagPrefix,
    SystemPromptPrefix,
)
from workloads.synthetic.spec import SyntheticSpec, generate, generate_workload

__all__ = [
    "AgentPrefix",
    "ArrivalProcess",
    "DiurnalArrivals",
    "Distribution",
    "Empirical",
    "Exponential",
    "Fixed",
    "GammaArrivals",
    "Lognormal",
    "MmppArrivals",
    "MultiTurnPrefix",
    "NoPrefix",
    "PoissonArrivals",
    "PrefixSpec",
    "RagPrefix",
    "RateTableArrivals",
    "SyntheticSpec",
    "SystemPromptPrefix",
    "Uniform",
    "WeibullArrivals",
    "generate",
    "generate_workload",
]
