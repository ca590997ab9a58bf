#!/usr/bin/env bash
# The paper at its own scale on a CPU, in budgeted runs that resume: every paper-scale case except the GPU
# remainder (the cases matching scripts/gpu_only.regex, which scripts/gpu_check.sh runs).
#
#   scripts/paper_cpu.sh BUDGET [PART] [pytest arguments...]      e.g.  scripts/paper_cpu.sh 2h fnn
#
# PART selects the cases by what they train: toys (no trained net), fnn, vgg, residual (C13's
# ResidualFNN), or all (default). Each invocation runs the cases of PART that no earlier run under
# $PAPER_REPORT/runs/ has run (cheapest claims first; the run stops cleanly when BUDGET is spent),
# writes that run's report to $PAPER_REPORT/runs/run-<time>/, then merges every run there into
# $PAPER_REPORT (claims.json, claims.md, figures; python -m claims.paper_runs), keeping only the cases the
# plan collects now. So rerunning resumes,
# and the top-level report holds every case that has run. Minima live in the minima cache
# ($STABCHECK_CACHE_DIR, default ~/.cache/stabcheck/minima), outside the work tree: a new checkout
# resumes from it too. Delete a run folder to run its cases again.
#
#   PAPER_REPORT   the report root (default: reports/paper-cpu in the checkout)
#
# Budgeted runs that cover the plan on the 2-core CI CPU (one core each; timings: reports/README.md,
# "Paper scale on this CPU"): `toys` minutes; `fnn` about 4 h cold (SGD minima 1-25 min per setting,
# GD η = 0.5 10 min a seed, η = 1 and 5 3-6 min, heavy ball 2-5 min; ≈ 1 min of measuring a minimum);
# `vgg` about 2 h for SGD and GD η = 0.5, plus 0.57 s per GD η = 0.1 step (its minima take hours: train
# them first with scripts/pretrain.py --setup vgg --lr 0.1 --gd only); `residual` about 1.5 h.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
budget=${1:?usage: $0 BUDGET [toys|fnn|vgg|residual|all] [pytest arguments...]}
shift
part=all
case "${1:-}" in toys|fnn|vgg|residual|all) part=$1; shift ;; esac
nets='\[(fnn|vgg|res)'   # a case id that starts with a setup or model family trains a net
case $part in
  toys) keep() { grep -Ev "$nets"; } ;;
  fnn|vgg) keep() { grep -E "\[$part"; } ;;
  residual) keep() { grep -E '\[res'; } ;;
  all) keep() { cat; } ;;
esac
"$root/scripts/setup.sh"
cd "$root"
python=${STABCHECK_VENV:-$root/.venv}/bin/python
report=$(mkdir -p "${PAPER_REPORT:-$root/reports/paper-cpu}" && cd "${PAPER_REPORT:-$root/reports/paper-cpu}" && pwd)
mkdir -p "$report/runs"
mapfile -t earlier < <(find "$report/runs" -mindepth 2 -maxdepth 2 -name claims.json -printf '%h\n' | sort)
collected=$(mktemp)
trap 'rm -f "$collected"' EXIT
"$python" -m pytest claims/ --scale paper --collect-only -q -p no:cacheprovider | grep '^claims/' > "$collected"
mapfile -t cases < <(grep -Evf "$root/scripts/gpu_only.regex" "$collected" | keep \
                     | "$python" -m claims.paper_runs pending "${earlier[@]}")
echo "[paper_cpu] part $part: ${#cases[@]} paper-scale cases not yet run (${#earlier[@]} earlier runs), budget $budget"
status=0
if [ ${#cases[@]} -gt 0 ]; then
  run="$report/runs/run-$(date -u +%Y%m%d-%H%M%S)"
  start=$(date +%s)
  "$python" -m pytest "${cases[@]}" --scale paper --budget "$budget" --report-dir "$run" -p no:cacheprovider "$@" \
    || status=$?
  echo "[paper_cpu] run $(basename "$run"): wall time $(( $(date +%s) - start )) s, pytest exit status $status"
  [ -f "$run/claims.json" ] && earlier+=("$run")
fi
[ ${#earlier[@]} -gt 0 ] && "$python" -m claims.paper_runs merge "$report" "${earlier[@]}" --collected "$collected"
exit "$status"
