# Sourced by the project's scripts: makes sure a project-local .venv with torch==2.11.0 exists (libtorch for
# tch 0.24 comes from that wheel) and exports what torch-sys needs to find it.
set -euo pipefail
EPCHECK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="2.11.0"
PY="${PYTHON:-python3}"
if ! "$EPCHECK_ROOT/.venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    echo "[epcheck] bootstrapping .venv with torch==$TORCH_VERSION (one-off, ~2 min, ~4.6 GB)" >&2
    "$PY" -m venv "$EPCHECK_ROOT/.venv"
    "$EPCHECK_ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# python/epcheck_energy.py writes safetensors with the `safetensors` package (its one dependency beside torch;
# safetensors.torch.save_file needs numpy).
"$EPCHECK_ROOT/.venv/bin/python" -c "import safetensors, numpy" 2>/dev/null \
    || "$EPCHECK_ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check safetensors numpy >&2 \
    || echo "[epcheck] note: could not install safetensors; python/epcheck_energy.py dump needs it" >&2
export PATH="$EPCHECK_ROOT/.venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK="${LIBTORCH_BYPASS_VERSION_CHECK:-}"
[ -n "$LIBTORCH_BYPASS_VERSION_CHECK" ] || unset LIBTORCH_BYPASS_VERSION_CHECK
cd "$EPCHECK_ROOT"
