"""The engine: scenarios, KV memory, policies, cost model, executors, metrics, planner, CLI."""

from sim.run import RunResult, run_scenario
from sim.scenario import Scenario, load_scenario

__all__ = ["RunResult", "Scenario", "load_scenario", "run_scenario"]
