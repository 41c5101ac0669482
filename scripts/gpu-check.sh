#!/usr/bin/env bash
# The GPU path in one go: determinism, 1M-step ACKTR throughput on Breakout, the Nature-CNN
# update-cost benchmarks and eigh vs Cholesky, then runs/gpu-check/gpu-check.{json,md}.
#   scripts/gpu-check.sh                      # on a CUDA machine, well under 10 minutes
#   scripts/gpu-check.sh --device cpu --quick # the CPU smoke test (tests/test_gpu_check.py)
# Options: --device cuda|cpu  --quick  --out DIR  --steps N   (details: scripts/gpu_check.py)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-$repo/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
  echo "gpu-check: error: $python not found; run \`make install\` first (or set PYTHON)" >&2
  exit 2
fi
cd "$repo"
exec "$python" "$here/gpu_check.py" "$@"
