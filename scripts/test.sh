#!/usr/bin/env bash
# The test suite: unit tests of the library (tests/) and the paper's claims at the default scale (claims/).
# Extra arguments go to pytest (for example: scripts/test.sh -n 2, or scripts/test.sh tests/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
exec "${STABCHECK_VENV:-$root/.venv}/bin/python" -m pytest "$@"
