#!/usr/bin/env bash
# The main job: verify the paper claim by claim at the default scale and write the report
# (reports/run-<time>/claims.json, claims.md, figures). Extra arguments go to pytest,
# for example: scripts/verify.sh --scale paper --device cuda, or on a CPU in steps:
# scripts/verify.sh --scale paper --budget 2h (rerun to resume: trained minima stay cached)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
exec "${STABCHECK_VENV:-$root/.venv}/bin/python" -m pytest claims/ "$@"
