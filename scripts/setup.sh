#!/usr/bin/env bash
# Make (or refresh) the project's virtual environment and fetch FashionMNIST where apt can.
# Idempotent: a second run with an unchanged pyproject.toml installs nothing.
#   STABCHECK_VENV  where the virtual environment lives (default: .venv in the checkout)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${STABCHECK_VENV:-$root/.venv}
python=$(command -v python3.11 || command -v python3)

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.stabcheck-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16) $root"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing stabcheck[test,report] (torch==2.14.1 takes a few minutes the first time)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -e "$root[test,report]"
  echo "$want" > "$stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$fmnist" ] && [ -z "${STABCHECK_DATA_DIR:-}" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "[setup] warning: apt could not install dataset-fashion-mnist; set STABCHECK_DATA_DIR to a torchvision root"
  else
    echo "[setup] FashionMNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set STABCHECK_DATA_DIR"
  fi
fi
