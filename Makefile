# ppihd — the two set-up commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
DEMO   ?= output/demo
DEMO_DATA ?= data/demo
DEMO_CFG  ?= configs/demo/swin_micro_seq.yaml
JOBS   ?= 2

.PHONY: install demo demo-data demo-preprocess demo-train demo-eval demo-infer demo-export test test-fast clean bench bench-quick

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps -e .
	touch $(STAMP)

demo: install demo-data demo-preprocess demo-train demo-eval
	@echo "make demo: finished; outputs in $(DEMO_DATA) and $(DEMO)"

demo-data: install
	$(PY) tools/make_demo_data.py --out $(DEMO_DATA) --series 48 --test-series 8 --seed 0 --workers $(JOBS)

demo-preprocess: install
	$(PY) tools/preprocess.py -c $(DEMO_CFG) -o Data.root=$(DEMO_DATA) -o Data.num_workers=$(JOBS)

# train the CPU demo model on the synthetic cache (resumes from $(DEMO)/latest if a previous run was stopped)
demo-train: install
	$(PY) tools/train.py -c $(DEMO_CFG) -o Data.root=$(DEMO_DATA) -o Global.output_dir=$(DEMO) \
		$(if $(wildcard $(DEMO)/latest.json),-o Global.checkpoints=$(DEMO)/latest)

# score best_model on the held-out (val) synthetic series, next to the constant-prior baseline
demo-eval: install
	$(PY) tools/eval.py -c $(DEMO_CFG) -o Data.root=$(DEMO_DATA) -o Global.output_dir=$(DEMO) \
		-o Global.pretrained_model=$(DEMO)/best_model --output $(DEMO)/eval

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -x -m "not slow" tests

# Benchmarks (not part of make test; docs/benchmarks.md). Each prints a table and writes output/bench/*.json.
bench: install
	$(PY) benchmarks/infer.py
	$(PY) benchmarks/train_memory.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/scaling.py

bench-quick: install
	$(PY) benchmarks/infer.py --quick
	$(PY) benchmarks/train_memory.py --quick
	$(PY) benchmarks/loader.py --quick
	$(PY) benchmarks/scaling.py --quick --fig-dir output/bench/figures

clean:
	rm -rf output .pytest_cache
