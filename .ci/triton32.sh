#!/usr/bin/env bash
# The oldest Triton we support (3.2, the floor of the `triton` extra): the kernel tests through its
# CPU interpreter, in their own virtual environment (.venv-triton32), next to the main suite's
# newest Triton. Catches language features or interpreter behaviour that only newer releases have;
# tests/test_resources.py also compiles every kernel for sm_90 with this release (no GPU needed).
#
# NOTE: numpy < 2.3: Triton 3.2's interpreter converts 1-element arrays to Python ints, which
# numpy 2.3 refuses (an interpreter limitation, not one of the compiled kernels).
#
# Usage (from the repository root): bash .ci/triton32.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

VENV=.venv-triton32
PY="$VENV/bin/python"

venv_install "$VENV" torch==2.13.0 "triton==3.2.0" \
    "numpy<2.3" -e '.[test]'
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "| triton", triton.__version__)'

exec "$PY" -m pytest -p no:cacheprovider -q ${JUNIT_XML:+--junitxml="$JUNIT_XML"} \
    tests/test_triton.py tests/test_launch.py tests/test_resources.py tests/test_facility_kernel.py
