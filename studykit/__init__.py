"""studykit: a Jupyter-first, reproducible study kit for LLM post-training research.

Modules (each readable on its own), in three layers whose imports run one way (tests/test_structure.py):

core
  errors    – the input errors and the one-line error wrapper of every entry point
  registry  – the trainer-class registries by name (RL methods, preference losses), so composing loads no TRL
  config    – Hydra composition of conf/ (model × data × study × profile)
  validate  – config values checked before any work
  models    – the embedded PyPI-shipped model, hub ids, a tiny random model for tests
  data      – Alpaca / chat / preference / math loaders with clear errors
  testbed   – reasoning-gym instruction pool, held-out eval, preference pairs, controlled noise
  logprobs  – batched, padding-aware response log-probs (the scoring core)
  answers   – the one answer extractor: strict and lenient correctness (Math-Verify for math records)
  objectives – SFT objectives as token weights (registry OBJECTIVES); rewards – RLVR rewards (registry REWARDS)
  stats     – seeds-and-items t intervals, McNemar, permutation correlations, AUROC, MDE, Holm / BH, the verdict rule
  placebo   – placebo arms: the same budget with the learning signal destroyed
  distributed – one study under `accelerate launch`: rank, shards of the eval items, gathered predictions
methods, training and evidence
  trainers  – the shared TRL plumbing: training arguments per device, fp32 check, logs to a file, TRL rows
  train / preference / rl (+ grpo, hybrid_rl, curriculum) – SFT, the preference losses, GRPO (one prompt pass per
    group) and its variants
  nuggets, rewardrank, selectors, transforms, diversity, merging – the methods' scoring and data
  calibration – which testbed families let each method act on a model (gold skew, accuracy, RL signal share)
  tuning    – a setting (lr, α) chosen on the dev split: the one whose run beats its placebo by the most
  arms      – arms trained from one start beside their placebos (preference losses, SFT, RL methods), tuned on dev
  evaluate  – generation, per-item judged predictions, accuracy with chance / majority baselines
  judges    – judges of open-ended replies (registry JUDGES: reward model, MT-Bench pairwise / single), cached;
    AlpacaEval's length-controlled win rate
  harness   – lm-evaluation-harness tasks as an extra per-item evaluation (eval.lm_eval)
  guards    – degenerate arms, identical runs, placebo, RL-signal and movement preconditions, family effects
  claims    – the claims YAML of a study → guarded claims table with verdicts
  analysis  – the analysis step: committed evidence → claims.csv and analysis/ (`studykit analyze`)
  report    – the accuracy sections and tables every study notebook shows
  score     – sharded response scoring over JSONL (accelerate-launchable)
  results   – metrics / tables / figures / predictions written by notebooks, logs to a file
  provenance – the generated results/README.md (evidence / analysis staleness, the BH ledger) and README's table
  cache     – the run cache: trained runs stored under the key of their code, model, seed, eval items and recipe
orchestration
  study     – the Study session a notebook opens: config, device, logging, evaluation, cached runs, progress
  runner    – papermill execution into results/<study>/<profile>/ (or a sweep's runs/…/<tag>/), locks, manifest
  reproduce – ``make study``: re-run the committed ledger into runs/reproduce/ and report agreement
  cli       – the ``studykit`` command
(device_check – STUDYKIT_DEVICE_CHECK: every model call must run on the configured device)
"""
import os

from .config import compose, device, seed_everything

if os.environ.get("STUDYKIT_DEVICE_CHECK"):
    from .device_check import install

    install(os.environ["STUDYKIT_DEVICE_CHECK"])

__version__ = "0.1.0"
__all__ = ["compose", "device", "seed_everything", "__version__"]
