#!/usr/bin/env bash
# Gowalla grid runs on one GPU, several at once, within a fixed time (a lent GPU machine's lease).
#
#   OUT=/some/dir DEADLINE=540 PARALLEL=2 bash benchmarks/training/gpu_gowalla.sh [run-name ...]
#
# First times training on the idle GPU (`python -m benchmarks.training.speed --devices cuda`, into
# $OUT/speed), then trains the named grid runs (default: every Gowalla run not finished on the CPU
# when this was written) with `python -m benchmarks.quality.gowalla --only NAME --set run.device=cuda`, at
# most PARALLEL at once, one CPU thread each, into runs/gpu/NAME. At DEADLINE seconds after the start
# it stops what still trains (a stopped run keeps its checkpoint in runs/gpu, resumable with the same
# command while that machine lasts), then packs each run's logs and metrics (no weights) into $OUT/gpu-runs.tar.gz.
# Copy a finished run's folder into runs/bench-gowalla/ and `make bench-quality-gowalla-report`
# counts it (run.device is not part of a run's identity; the table marks it `done, GPU`).
#
# Sizing, measured on one H200 (2026-11-30, results/train-speed-cuda.md): one LightGCN process alone
# trains a Gowalla epoch in 1.2 s (3.3 ms a step, CPU-bound: Python and kernel launches; 1.9 s before
# the step stopped waiting for the GPU), so a 200-epoch run needs 4 minutes plus its 40 evaluations.
# Processes sharing the GPU time-slice it: 21 runs, 14 at once, reached only 50-60 LightGCN epochs
# (about 10 s an epoch each) and 70 MF epochs in 9 minutes, and only one run finished. In a short
# lease run few at once (PARALLEL=2 for LightGCN) so they finish.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to a folder for the results}"
PY=${PY:-python3}
DEADLINE=${DEADLINE:-540}
PARALLEL=${PARALLEL:-2}
DEVICE=${DEVICE:-cuda}
SPEED=${SPEED:-1}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MAKE_TARGET=bench-quality-gowalla
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }

RUNS=("$@")
if [ ${#RUNS[@]} -eq 0 ]; then
  # LightGCN first (the long ones), then MF
  RUNS=(lightgcn-dsl-nmf-0.1 lightgcn-dsl-nmf-0.05 lightgcn-small-dense-0.05 lightgcn-dsl-nmf-0.2
        lightgcn-small-dense-0.2 lightgcn-static-0.1 lightgcn-dsl-nmf-0.1-mask-output
        mf-small-dense-0.2 mf-dsl-nmf-0.2 mf-dsl-0.2 mf-dsl-nested-0.2 mf-dsl-mixed-0.2
        mf-static-0.1 mf-prune-finetune-0.1 mf-static-0.05 mf-prune-finetune-0.05
        mf-static-0.2 mf-prune-finetune-0.2 mf-dsl-nested-0.1 mf-dsl-mixed-0.1 mf-dsl-mixed-0.05)
fi
mkdir -p "$OUT" runs/gpu/logs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch, scipy, numpy, safetensors, yaml, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

if [ "$SPEED" = 1 ]; then
  # the idle GPU first: the training-speed benchmark's cuda section (dense vs dsl epochs)
  env -u MAKE_TARGET timeout 100 $PY -m benchmarks.training.speed --data gowalla --devices "$DEVICE" --threads 2 --results "$OUT/speed" \
    > runs/gpu/logs/bench-train.log 2>&1
  echo "bench_train: rc=$? at $(elapsed) s"; tail -n 12 runs/gpu/logs/bench-train.log
fi

one() {  # one grid run, its own driver
  local name=$1 model=${1%%-*}
  mkdir -p "runs/gpu/results-$name/sweeps"  # MF's recipe: the sweep's choice, read from --results
  cp results/sweeps/gowalla-mf-sweep.json "runs/gpu/results-$name/sweeps/"
  $PY -m benchmarks.quality.gowalla --models "$model" --only "$name" --set run.threads=1 --set "run.device=$DEVICE" \
    --runs runs/gpu --results "runs/gpu/results-$name" > "runs/gpu/logs/$name.log" 2>&1
  echo "$name: rc=$? at $(elapsed) s"
}
export -f one elapsed
export PY DEVICE T0
printf '%s\n' "${RUNS[@]}" | xargs -P "$PARALLEL" -I{} bash -c 'one {}' &
QUEUE=$!
last=0
while kill -0 $QUEUE 2>/dev/null; do
  sleep 5
  now=$(elapsed)
  if [ "$now" -ge "$DEADLINE" ]; then
    echo "deadline ($DEADLINE s): stopping what still trains"
    pkill -TERM -f "runs/gpu"; sleep 8; pkill -KILL -f "runs/gpu"; break
  fi
  if [ $((now - last)) -ge 60 ]; then
    last=$now
    line="t=${now}s"
    for r in "${RUNS[@]}"; do
      f=runs/gpu/$r/train.log
      [ -f runs/gpu/$r/metrics.json ] && { line="$line $r:done"; continue; }
      [ -f "$f" ] && line="$line $r:$(grep -c '"event": "eval"' "$f")ev"
    done
    echo "$line"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  fi
done
wait $QUEUE 2>/dev/null
echo "finished at $(elapsed) s:"
for r in "${RUNS[@]}"; do
  if [ -f "runs/gpu/$r/metrics.json" ]; then
    $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], 'test ndcg@20 %.4f recall@20 %.4f best %s/%s s/epoch %s gpu MB %s' % (m['test']['ndcg@20'], m['test']['recall@20'], m['best_epoch'], m['epochs'], m['seconds_per_epoch'], m.get('peak_gpu_mb')))" "runs/gpu/$r/metrics.json" "$r"
  else
    echo "$r: not finished"; tail -n 3 "runs/gpu/logs/$r.log" 2>/dev/null
  fi
done
tar czf "$OUT/gpu-runs.tar.gz" --exclude='*.safetensors' --exclude='interactions.npz' --exclude='*_ids.json' runs/gpu
ls -la "$OUT"
