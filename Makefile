# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv when missing,
# installs torch==2.13.0 first (the local CPU wheel; any other version pulls CUDA packages),
# then the package with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-compare clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]' torch==2.13.0
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m shmqueue demo

test: $(STAMP)
	$(BIN)/ruff check shmqueue tests benchmarks examples tools
	$(BIN)/ruff format --check shmqueue tests benchmarks examples tools
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# `make bench-compare` runs each library in a venv of its own under .bench-venvs/, made only when
# missing: torch==2.13.0 first (the local CPU wheel), then the library, then a check that torch
# stayed. shmqueue gets one too (editable, so it runs this working tree): a library mapped by no
# process outside the benchmark counts fully in its PSS, as the competitors' do.
BENCH_VENVS := .bench-venvs
BENCH_LIBRARIES := shmqueue torchio-1.2.1 torchio-2.0.0a2 monai-1.6 batchgeneratorsv2-0.3.6
$(BENCH_VENVS)/shmqueue/.installed: PACKAGES := -e .
$(BENCH_VENVS)/torchio-1.2.1/.installed: PACKAGES := torchio==1.2.1
$(BENCH_VENVS)/torchio-2.0.0a2/.installed: PACKAGES := --pre torchio==2.0.0a2
$(BENCH_VENVS)/monai-1.6/.installed: PACKAGES := monai~=1.6.0 nibabel
# nnU-Net v2's augmentation (scenario f): batchgeneratorsv2's transforms, run in worker processes
# by batchgenerators' NonDetMultiThreadedAugmenter, as nnU-Net v2 runs them.
$(BENCH_VENVS)/batchgeneratorsv2-0.3.6/.installed: PACKAGES := batchgeneratorsv2==0.3.6 batchgenerators==0.25.5 nibabel

$(BENCH_VENVS)/%/.installed:
	test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(@D)/bin/pip install --quiet --disable-pip-version-check $(PACKAGES)
	$(@D)/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

bench-compare: $(STAMP) $(BENCH_LIBRARIES:%=$(BENCH_VENVS)/%/.installed)
	$(BIN)/python -m benchmarks.comparison --venvs $(BENCH_VENVS)

clean:
	rm -rf $(VENV) build *.egg-info
