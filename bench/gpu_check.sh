#!/usr/bin/env bash
# The CUDA check on a machine with a GPU and no network, from a copy of this repository:
#
#   bash bench/gpu_check.sh [WHEELS_DIR [gpu_check.py options, e.g. --smollm2]]
#                                            # WHEELS_DIR default ./wheels (see bench/README.md)
#
# 1. installs, from WHEELS_DIR only (pip --no-index), the requirements a GPU worker needs that this
#    Python lacks or has at another version (bench/gpu_requirements.py; the image's CUDA torch stays);
# 2. runs bench/gpu_check.py: every method as a job through `jobs submit` + `jobs worker --drain`
#    on the tiny models (and SmolLM2 when it is in the model cache), then `pytest -m gpu`;
# 3. leaves the report in $OUT/report.json (default var/gpu-check) and prints its summary last.
# The default check is bounded to 8 minutes (TIMEOUT, default 480 s, on step 2; --smollm2 needs ~4 more).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-wheels}"
shift || true
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-var/gpu-check}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

missing="$("$PYTHON" bench/gpu_requirements.py --missing)"
if [ -n "$missing" ]; then
  if [ ! -d "$WHEELS" ]; then
    echo "gpu_check: missing $missing and no wheel folder $WHEELS (bench/README.md says how to prepare it)" >&2
    exit 2
  fi
  echo "gpu_check: installing from $WHEELS: $missing"
  # shellcheck disable=SC2086  # one argument per requirement
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" $missing
fi
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_check: torch sees no CUDA device"
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PY
mkdir -p "$OUT"
timeout "${TIMEOUT:-480}" "$PYTHON" bench/gpu_check.py --out "$OUT" "$@"
