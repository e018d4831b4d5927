# Set-up is part of every target: a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test demo jobs clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU machines: this pin takes the local CPU wheel (a plain `torch` would pull a multi-GB CUDA build).
	$(BIN)/python -m pip install -q torch==2.13.0
	# the exact tested versions (constraints.txt) within pyproject.toml's compatible ranges
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Two workers, one test file each at a time (a file's fixtures stay in one process; the POC tests use their own
# ports): most federated and POC tests wait on NVFlare's processes, so two files share the 2 cores well
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

demo: setup
	$(BIN)/ecefl demo --out workspace/demo

# Exported NVFlare job folders (for `nvflare job submit -j jobs/<job>/<job>` or the admin console).
jobs: setup
	$(BIN)/python jobs/mae_pretrain/job.py --export --export-dir jobs/mae_pretrain
	$(BIN)/python jobs/ece_finetune/job.py --export --export-dir jobs/ece_finetune
	find jobs -name __pycache__ -type d -prune -exec rm -rf {} +

clean-demo:
	rm -rf workspace/demo
