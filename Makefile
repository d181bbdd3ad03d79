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
export MAKE_TARGET = $@

DEMO_EPOCHS ?= 80
DEMO_DENSITY ?= 0.2
DEMO_UPDATER ?= dsl-mixed
DEMO_RUN := runs/demo-lightgcn
DEMO_SPARSE_RUN := runs/demo-lightgcn-dsl
DEMO_ARTIFACT := artifacts/demo-lightgcn
DEMO_SPARSE_ARTIFACT := artifacts/demo-lightgcn-dsl
DEMO_SMALL_RUN := runs/demo-lightgcn-small
DEMO_SMALL_ARTIFACT := artifacts/demo-lightgcn-small
DEMO_MASK_OUTPUT ?= true
DEMO_ARTIFACTS = $(DEMO_ARTIFACT) $(DEMO_SMALL_ARTIFACT) $(DEMO_SPARSE_ARTIFACT)
# the sparse index even where auto would keep flat (at 1,682 items flat answers as fast: see README)
DEMO_SPARSE_INDEX ?= sparse
PORT ?= 3000
BIND_HOST ?= 127.0.0.1
ARTIFACT ?= $(DEMO_ARTIFACT)
URL ?=
USERS ?= 20
DURATION ?= 60s
# extra flags of the timed benchmarks, e.g. BENCH_FLAGS=--allow-noisy
BENCH_FLAGS ?=
SATURATION_USERS ?= 40 100

.PHONY: setup demo test test-fast serve compare bench-quality bench-size bench-serve bench bench-reduced loadtest clean help
.PHONY: bench-mask-output bench-masks bench-sparse synthetic-1m
.PHONY: bench-pop bench-data bench-fidelity
.PHONY: bench-quality-gowalla bench-quality-gowalla-report sweep-mf-gowalla

help:
	@echo "The product (the first two set everything up):"
	@echo "  make demo                      train LightGCN on MovieLens-100K (dense, DSL, small-dense), export, serve, query"
	@echo "  make test                      the whole test suite"
	@echo "  make serve                     serve make demo's artifact (PORT=3000 BIND_HOST=127.0.0.1 ARTIFACT=...)"
	@echo "  make loadtest-host URL=http://HOST:PORT   locust against a running server (USERS=20 DURATION=60s)"
	@echo "  make bento                     the artifact as a BentoML model + a Bento (ARTIFACT=..., default make demo's)"
	@echo "  make compare ARTS='artifacts/a artifacts/b' OUT=reports/ab   artifacts side by side: served bytes, quality, latency, front"
	@echo "  make test-fast                 the suite without the slow tests (no server, no long training): pytest -m 'not slow'"
	@echo "  make lint                      ruff check and ruff format --check (pyproject.toml [tool.ruff])"
	@echo "  make loadtest                  locust against the demo artifacts (results/loadtest-*)"
	@echo "  make clean                     remove runs/ and artifacts/"
	@echo "The lab (benchmarks/README.md: each one's question, command, time and output file):"
	@echo "  make bench-quality | bench-quality-gowalla | bench-quality-gowalla-report | sweep-mf-gowalla"
	@echo "  make bench-quality-sweeps | bench-quality-nmf | bench-quality-longtail | bench-pop"
	@echo "  make bench-train | bench-ddp | bench-data | bench-read"
	@echo "  make bench-size | bench-fidelity | bench-mask-output | bench-masks"
	@echo "  make bench | bench-reduced | bench-sparse | bench-small-dense | synthetic-1m"
	@echo "  make bench-serve | bench-replicas | loadtest-shards | loadtest-replicas"
	@echo "  make pareto-gowalla | pareto-gowalla-report"
	@echo "  make bench-fold-in | bench-fold-in-latency"
	@echo "Timed benchmarks refuse to write into results/ on a busy machine (1-minute load > half the CPUs):"
	@echo "  make bench-train BENCH_FLAGS=--allow-noisy   keeps the figure, marked noisy in its file"

