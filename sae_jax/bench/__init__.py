"""`sae-jax bench`: throughput of the real train step, FLOP accounting, and a memory planner."""
from sae_jax.bench.config import BenchConfig, PlanConfig
from sae_jax.bench.run import run_bench
from sae_jax.bench.plan import run_plan

__all__ = ["BenchConfig", "PlanConfig", "run_bench", "run_plan"]
