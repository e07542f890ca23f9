"""Run by tests/test_distributed.py under a 2-process `accelerate launch` (``python launch_dpo_precompute.py OUT``):
DPO on the tiny model with ``dpo.precompute_ref_log_probs``.  Each rank checks that its trainer holds no reference
model and that the reference log-probs TRL stored in its train dataset are the start model's summed completion
log-probs of the same tokens (the kit's own scorer), then writes ``OUT/rank<r>.json``."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from studykit import distributed
from studykit.config import compose, device
from studykit.logprobs import pad_token_id, pair_logprobs
from studykit.models import copy_model, load_model_and_tokenizer
from studykit.preference import train_preference
from studykit.testbed import build_testbed

out = Path(sys.argv[1])
distributed.state()   # the gloo process group, before any trainer
cfg = compose(["profile=smoke", "dpo.precompute_ref_log_probs=true"])
model, tokenizer = load_model_and_tokenizer(cfg.model, device(cfg))
start = copy_model(model)
pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in build_testbed(cfg.data)["preference"][:4]]
trainer = train_preference(copy_model(model), model, tokenizer, pairs, cfg, out / "scratch", max_steps=2,
                           per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1)

assert trainer.ref_model is None, type(trainer.ref_model)
data = trainer.train_dataset
assert len(data) == len(pairs), len(data)
expected = {side: np.array([float(t.sum()) for t in pair_logprobs(
    start, list(zip(data["prompt_ids"], data[f"{side}_ids"])), pad_token_id(tokenizer))]) for side in ("chosen", "rejected")}
stored = {side: np.array(data[f"ref_{side}_logps"], dtype=float) for side in ("chosen", "rejected")}
for side in ("chosen", "rejected"):
    assert np.allclose(stored[side], expected[side], rtol=0, atol=1e-4), (side, stored[side], expected[side])
first_loss = trainer.state.log_history[0]["loss"]
assert trainer.state.global_step == 2 and abs(first_loss - math.log(2)) < 1e-4, trainer.state.log_history   # policy = its reference
(out / f"rank{distributed.rank()}.json").write_text(json.dumps({k: v.tolist() for k, v in stored.items()}))