setup: $(STAMP) $(DATA)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing sparserec and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -q -e '.[test]' > $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

$(DATA): $(STAMP)
	@$(BIN)/python -c "from train.data import fetch_ml100k; print('MovieLens-100K:', fetch_ml100k('data'))"

demo: setup
	@echo "== 1/4 train dense, DSL and equal-budget small-dense LightGCN on MovieLens-100K"
	$(BIN)/python -m train --data ml-100k --model lightgcn --out $(DEMO_RUN) --epochs $(DEMO_EPOCHS) --seed 2024 \
		--optim.lr=5e-3 --log-level=warning
	@echo "== 2/4 train LightGCN with DSL at density $(DEMO_DENSITY) ($(DEMO_UPDATER), mask_output=$(DEMO_MASK_OUTPUT)) and small-dense"
	$(BIN)/python -m train --data ml-100k --model lightgcn --out $(DEMO_SPARSE_RUN) --epochs $(DEMO_EPOCHS) --seed 2024 \
		--optim.lr=5e-3 --sparsity.density=$(DEMO_DENSITY) --sparsity.updater=$(DEMO_UPDATER) \
		--model.mask_output=$(DEMO_MASK_OUTPUT) --log-level=warning
	$(BIN)/python -m train --data ml-100k --model lightgcn --out $(DEMO_SMALL_RUN) --epochs $(DEMO_EPOCHS) --seed 2024 \
		--optim.lr=5e-3 --sparsity.density=$(DEMO_DENSITY) --sparsity.updater=small-dense --log-level=warning
	@echo "== 3/4 export the three as verified artifacts"
	$(BIN)/python -m export $(DEMO_RUN) --out $(DEMO_ARTIFACT) --overwrite --no-memory --quiet
	$(BIN)/python -m export $(DEMO_SMALL_RUN) --out $(DEMO_SMALL_ARTIFACT) --overwrite --no-memory --quiet
	$(BIN)/python -m export $(DEMO_SPARSE_RUN) --out $(DEMO_SPARSE_ARTIFACT) --overwrite --no-memory --quiet \
		--index $(DEMO_SPARSE_INDEX)
	@echo "== 4/4 serve the dense one over HTTP, query, stop; the three side by side (make compare adds latency)"
	$(BIN)/python -m benchmarks.serving.demo --artifact $(DEMO_ARTIFACT)
	$(BIN)/python -m sparserec compare $(DEMO_ARTIFACTS) --out reports/demo --no-latency --quiet
	@cat reports/demo/compare.md

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

.PHONY: lint
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

serve: setup
	$(BIN)/python -m serving --artifact $(ARTIFACT) --port $(PORT) --host $(BIND_HOST)

# locust against any running server (python -m serving, bentoml serve, a container): results/loadtest-HOST_PORT.*
.PHONY: loadtest-host
loadtest-host: setup
	@test -n "$(URL)" || { echo "make loadtest-host URL=http://HOST:PORT (the running server's base URL)"; exit 2; }
	$(BIN)/python -m loadtest run --host $(URL) --users $(USERS) --spawn-rate 10 --duration $(DURATION) --max-fail-ratio 0

# the artifact as a BentoML model (versioned by its manifest sha256) and the Bento serving it, in the
# user's BentoML store (BENTOML_HOME): then `bentoml serve sparserec:latest`, `bentoml containerize` (docs/deploy.md)
.PHONY: bento
bento: setup
	$(BIN)/python -m sparserec bento --artifact $(ARTIFACT)

# any artifacts side by side (default: the demo's three): served bytes, quality, latency, the front
# (docs/compare.md); COMPARE_FLAGS adds e.g. --http, --locust 20, --data ml-100k, --allow-noisy
ARTS ?= $(DEMO_ARTIFACTS)
OUT ?= reports/compare
COMPARE_FLAGS ?=
compare: setup
	$(BIN)/python -m sparserec compare $(ARTS) --out $(OUT) $(COMPARE_FLAGS)

