#!/usr/bin/env bash
# verl integration: its own virtual environment (verl's transformers / ray pins clash with other
# trainers), then tests/integrations/test_verl.py against the real verl package on CPU.
# Idempotent: a second run reuses .venv-verl and pip installs nothing new. Run from the repo root.
# A fresh install takes about 1.5-2 minutes here (about 2 GB), the tests about 2 minutes (they start
# verl's main_ppo driver, a local Ray instance and the embedder's Ray actor several times).
set -euo pipefail

cd "$(dirname "$0")/.."
source .ci/lib.sh
VENV=.venv-verl

# NOTE: torch is pinned on the same command line as verl so that the resolver keeps 2.13.0
# (verl's base requirements do not pin torch, but accelerate / peft / tensordict need one);
# a newer torch would be a multi-GB CUDA build. The verl-core extra brings what the v1 trainer
# imports (TransferQueue, cachetools...), without the GPU-only extras (vllm, sglang, fsdp).
start=$(date +%s)
venv_install "$VENV" \
    "torch==2.13.0" "verl[verl-core]>=0.9.0,<0.10" -e ".[test]"
echo "verl.sh: install step took $(($(date +%s) - start)) s"

"$VENV/bin/python" -c "import torch, verl; print('verl', verl.__version__, 'torch', torch.__version__)"
# asyncio_default_fixture_loop_scope: verl brings pytest-asyncio, which warns at start-up while
# it is unset (no test here is asynchronous; "function" is its future default).
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -o asyncio_default_fixture_loop_scope=function \
    tests/integrations/test_verl.py ${JUNIT_XML:+--junitxml="$JUNIT_XML"}
