"""Analytical cost model: roofline step times and the per-replica memory plan."""

from sim.cost.batch import BatchShape
from sim.cost.memory import MemoryPlan, plan_memory
from sim.cost.roofline import ComponentCost, CostModel, StepCost

__all__ = ["BatchShape", "ComponentCost", "CostModel", "MemoryPlan", "StepCost", "plan_memory"]