bench-quality: setup
	$(BIN)/python -m benchmarks.quality.grid --set run.threads=1

# issue 10: LightGCN served sparse, (a) standard / (b) masked at serving / (c) model.mask_output=true
bench-mask-output: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.export.mask_output

# the trained mask profiles the 1M-item benchmark draws its sparse masks from (from bench-mask-output's runs)
bench-masks: bench-mask-output
	$(BIN)/python -m benchmarks.inference.trained_masks

.PHONY: bench-ddp
bench-ddp: setup  # data-parallel training samples/s, 1 and 2 ranks (torchrun, gloo): results/ddp.{json,md}
	$(BIN)/python -m benchmarks.training.ddp $(BENCH_FLAGS)

# Training speed (issue 9): dense and DSL LightGCN epochs on Gowalla, side by side
.PHONY: bench-train
BENCH_TRAIN_DATA ?= gowalla
BENCH_TRAIN_THREADS ?= 2
bench-train: setup
	$(BIN)/python -m benchmarks.training.speed --data $(BENCH_TRAIN_DATA) --threads $(BENCH_TRAIN_THREADS) $(BENCH_FLAGS)

# Gowalla: resumable (run it again after a stop); one thread per run on the shared 2-core machines
bench-quality-gowalla: setup
	$(BIN)/python -m benchmarks.quality.gowalla --set run.threads=1

# the table from what has finished (trains nothing; the same --set flags as the grid, which a run folder must match)
bench-quality-gowalla-report: setup
	$(BIN)/python -m benchmarks.quality.gowalla --set run.threads=1 --report-only

sweep-mf-gowalla: setup
	$(BIN)/python -m benchmarks.quality.gowalla --sweep-mf --set run.threads=1

# The Gowalla front (benchmarks/README.md): small-dense widths, DSL, fp32/fp16, sq8/pq through sparserec compare, at
# Gowalla's catalogue and tiled to 1M items -> results/pareto-gowalla.{json,md,png}. Resumable: trains what has no
# metrics.json in PARETO_RUNS; -report trains nothing. BENCH_FLAGS adds e.g. --no-latency, --allow-noisy, --no-1m
.PHONY: pareto-gowalla pareto-gowalla-report
PARETO_RUNS ?= runs/pareto-gowalla
pareto-gowalla: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.pareto_gowalla --runs $(PARETO_RUNS) $(BENCH_FLAGS)

pareto-gowalla-report: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.pareto_gowalla --runs $(PARETO_RUNS) --no-train $(BENCH_FLAGS)

bench-size: setup
	$(BIN)/python -m benchmarks.export.size $(BENCH_FLAGS)

# the variants we tried at 0.2, one thread each (35 min of run time on a loaded 2-core machine): results/sweeps/quality-<tag>.{json,md,png}
.PHONY: bench-quality-sweeps bench-quality-longtail
QUALITY_SWEEP = OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.quality.grid --results results/sweeps --densities 0.2 --set run.threads=1
bench-quality-sweeps: setup
	$(QUALITY_SWEEP) --models mf --updaters dsl-mixed --tag probe
	$(QUALITY_SWEEP) --models mf --updaters dsl-nested,dsl-mixed --tag a01 --set sparsity.alpha0=0.1
	$(QUALITY_SWEEP) --models mf --updaters dsl-nested,dsl-mixed --tag end05 --set sparsity.end_fraction=0.5
	$(QUALITY_SWEEP) --models mf --updaters dsl-mixed --tag mixed-e025 --set sparsity.row_prior_exponent=0.25
	$(QUALITY_SWEEP) --models mf --updaters dsl --tag grow-batch-mf --set sparsity.grow_from=batch
	$(QUALITY_SWEEP) --models lightgcn --updaters dsl --tag grow-batch --set sparsity.grow_from=batch
	$(QUALITY_SWEEP) --models lightgcn --updaters dsl-mixed --epochs 300 --tag e300
	$(QUALITY_SWEEP) --models lightgcn --updaters small-dense --epochs 300 --tag e300-sd

