"""The Study session a notebook opens (work in progress: the session API is being written)."""
from __future__ import annotations

# Each line a notebook's session appends here (in the run's output directory) is a stage of the study: the runner
# prints it as it happens ("run 3 of 12: sft seed 1 — 4.2 min elapsed, about 13 min to go").
PROGRESS_FILE = "progress.log"
