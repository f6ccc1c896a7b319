#!/usr/bin/env bash
# GPU check in one prepared script (under 5 minutes): correctness against a float32 CPU run,
# then preset timings at 512² and 2048² and a 10,000² scene-mode run, printed as one table.
# Needs a Python with torch, torchvision and numpy (PYTHON, else the project's .venv, else
# python3); GDAL is optional (without it the 10,000² run works on arrays). Extra arguments go
# to bench/bench_gpu.py (e.g. --device cpu --quick to try it on a CPU).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
"$python" -c "import torch, torchvision, numpy" || {
  echo "gpu.sh: $python cannot import torch, torchvision and numpy; set PYTHON to one that can." >&2
  exit 1
}
# The repository is the package: expose it under its import name without installing it.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
ln -s "$root" "$site/metric_change_detection"
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" "$root/bench/bench_gpu.py" "$@"