# SparseRec's NMF mask initialisation (sparsity.mask_init=nmf) with dsl at the grid's three densities, ML-100K: results/sweeps/quality-nmf.*
.PHONY: bench-quality-nmf
bench-quality-nmf: setup
	$(QUALITY_SWEEP) --models mf,lightgcn --updaters dsl --densities 0.2,0.1,0.05 --tag nmf --set sparsity.mask_init=nmf
	$(QUALITY_SWEEP) --models mf,lightgcn --updaters dsl --densities 0.1 --seed 2025 --tag nmf-s2025 --set sparsity.mask_init=nmf
	$(QUALITY_SWEEP) --models mf,lightgcn --updaters small-dense --densities 0.1 --seed 2025 --tag small-dense-s2025

# the quality grid on the long-tail synthetic preset, 18 runs, one thread (20 min of run time on a loaded 2-core machine): results/quality-longtail.{json,md,png}
bench-quality-longtail: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.quality.grid --data synthetic-longtail --tag longtail --models mf,lightgcn \
		--densities 1,0.2,0.05 --updaters dsl,dsl-nested,dsl-mixed,small-dense --set run.threads=1

# the popularity row of the README, and our counts against RecBole 1.2.1's (results/popularity.*)
bench-pop: setup
	$(BIN)/python -m benchmarks.quality.popularity

# the 1M x 1M synthetic load time and peak memory quoted under Data (results/data-scale.*)
bench-data: setup
	$(BIN)/python -m benchmarks.training.data_scale $(BENCH_FLAGS)

# reading a 20M-row CSV, plain against fully quoted (results/data-read.*)
.PHONY: bench-read
bench-read: setup
	$(BIN)/python -m benchmarks.training.data_read $(BENCH_FLAGS)

# export fidelity, ONNX error and index recall: 3 ML-100K runs x 5 exports (results/fidelity.*)
bench-fidelity: setup
	$(BIN)/python -m benchmarks.export.fidelity

bench-serve: setup synthetic-1m
	$(BIN)/python -m benchmarks.serving.latency --artifact $(DEMO_ARTIFACT) $(BENCH_FLAGS)
	$(BIN)/python -m benchmarks.serving.latency --out results/serve-sparse --k 20 --requests 300 \
		--compare $(SYNTH_1M)-sparse,$(SYNTH_1M)-small-dense,$(SYNTH_1M)-dense $(BENCH_FLAGS)

# issue 10: 1M-item synthetic artifacts (dense, equal-budget small-dense, sparse with trained-like prefix masks)
SYNTH_1M := artifacts/synthetic-1m
synthetic-1m: $(SYNTH_1M)-sparse/manifest.json
$(SYNTH_1M)-sparse/manifest.json: benchmarks/inference/trained_masks.json benchmarks/inference/synthetic_artifacts.py | setup
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.inference.synthetic_artifacts --out $(SYNTH_1M)

bench: setup
	$(BIN)/python -m benchmarks.inference.bench $(BENCH_FLAGS)

# issue 10: the sparse index beside dense and small-dense flat indexes, 1M items, one thread
bench-sparse: setup
	$(BIN)/python -m benchmarks.inference.bench --sparse-only $(BENCH_FLAGS)

# sparse (random mask, dim 64) against the equal-budget small-dense model, 1M items, the three
# backends the README's table quotes, one thread (12 min on a loaded 2-core machine): results/bench-small-dense.{json,md,png}
.PHONY: bench-small-dense
bench-small-dense: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.inference.bench --datasets 1m --tables dense,sparse,small-dense \
		--backends torch-dense,scipy-csr,faiss-flat --threads 1 --name bench-small-dense $(BENCH_FLAGS)

