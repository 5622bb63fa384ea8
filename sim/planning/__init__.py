"""Building blocks of the capacity planner (:mod:`sim.plan`): KV-strategy presets, SLO
checks, the max-rate search, probe workloads, and ranking with the Pareto set."""
