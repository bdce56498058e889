#!/usr/bin/env bash
# GPU check (issue 17 item 4), for a machine with an NVIDIA GPU and the CUDA set installed
# (CLEAN_ROS_CUDA=cu126 make setup). In order, each step's output in <out>/<step>.log:
#   1_compress_smoke   the smoke compress (config/compress/smoke.yaml) on CUDA with AMP, ONNX export on; its report
#                      has the student's GPU latency (efficiency stage, on training.device)
#   2_parity           torch-CUDA / ONNX Runtime-CUDA / TensorRT fp32 + fp16 against torch-CPU on that bundle
#                      (bench/gpu_check.py parity; a backend that does not install here is listed as skipped)
#   3_latency_smoke    per-stage latency of every backend on the GPU, smoke bundle (bench/bench_backends.py)
#   4_latency_default  the same for the embedded student bundle models/default
# then inserts the logs as a dated subsection of docs/BENCH.md "GPU check" (bench/gpu_check.py record).
#
#   bench/gpu_check.sh [--out DIR] [--no-record]          (default DIR: runs/gpu_check)
#
# Without a CUDA device it stops at once: one line on stderr, exit status 2, nothing written. Exit 1 when a step
# fails (parity outside tolerance included), 0 when all pass. No test depends on a GPU.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=$ROOT/runs/gpu_check
RECORD=1
die() { echo "gpu_check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift 2 ;;
    --no-record) RECORD=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: bench/gpu_check.sh [--out DIR] [--no-record])" ;;
  esac
done

[ -x "$PY" ] || die "no Python at $PY: run make setup (CLEAN_ROS_CUDA=cu126 for the CUDA set) or set PYTHON"
reason=$("$PY" -c 'import torch
print("" if torch.cuda.is_available() else f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device")' 2>&1)
[ $? -eq 0 ] || die "cannot import torch with $PY: $(echo "$reason" | tail -n 1)"
[ -z "$reason" ] || die "$reason; run it on a GPU machine with the CUDA set (CLEAN_ROS_CUDA=cu126 make setup)"

cd "$ROOT" || die "cannot enter $ROOT"
mkdir -p "$OUT" || die "cannot create $OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
gpu=$("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}")')
echo "gpu_check: $gpu; logs in $OUT"
status=0

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, note exit status and seconds
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: $*"
  { echo "\$ $*"; "$@"; } > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
  return $rc
}

rm -rf "$OUT/smoke"
step 1_compress_smoke "$PY" training/compress.py --config config/compress/smoke.yaml --out "$OUT/smoke" \
  --no-progress --set training.device=cuda --set "training.set=[augment.gt_sampling=false,amp=true]" \
  --set export.onnx=true
bundle=$OUT/smoke/bundle
if [ ! -f "$bundle/manifest.json" ]; then
  echo "gpu_check: no smoke bundle ($bundle): parity on models/default instead"
  bundle=$ROOT/models/default
fi
step 2_parity "$PY" bench/gpu_check.py parity --bundle "$bundle" --device cuda
step 3_latency_smoke "$PY" bench/bench_backends.py --bundle "$bundle" --teacher-bundle "$OUT/no_teacher" \
  --device cuda --runs 50 --warmup 5 --threads 1
step 4_latency_default "$PY" bench/bench_backends.py --bundle models/default --teacher-bundle "$OUT/no_teacher" \
  --device cuda --runs 50 --warmup 5 --threads 1

if [ $RECORD -eq 1 ]; then
  title="$(date -u '+%Y-%m-%d %H:%M') UTC, $gpu, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  "$PY" bench/gpu_check.py record --title "$title" "$OUT"/[0-9]_*.log || status=1
fi
if [ $status -eq 0 ]; then echo "gpu_check: every step passed"; else echo "gpu_check: a step FAILED (see its log in $OUT)"; fi
exit $status