bench-reduced: setup
	$(BIN)/python -m benchmarks.inference.bench --reduced $(BENCH_FLAGS)

loadtest: setup
	$(BIN)/python -m loadtest run --compare $(DEMO_ARTIFACT) $(DEMO_SPARSE_ARTIFACT) --users 20 --spawn-rate 10 --duration 30s
	$(BIN)/python -m loadtest saturation --artifact $(DEMO_ARTIFACT) --users $(SATURATION_USERS) --duration 60s
	$(BIN)/python -m loadtest saturation --artifact $(DEMO_ARTIFACT) --users 40 --duration 60s --batch-route always

clean:
	rm -rf runs artifacts .pytest_cache

# Replicas and shards (issue 12): a 1M-item synthetic MF artifact (2000 users, 1 epoch), the memory
# of 1, 2 and 4 server workers on it (results/replicas.*), its 2-shard split
ARTIFACT_1M := artifacts/synthetic-1m
.PHONY: artifact-1m bench-replicas
artifact-1m: $(ARTIFACT_1M)/manifest.json
$(ARTIFACT_1M)/manifest.json: $(STAMP)
	$(BIN)/python -m train --data synthetic --model mf --out runs/synthetic-1m --epochs 1 --seed 2024 \
		--data.n_users=2000 --data.n_items=1000000 --data.interactions_per_user=20 --run.threads=1 --log-level=warning
	$(BIN)/python -m export runs/synthetic-1m --out $(ARTIFACT_1M) --index flat --sample-users 64 --overwrite --no-memory --quiet
# the per-process baseline of bench-replicas: the same users and model, 1,000 items
ARTIFACT_1K := artifacts/synthetic-1k
.PHONY: artifact-1k
artifact-1k: $(ARTIFACT_1K)/manifest.json
$(ARTIFACT_1K)/manifest.json: $(STAMP)
	$(BIN)/python -m train --data synthetic --model mf --out runs/synthetic-1k --epochs 1 --seed 2024 \
		--data.n_users=2000 --data.n_items=1000 --data.interactions_per_user=20 --run.threads=1 --log-level=warning
	$(BIN)/python -m export runs/synthetic-1k --out $(ARTIFACT_1K) --index flat --sample-users 64 --overwrite --no-memory --quiet
bench-replicas: $(ARTIFACT_1M)/manifest.json $(ARTIFACT_1K)/manifest.json  # results/replicas.{json,md}, one thread a worker
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.serving.replicas --artifact $(ARTIFACT_1M) --baseline $(ARTIFACT_1K)
.PHONY: loadtest-shards
loadtest-shards: $(ARTIFACT_1M)/manifest.json  # locust (master + 2 workers) on sharded vs unsharded: results/loadtest-shards.*
	$(BIN)/python -m benchmarks.serving.shards --artifact $(ARTIFACT_1M) --shards 2 --users 10 --duration 30s $(BENCH_FLAGS)
.PHONY: loadtest-replicas
loadtest-replicas: $(ARTIFACT_1M)/manifest.json  # locust on 1 vs 2 server workers: results/loadtest-replicas-{1,2}w.*
	$(BIN)/python -m loadtest run --artifact $(ARTIFACT_1M) --server-workers 1 --server-threads 1 --users 10 --duration 30s --name replicas-1w
	$(BIN)/python -m loadtest run --artifact $(ARTIFACT_1M) --server-workers 2 --server-threads 1 --users 10 --duration 30s --name replicas-2w

