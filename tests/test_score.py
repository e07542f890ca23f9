"""The scoring entry point gives the same scores in one process and sharded over 2 CPU processes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from studykit.config import CONF_DIR
from studykit.data import write_jsonl


def run(cmd) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_process_sharding_matches_one_process(tmp_path, smoke_cfg):
    rows = [{"id": f"r{i}", "prompt": f"What is {i} + {i}?", "response": str(2 * i)} for i in range(7)]
    write_jsonl(rows, tmp_path / "in.jsonl")
    args = ["-m", "studykit.score", "--input", str(tmp_path / "in.jsonl"), "--batch-size", "2"]
    run([sys.executable, *args, "--output", str(tmp_path / "one.jsonl"), "profile=smoke"])
    accelerate = Path(sys.executable).with_name("accelerate")
    log = run([str(accelerate), "launch", "--config_file", str(CONF_DIR / "accelerate" / "cpu_2proc.yaml"), *args,
         "--output", str(tmp_path / "two.jsonl"), "profile=smoke"])
    assert "[rank 0/2] scored 4 rows" in log and "[rank 1/2] scored 3 rows" in log
    one, two = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
                for name in ("one.jsonl", "two.jsonl"))
    assert [r["id"] for r in one] == [r["id"] for r in two] == [r["id"] for r in rows]
    assert [r["n_tokens"] for r in one] == [r["n_tokens"] for r in two]
    np.testing.assert_allclose([r["logprob_sum"] for r in one], [r["logprob_sum"] for r in two], atol=1e-5)
