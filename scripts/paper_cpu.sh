#!/usr/bin/env bash
# The paper at its own scale on a CPU: the paper-scale cases whose minima a 2-core machine trains in
# about two hours, run within a time budget (cheapest claims first; a second run resumes from the cache).
#
#   scripts/paper_cpu.sh [BUDGET] [pytest arguments...]      e.g.  scripts/paper_cpu.sh 2h --report-dir reports/paper-cpu
#
# Left to the GPU plan (scripts/gpu_check.sh): GD at η ≤ 0.1 (hours at ≈12 it/s on one core; C6's B = n
# pair, C10, C14, C12's GD minimum, C8 over the whole grid), GD η = 0.5 beyond two seeds (10 min each),
# C5's edge-span case (needs every η), the VGG and ResNets on CIFAR-10 (C5, C13). Measured training times
# per minimum, one core: SGD η=0.1 B=10 75-100 s, B=100 300-580 s, η=0.5 B=50 64-76 s, GD η=5 140-230 s,
# GD η=1 245-430 s, GD η=0.5 560-610 s (reports/README.md). The seeds of an SGD setting train together
# (MinimaCache.get_many: 5 seeds of B = 100 in 1473 s under load).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
budget=${1:-2h}
[ $# -gt 0 ] && shift
"$root/scripts/setup.sh"
cd "$root"
python=${STABCHECK_VENV:-$root/.venv}/bin/python
gpu_only='vgg|resnet|test_c13|test_c14|test_c08|test_edge_regime_spans|mu=|vs-B=n|lr=0\.01|lr=0\.05|lr=0\.1-B=n|fnn-lr=0\.1\]|fnn-lr=0\.5\]|lr=0\.5-B=n-seed=[234]'
mapfile -t cases < <("$python" -m pytest claims/ --scale paper --collect-only -q -p no:cacheprovider "$@" \
                     | grep '^claims/' | grep -Ev "$gpu_only")
echo "[paper_cpu] ${#cases[@]} paper-scale cases in the CPU plan, budget $budget"
exec "$python" -m pytest "${cases[@]}" --scale paper --budget "$budget" -p no:cacheprovider "$@"
