#!/usr/bin/env bash
# OpenRLHF integration: set up .venv-openrlhf (idempotent) and run its tests.
#
# Run from the repository root: `bash .ci/openrlhf.sh`. Exits non-zero when a test fails.
#
# OpenRLHF cannot be installed whole on a CPU machine (flash-attn and vllm are hard dependencies
# that need CUDA), so it is installed with --no-deps, plus the light requirements of the modules
# that the tests import (docs/integrations/openrlhf.md says which modules run for real).
# torch==2.13.0 is on the same pip command line as every package that depends on torch, so pip
# never pulls another (multi-GB CUDA) torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

VENV=".venv-openrlhf"
OPENRLHF_VERSION="0.11.2"
# What openrlhf 0.11.2 pins (transformers, ray) or needs at import time (the rest).
REQUIREMENTS=(
    "torch==2.13.0"
    "transformers==5.15.0"
    "ray==2.55.0"
    "peft"
    "accelerate"
    "torchdata"
    "aiohttp"
    "sympy"
    "pylatexenc"
    "einops"
    "tokenizers"
)
STAMP="$VENV/.dra-openrlhf-setup"
STAMP_TEXT="openrlhf==$OPENRLHF_VERSION ${REQUIREMENTS[*]}"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$STAMP_TEXT" ]]; then
    start=$SECONDS
    venv_install "$VENV" "${REQUIREMENTS[@]}" -e ".[test]"
    venv_install "$VENV" --no-deps "openrlhf==$OPENRLHF_VERSION"
    echo "$STAMP_TEXT" >"$STAMP"
    echo "openrlhf venv set up in $((SECONDS - start)) s"
else
    # The editable install of this package is kept; refresh it only if its metadata is gone.
    "$VENV/bin/python" -c "import dra_kernels" 2>/dev/null ||
        venv_install "$VENV" --no-deps -e .
fi

exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/integrations/test_openrlhf.py ${JUNIT_XML:+--junitxml="$JUNIT_XML"}
