"""Sweeps: a grid of trained configurations x seeds, evaluated with several test-time
settings from saved embeddings, reported as tables (Markdown, CSV) and figures (PNG).

  plan = Plan(tables=(Table(...), ...), seeds=(0, 1, 2))
  run_plan(plan, base_config, "runs/sweep", "runs/sweep/results",
           train_command=lambda d: [sys.executable, "train.py",
                                    f"--config=configs/saved.py:{d}", f"--workdir={d}"],
           title="My sweep")

``experiments/clipart.py`` is a complete example (the clip-art table).
"""
from diml_jax.sweep.analysis import rerank_agreement
from diml_jax.sweep.plan import Comparison, Plan, Row, Run, Setting, Table, Variant, freeze
from diml_jax.sweep.runner import run_plan

__all__ = ["Comparison", "Plan", "Row", "Run", "Setting", "Table", "Variant", "freeze",
           "rerank_agreement", "run_plan"]
