# sparserec: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA := data/ml-100k/ml-100k.inter
THREADS ?= $(shell nproc 2>/dev/null || echo 2)
export OMP_NUM_THREADS ?= $(THREADS)
export PYTHONUNBUFFERED := 1
export BENTOML_DO_NOT_TRACK := true

DEMO_EPOCHS ?= 60
DEMO_RUN := runs/demo-lightgcn
DEMO_ARTIFACT := artifacts/demo-lightgcn
DEMO_SPARSE_ARTIFACT := artifacts/demo-lightgcn-dsl
PORT ?= 3000

.PHONY: setup demo test test-fast serve bench-quality bench-size bench-serve bench loadtest clean help

help:
	@echo "make demo   set up, train LightGCN on MovieLens-100K, and report"
	@echo "make test   set up, then run the whole test suite"
	@echo "make serve  serve the artifact make demo exported (PORT=3000)"
	@echo "make bench-quality | bench-size | bench-serve | bench | loadtest   the long benchmarks"

setup: $(STAMP) $(DATA)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing sparserec and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -q -e '.[test]' > $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

$(DATA): $(STAMP)
	@$(BIN)/python -c "from train.data import fetch_ml100k; print('MovieLens-100K:', fetch_ml100k('data'))"

demo: setup
	$(BIN)/python -m train --data ml-100k --model lightgcn --out $(DEMO_RUN) --epochs $(DEMO_EPOCHS) --seed 2024 \
		--optim.lr=5e-3 --run.patience=10
	@$(BIN)/python -c "import json; m = json.load(open('$(DEMO_RUN)/metrics.json')); t = m['test']; \
		print(f\"\nLightGCN on ml-100k (dense, dim {m['dim']}): test NDCG@20 {t['ndcg@20']:.4f}  Recall@20 {t['recall@20']:.4f}\" \
		      f\"  (best epoch {m['best_epoch']} of {m['epochs']}, {m['seconds']:.0f} s)\")"

test: setup
	$(BIN)/python -m pytest -q

serve: setup
	$(BIN)/python -m serving --artifact $(DEMO_ARTIFACT) --port $(PORT)

bench-quality: setup
	$(BIN)/python -m train.bench_quality

bench-size: setup
	$(BIN)/python -m export.bench_size

bench-serve: setup
	$(BIN)/python -m serving.bench --artifact $(DEMO_ARTIFACT)

bench: setup
	$(BIN)/python -m loadtest.bench

loadtest: setup
	$(BIN)/python -m loadtest run --compare $(DEMO_ARTIFACT) $(DEMO_SPARSE_ARTIFACT) --users 20 --spawn-rate 10 --duration 30s

clean:
	rm -rf runs artifacts .pytest_cache
