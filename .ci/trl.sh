#!/usr/bin/env bash
# TRL integration: set up its own virtual environment (idempotent) and run the TRL tests.
#
# Why a separate venv (.venv-trl) and not the main .venv: TRL 1.16's own pins
# (transformers>=4.56.2, accelerate, datasets, pyarrow, pandas) do not clash with the main venv's
# sentence-transformers (transformers>=5,<6) today, but verl's and OpenRLHF's transformers pins do
# clash with TRL's, so every trainer framework gets its own environment (shared/notes/frameworks.md)
# and the core test suite stays free of accelerate/datasets/pyarrow.
#
# Supported TRL range: >=1.16,<1.17 (the `trl` extra in pyproject.toml). DRAGRPOTrainer overrides
# the private GRPOTrainer._calculate_rewards, and DRAAsyncGRPOTrainer the experimental rollout
# loop's _score_group, so each new TRL minor is checked before widening it.
#
# Usage (from the repository root): bash .ci/trl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

VENV=.venv-trl
PY="$VENV/bin/python"

# NOTE: torch==2.13.0 on the same command line so the resolver never picks another torch; what is
# already satisfied is skipped, so a second run is quick. The cli extra: embed, plus matplotlib for
# the plots of examples/lm_experiment.py, which tests/integrations/test_lm_experiment.py runs at CI
# size.
venv_install "$VENV" torch==2.13.0 -e '.[trl,cli,test]'
"$PY" -c 'import torch, transformers, trl; print("torch", torch.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__)'

# The one-process runs and the torchrun run (2 gloo processes) are all in tests/integrations/
# test_trl.py; test_trl_docs.py runs the example of docs/integrations/trl.md as printed;
# test_trl_async.py runs TRL's asynchronous GRPO rollout worker with DRA (vLLM generation stood
# in, see its docstring); test_lm_experiment.py runs the language-model experiment
# (docs/experiment_lm.md) with --quick; the modules' doctests run here too (the core suite has no
# TRL). scripts/test.sh sets JUNIT_XML to collect a report. Known warnings are filtered in
# pyproject.toml (filterwarnings).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" -m pytest -p no:cacheprovider -q ${JUNIT_XML:+--junitxml="$JUNIT_XML"} \
    tests/integrations/test_trl.py tests/integrations/test_trl_docs.py \
    tests/integrations/test_trl_async.py tests/integrations/test_lm_experiment.py \
    dra_kernels/integrations/trl.py dra_kernels/integrations/trl_async.py
