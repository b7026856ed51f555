#!/usr/bin/env bash
# ms-swift integration: its own virtual environment (.venv-swift), then tests/integrations/
# test_swift.py against the real ms-swift package on CPU.
#
# Why a separate venv: ms-swift 4.6 pins trl<1.0 (TRL's tests need trl 1.16) and brings its own
# dependency set (modelscope, peft, datasets<4.8.5, tensorboard...), so every trainer framework
# gets its own environment (shared/notes/frameworks.md). ms-swift's full dependency set installs
# on this CPU machine; msgspec, which ms-swift 4.6.0 imports without declaring it, comes with the
# `swift` extra. Idempotent: a second run reuses .venv-swift and installs nothing new (uv, from the
# cache the other environments share: .ci/lib.sh). The tests take 30 s to 2 minutes with the
# machine's load (ms-swift's own argument parsing, model loading, rollouts and training of a tiny
# Qwen2, in this process and under `swift rlhf` with two processes).
#
# Supported ms-swift range: >=4.6,<4.7 (the `swift` extra in pyproject.toml); DRAGRPOTrainer
# overrides the private GRPOTrainer._compute_advantages, so each new minor is checked first.
#
# Usage (from the repository root): bash .ci/swift.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

VENV=.venv-swift
PY="$VENV/bin/python"

# NOTE: torch==2.13.0 and ms-swift==4.6.0 (the version tested) on the same command line, so the
# resolver never picks another torch (a multi-GB CUDA build).
start=$(date +%s)
venv_install "$VENV" torch==2.13.0 ms-swift==4.6.0 -e '.[swift,embed,test]'
echo "swift.sh: install step took $(($(date +%s) - start)) s"
"$PY" -c 'import torch, transformers, trl, swift; print("torch", torch.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__, "| ms-swift", swift.__version__)'

# Offline: the tests build their model and tokenizer locally (USE_HF=1: ms-swift's hub is then
# Hugging Face's, which the offline variables keep from being asked). scripts/test.sh sets
# JUNIT_XML to collect a report.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 USE_HF=1
exec "$PY" -m pytest -p no:cacheprovider -q ${JUNIT_XML:+--junitxml="$JUNIT_XML"} \
    tests/integrations/test_swift.py
