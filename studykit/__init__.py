"""studykit: a Jupyter-first, reproducible study kit for LLM post-training research.

Modules (each readable on its own):
  config    – Hydra composition of conf/ (model × data × study × profile)
  models    – the embedded PyPI-shipped model, hub ids, a tiny random model for tests
  data      – Alpaca / chat / preference loaders with clear errors
  testbed   – reasoning-gym instruction pool, held-out eval, preference pairs, controlled noise
  logprobs  – batched, padding-aware response log-probs (the scoring core)
  evaluate  – greedy generation + verifier accuracy per task family
  train     – TRL SFT / DPO wrappers for CPU and GPU (accelerate-launchable)
  score     – sharded response scoring over JSONL (accelerate-launchable)
  results   – metrics / tables / figures written by notebooks
  runner    – papermill execution into results/<study>/<profile>/ with a manifest
"""
from .config import compose, seed_everything

__version__ = "0.1.0"
__all__ = ["compose", "seed_everything", "__version__"]
