#!/usr/bin/env bash
# Set up the project's virtual environment (sourced by demo.sh and test.sh).
#
# - creates .venv (or $GEOGEN_VENV) with python3.11+ when missing;
# - installs torch==2.13.0 first when the venv has no torch: a looser requirement would
#   pull a multi-GB CUDA build, while 2.13.0 resolves to the local CPU wheel;
# - installs the project in editable mode with its dev extras, again whenever
#   pyproject.toml changes (a stamp file in the venv remembers what was installed).
set -euo pipefail

GEOGEN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GEOGEN_VENV="${GEOGEN_VENV:-$GEOGEN_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$GEOGEN_VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "geogen needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    echo "[setup] creating $GEOGEN_VENV"
    "$PYTHON" -m venv "$GEOGEN_VENV"
fi
VPY="$GEOGEN_VENV/bin/python"

if ! "$VPY" -c 'import torch' >/dev/null 2>&1; then
    echo "[setup] installing torch==2.13.0 (CPU wheel)"
    "$VPY" -m pip install --quiet torch==2.13.0
fi

stamp="$GEOGEN_VENV/.geogen-install-stamp"
want="$(cat "$GEOGEN_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing geogen and its dependencies (pip install -e .[dev])"
    "$VPY" -m pip install --quiet -e "$GEOGEN_ROOT[dev]"
    echo "$want" > "$stamp"
fi

export PATH="$GEOGEN_VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
