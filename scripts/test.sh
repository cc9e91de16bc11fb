#!/usr/bin/env bash
# Set up .venv (see scripts/setup.sh) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -x`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$GEOGEN_ROOT"
python -m pytest "$@"
