# fgssl: `make train` runs the main job, `make test` the test suite. Both install first.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fgssl-installed

.PHONY: install train test test-all bench lint figures data evidence clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (set PY=python3.x)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision first, pinned to the releases in the local wheel cache
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow" $(ARGS)

bench: install
	$(BIN)/python -c "import lightly" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[bench]' \
		|| echo "lightly could not be installed: the bench has no peer row"
	$(BIN)/python -m fgssl.bench $(ARGS)

figures: install
	$(BIN)/python figures.py $(ARGS)

# make data NAME=cub ROOT=/data [ARCHIVE="file ..."]: fetch, verify, unpack (python -m fgssl.data.prepare)
data: install
	@test -n "$(NAME)" -a -n "$(ROOT)" || { echo "usage: make data NAME=cub|aircraft|cars ROOT=DIR [ARCHIVE=FILE]"; exit 2; }
	$(BIN)/python -m fgssl.data.prepare $(NAME) --root $(ROOT) $(foreach a,$(ARCHIVE),--archive $(a))

lint: install
	$(BIN)/ruff check src tests train.py evaluate.py figures.py
	cd src && ../$(BIN)/lint-imports --no-cache --config ../pyproject.toml

# The evidence sweep (docs/evidence.md): floors, MoCo v2 base/+SYN/+LCR/+SYN+LCR and SimSiam base/+SYN/+LCR,
# 3 paired seeds each, then the tables with paired differences and the learning curves. Hours on a CPU.
# Each finished job's record lands in docs/evidence/<experiment>/ (commit it): rerunning continues where
# the last run stopped, on any clone. On a GPU: make evidence EXPERIMENT=gpu_evidence
EXPERIMENT ?= cpu_evidence
# jobs at a time, the cores split between them (make evidence JOBS=2: two one-thread jobs on a 2-core CPU)
JOBS ?= 1
EVREC := docs/evidence/$(EXPERIMENT)
evidence: install
	$(BIN)/python -m fgssl.evidence run --experiment $(EXPERIMENT) --jobs $(JOBS) $(ARGS)
	$(BIN)/python -m fgssl.results $(EVREC)/mocov2 --floors $(EVREC)/floors --baseline synthesis=none,rationale=none --evals last_feature-gap
	$(BIN)/python -m fgssl.results $(EVREC)/simsiam --floors $(EVREC)/floors --baseline synthesis=none,rationale=none --evals last_feature-gap
	$(BIN)/python -m fgssl.curves $(EVREC)/mocov2 $(EVREC)/floors --group-seeds --out $(EVREC)/curves_mocov2.png
	$(BIN)/python -m fgssl.curves $(EVREC)/simsiam $(EVREC)/floors --group-seeds --out $(EVREC)/curves_simsiam.png

clean:
	rm -rf outputs multirun wandb .pytest_cache