# Fold-in quality (benchmarks/fold_in.py): per pair a normal run and one with FOLD_IN_HOLDOUT_<pair> test
# users hidden from training, each trained once (one thread, one at a time) and exported, then the hidden
# users folded in from their train items beside the same users trained and popularity.
FOLD_IN_PAIRS ?= ml100k-lightgcn gowalla-mf ml100k-mf
FOLD_IN_ARGS_ml100k-lightgcn := --data ml-100k --model lightgcn --epochs 80 --seed 2024 --optim.lr=5e-3
FOLD_IN_HOLDOUT_ml100k-lightgcn := 100
FOLD_IN_NAME_ml100k-lightgcn := ML-100K LightGCN
FOLD_IN_ARGS_gowalla-mf := --data gowalla --model mf --epochs 150 --seed 2024 --optim.lr=1e-3 --model.init_std=0.01 \
	--optim.weight_decay=1e-4 --run.eval_every=5 --run.patience=3 --run.min_epochs=10
FOLD_IN_HOLDOUT_gowalla-mf := 1000
FOLD_IN_NAME_gowalla-mf := Gowalla MF
FOLD_IN_ARGS_ml100k-mf := --data ml-100k --model mf --epochs 150 --seed 2024 --optim.lr=1e-3 --model.init_std=0.01 \
	--optim.weight_decay=1e-4 --run.eval_every=5 --run.patience=3 --run.min_epochs=10
FOLD_IN_HOLDOUT_ml100k-mf := 100
FOLD_IN_NAME_ml100k-mf := ML-100K MF
fold_in_run = runs/fold-in/$(1)-$(2)
fold_in_art = artifacts/fold-in/$(1)-$(2)

.PHONY: fold-in-artifacts bench-fold-in bench-fold-in-latency
fold-in-artifacts: setup
	@set -e; $(foreach pair,$(FOLD_IN_PAIRS),$(foreach variant,trained holdout, \
		if [ ! -f $(call fold_in_art,$(pair),$(variant))/manifest.json ]; then \
			echo "== train $(pair) $(variant)"; \
			OMP_NUM_THREADS=1 $(BIN)/python -m train $(FOLD_IN_ARGS_$(pair)) --run.threads=1 --log-level=warning \
				--out $(call fold_in_run,$(pair),$(variant)) \
				$(if $(filter holdout,$(variant)),--data.holdout_users=$(FOLD_IN_HOLDOUT_$(pair))); \
			$(BIN)/python -m export $(call fold_in_run,$(pair),$(variant)) --out $(call fold_in_art,$(pair),$(variant)) \
				--overwrite --no-memory --quiet; \
		fi;))

# --update: pairs already in results/fold-in.json and not measured now are kept, each with its own
# command and commit (`make bench-fold-in FOLD_IN_PAIRS=gowalla-mf` redoes one pair)
bench-fold-in: fold-in-artifacts
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.fold_in --out results/fold-in --update \
		$(foreach pair,$(FOLD_IN_PAIRS),--pair "$(FOLD_IN_NAME_$(pair))" $(call fold_in_run,$(pair),trained) \
		$(call fold_in_art,$(pair),trained) $(call fold_in_run,$(pair),holdout) $(call fold_in_art,$(pair),holdout))

# Fold-in latency (benchmarks/serving/fold_in_latency.py): on the pair's holdout artifact, a folded-in user's
# query (the hidden users' train histories) beside a known user's, in-process, batch 1. A timing: run it on a
# quiet machine (it refuses to write into results/ otherwise).
FOLD_IN_LATENCY_PAIR ?= gowalla-mf
bench-fold-in-latency:
	$(MAKE) fold-in-artifacts FOLD_IN_PAIRS=$(FOLD_IN_LATENCY_PAIR)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m benchmarks.serving.fold_in_latency \
		--artifact $(call fold_in_art,$(FOLD_IN_LATENCY_PAIR),holdout) \
		--trained-run $(call fold_in_run,$(FOLD_IN_LATENCY_PAIR),trained) \
		--holdout-run $(call fold_in_run,$(FOLD_IN_LATENCY_PAIR),holdout) --threads 1 --out results/fold-in-latency $(BENCH_FLAGS)
