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
REPRO  ?= output/reproduce-demo
ROUNDS ?= 2
VENV26 ?= .venv-paddle26
STAMP26 := $(VENV26)/.installed

.PHONY: install demo reproduce-demo demo-data demo-preprocess demo-pretrain demo-train demo-eval demo-infer demo-export test test-fast test-paddle26 clean bench bench-quick gpu-smoke

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps -e .
	touch $(STAMP)

demo: install demo-data demo-preprocess demo-pretrain demo-train demo-eval demo-infer demo-export
	@echo "make demo: finished; outputs in $(DEMO_DATA) and $(DEMO)"

demo-data: install
	$(PY) tools/make_demo_data.py --out $(DEMO_DATA) --series 320 --test-series 8 --seed 0 --size 256 \
		--slices-min 16 --slices-max 24 --hemorrhage-fraction 0.5 --workers $(JOBS)

demo-preprocess: install
	$(PY) tools/preprocess.py -c $(DEMO_CFG) -o Data.root=$(DEMO_DATA) -o Data.num_workers=$(JOBS)

# stage 1: backbone weights to start from (the paper's ImageNet weights cannot be downloaded here): slice-level
# pre-training on random slices of the training series -> $(DEMO)/slice_pretrain/backbone.pdparams
demo-pretrain: install
	$(PY) tools/pretrain_slices.py -c $(DEMO_CFG) -o Data.root=$(DEMO_DATA) -o Global.output_dir=$(DEMO)

# stage 2: the paper's end-to-end training from those weights (resumes from $(DEMO)/latest if a run was stopped)
demo-train: install
	$(PY) tools/train.py -c $(DEMO_CFG) -o Data.root=$(DEMO_DATA) -o Global.output_dir=$(DEMO) \
		-o Arch.pretrained=$(DEMO)/slice_pretrain/backbone.pdparams \
		$(if $(wildcard $(DEMO)/latest.json),-o Global.checkpoints=$(DEMO)/latest)

# score best_model on the held-out (val) synthetic series, next to the constant-prior baseline
demo-eval: install
	$(PY) tools/eval.py -c $(DEMO_CFG) -o Data.root=$(DEMO_DATA) -o Global.output_dir=$(DEMO) \
		-o Global.pretrained_model=$(DEMO)/best_model --output $(DEMO)/eval

# predict the synthetic test series with best_model (exit 3 = some files skipped, still a success here)
demo-infer: install
	$(PY) tools/infer.py -c $(DEMO_CFG) -o Global.pretrained_model=$(DEMO)/best_model -o Data.num_workers=$(JOBS) \
		--input $(DEMO_DATA)/stage_2_test --output $(DEMO)/infer --threads $(JOBS) || [ $$? -eq 3 ]

# export best_model for Paddle Inference and predict the same series without the training config
demo-export: install
	$(PY) tools/export_model.py -c $(DEMO_CFG) -o Global.pretrained_model=$(DEMO)/best_model \
		-o Global.save_inference_dir=$(DEMO)/inference
	$(PY) deploy/python/predict.py --model_dir $(DEMO)/inference --input $(DEMO_DATA)/stage_2_test \
		--output $(DEMO)/predict --threads $(JOBS) || [ $$? -eq 3 ]

# the paper's whole recipe on the synthetic set with one resumable command (docs/reproduce.md): stage 1 + single
# model, test predictions, pseudo-labels, $(ROUNDS) FixMatch rounds (configs/fixmatch/demo_micro_fixmatch.yaml), the
# eq. 3 ensemble -> $(REPRO)/submission.csv, and a table of every model scored on the synthetic test labels
# against the constant prior. Interrupted, the same command resumes (finished steps are skipped).
reproduce-demo: install demo-data
	$(PY) tools/reproduce.py -c $(DEMO_CFG) --data $(DEMO_DATA) --out $(REPRO) --rounds $(ROUNDS) \
		-o Data.num_workers=$(JOBS)

test: install
	$(PY) -m pytest -q tests
	$(MAKE) test-paddle26

# Paddle 2.6 (numpy<2) smoke subset in a second venv: model forward, export (.pdmodel), predictor, infer, decoders
$(STAMP26): requirements-paddle26.txt setup.py
	$(PYTHON) -m venv $(VENV26)
	$(VENV26)/bin/pip install --upgrade pip
	$(VENV26)/bin/pip install -r requirements-paddle26.txt
	$(VENV26)/bin/pip install --no-deps -e .
	touch $(STAMP26)

test-paddle26: $(STAMP26)
	$(VENV26)/bin/python -m pytest -q -p no:cacheprovider tests/paddle26 tests/test_export.py tests/test_infer.py tests/test_gpu_infer.py \
		tests/test_transfer_syntax.py

# GPU smoke test (tools/gpu_smoke.py): run first on a new GPU machine; exits 2 on a machine without a GPU
gpu-smoke: install
	$(PY) tools/gpu_smoke.py

test-fast: install
	$(PY) -m pytest -q -x -m "not slow" tests

# Benchmarks (not part of make test; docs/benchmarks.md). Each prints a table and writes output/bench/*.json.
# TORCH_PYTHON=/path/to/venv/bin/python (torch + timm, never a dependency of ppihd) adds PyTorch to the peak and the peer.
bench: install
	$(PY) benchmarks/peak.py $(if $(TORCH_PYTHON),--torch-python $(TORCH_PYTHON))
	$(PY) benchmarks/infer.py
	$(PY) benchmarks/infer_ab.py
	$(PY) benchmarks/train_memory.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/study.py
	$(PY) benchmarks/peer_torch.py $(if $(TORCH_PYTHON),--torch-python $(TORCH_PYTHON))
	$(if $(wildcard $(DEMO)/best_model.pdparams),$(PY) benchmarks/lowprec.py -c $(DEMO_CFG) \
		--weights $(DEMO)/best_model.pdparams -o Data.root=$(DEMO_DATA),@echo "bench: no $(DEMO)/best_model.pdparams: run make demo for benchmarks/lowprec.py")

bench-quick: install
	$(PY) benchmarks/peak.py --quick
	$(PY) benchmarks/infer.py --quick
	$(PY) benchmarks/infer_ab.py --quick
	$(PY) benchmarks/train_memory.py --quick
	$(PY) benchmarks/loader.py --quick
	$(PY) benchmarks/scaling.py --quick --fig-dir output/bench/figures
	$(PY) benchmarks/study.py --quick
	$(PY) benchmarks/peer_torch.py --quick $(if $(TORCH_PYTHON),--torch-python $(TORCH_PYTHON))

clean:
	rm -rf output .pytest_cache
