#!/usr/bin/env bash
# The paper-scale remainder a CPU does not reach, on one CUDA GPU, in a time budget: exactly the cases
# matching scripts/gpu_only.regex, which scripts/paper_cpu.sh leaves out (README.md, "Paper scale").
#
#   scripts/gpu_check.sh OUT_DIR [--dry-run] [extra pytest arguments]
#
# OUT_DIR gets: env.txt (GPU, versions, data sources), setup.log, pytest.log, report/ (claims.json,
# claims.md, benchmark.json, figures). Minima are cached in $STABCHECK_CACHE_DIR (default
# /tmp/stabcheck-gpu-minima), so a rerun on the same machine resumes: it trains only what is missing.
# Merge the report with the CPU runs' into one: python -m claims.paper_runs merge OUT RUN... (README).
#
# The remainder: GD at η ≤ 0.1 on the FNN and the VGG (C5's table, C5's edge span, C6's B = 100 vs GD
# and test accuracy, C10 and C12's power iteration on a GD minimum), C8 over each family's
# whole grid, and the ResNet-14 of C13 (with and without BatchNorm) and its C12 cross-check. pytest runs
# with --budget $STABCHECK_GPU_BUDGET seconds (default 540): whole claims run cheapest first, the run
# stops cleanly when the budget is spent, and the report holds every finished case and lists the others.
# $STABCHECK_SEEDS_PER_SETTING (unset: every seed) trims the seeds. A hard `timeout` 120 s later sends
# SIGINT should a case not return (the report is still written).
#
# Python: $STABCHECK_PYTHON if set; else scripts/setup.sh's virtual environment; if that install fails
# (no package registry, as on a lent GPU box) a python3 that already has torch with CUDA, scipy,
# filelock, pytest and pytest-benchmark. Data: FashionMNIST from $STABCHECK_DATA_DIR (a folder with the
# four *-idx*-ubyte[.gz] files, or a torchvision root) or Debian's dataset-fashion-mnist.
#
# --dry-run: setup, environment and data checks, then the same pytest selection with --collect-only on
# the CPU (every case collected, nothing trained): checks the script on a machine without a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [--dry-run] [pytest args...]" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
budget=${STABCHECK_GPU_BUDGET:-540}
export STABCHECK_CACHE_DIR=${STABCHECK_CACHE_DIR:-/tmp/stabcheck-gpu-minima}
export PYTHONUNBUFFERED=1
cd "$root"

needs='import torch, scipy, filelock, pytest, pytest_benchmark'
if [ -n "${STABCHECK_PYTHON:-}" ]; then
  python=$STABCHECK_PYTHON
  echo "[gpu_check] STABCHECK_PYTHON=$python: no install" | tee "$out/setup.log"
elif "$root/scripts/setup.sh" >"$out/setup.log" 2>&1; then
  python=${STABCHECK_VENV:-$root/.venv}/bin/python
elif command -v python3 >/dev/null && python3 -c "$needs; assert torch.cuda.is_available()" 2>>"$out/setup.log"; then
  python=python3
  echo "[gpu_check] scripts/setup.sh failed (see above); using python3 with its own torch" | tee -a "$out/setup.log"
else
  echo "[gpu_check] scripts/setup.sh failed and no python3 with torch+CUDA was found; see $out/setup.log" >&2
  exit 1
fi

device=cuda
[ $dry_run = 1 ] && device=cpu
{
  echo "date: $(date -u +%FT%TZ)   commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "python: $python   budget: ${budget}s   seeds per setting: ${STABCHECK_SEEDS_PER_SETTING:-all}   cache: $STABCHECK_CACHE_DIR"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else echo "nvidia-smi: not found"; fi
  "$python" - "$device" <<'EOF'
import sys, torch
from stabcheck.experiments.data import load_fashion_mnist
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: run with --dry-run on a CPU machine")
print("FashionMNIST:", load_fashion_mnist(1000, with_test=False, download=False).source)
EOF
} 2>&1 | tee "$out/env.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "[gpu_check] environment check failed: $out/env.txt" >&2; exit 1; }

mapfile -t cases < <("$python" -m pytest claims/ --scale paper --collect-only -q -p no:cacheprovider \
                     | grep '^claims/' | grep -Ef "$root/scripts/gpu_only.regex")
echo "[gpu_check] ${#cases[@]} paper-scale cases in the GPU remainder (scripts/gpu_only.regex)"
args=(-m pytest "${cases[@]}" --scale paper --device "$device" --cache-dir "$STABCHECK_CACHE_DIR"
      --report-dir "$out/report" --budget "${budget}s" -p no:cacheprovider -rA "$@")
if [ $dry_run = 1 ]; then
  echo "[gpu_check] dry run: $python ${args[*]} --collect-only -q"
  set -o pipefail
  "$python" "${args[@]}" --collect-only -q 2>&1 | tee "$out/pytest.log"
  exit
fi
echo "[gpu_check] $python ${args[*]}  (budget ${budget}s)"
set +e
timeout -s INT -k 60 "$((budget + 120))" "$python" "${args[@]}" 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 124 ] && echo "[gpu_check] a case did not return 120 s after the budget: pytest interrupted; the report holds the finished cases" | tee -a "$out/pytest.log"
echo "[gpu_check] pytest exit status $status; results in $out"
exit "$status"
