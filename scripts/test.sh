#!/usr/bin/env bash
# Sets up every environment the tests need and runs the tests: lint, the docs build, the core suite
# (Triton kernels through the CPU interpreter when there is no GPU), then each trainer integration in
# its own virtual environment, and the kernel tests again under the oldest Triton we support (3.2).
# Prints one closing line with the totals.
#
# Usage: bash scripts/test.sh [SUITE...]
#   SUITE: lint, docs, core, trl, verl, openrlhf, swift, triton32; none given: all of them, in that
#   order.
#   lint, docs and core run in .venv (set up first); each other suite sets up its own
#   .venv-SUITE through .ci/SUITE.sh. Example: `bash scripts/test.sh trl` runs the TRL suite alone.
#
# A full run on a fresh clone took 18 minutes with a warm package cache and leaves 4.6 GB of
# virtual environments (README.md, "Try it"); uv builds them from one cache of hard-linked packages
# (.ci/lib.sh). Installer output is shown only when an install fails.
set -uo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

ALL_SUITES=(lint docs core trl verl openrlhf swift triton32)
if [ $# -eq 0 ]; then
  suites=("${ALL_SUITES[@]}")
else
  suites=("$@")
  for suite in "${suites[@]}"; do
    if [[ " ${ALL_SUITES[*]} " != *" $suite "* ]]; then
      echo "unknown suite '$suite'; valid: ${ALL_SUITES[*]}" >&2
      exit 2
    fi
  done
fi
selected() { [[ " ${suites[*]} " == *" $1 "* ]]; }

PY=${PYTHON:-python3}
REPORTS=$(mktemp -d)
failed=()

step() {  # step NAME COMMAND...: run, remember failures, keep going
  local name=$1; shift
  echo "::: $name"
  local start=$SECONDS
  if "$@"; then
    echo "::: $name ok ($((SECONDS - start)) s)"
  else
    echo "::: $name FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

setup_main() {
  # torch is pinned on the same command line so the resolver never picks another build.
  venv_install .venv torch==2.13.0 -e ".[triton,cli,test,docs,submodlib]"
}

lint() {
  .venv/bin/ruff check --quiet . && .venv/bin/ruff format --check --quiet .
}

docs() {
  # NO_MKDOCS_2_WARNING: mkdocs-material's end-of-life banner, printed on every build otherwise.
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$REPORTS/site"
}

core_tests() {
  # --benchmark-quiet: the benchmarks run (and are checked) as usual, without their timing tables,
  # which are noise on a shared CI machine; run `pytest benchmarks` to read them.
  HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests benchmarks dra_kernels/api.py dra_kernels/distributed.py docs README.md \
    --ignore=tests/integrations -p no:cacheprovider --benchmark-quiet --junitxml="$REPORTS/core.xml" -q
}

if selected lint || selected docs || selected core; then
  step "set up .venv" setup_main
fi
selected lint && step "ruff" lint
selected docs && step "mkdocs --strict" docs
selected core && step "core tests" core_tests
for integration in trl verl openrlhf swift triton32; do
  if selected "$integration"; then
    step "$integration tests" env JUNIT_XML="$REPORTS/$integration.xml" bash ".ci/$integration.sh"
  fi
done

# One closing line over every pytest run (each wrote a JUnit report); no test at all is a failure
# when a pytest suite was asked for.
pytest_suites=0
for suite in "${suites[@]}"; do
  [[ $suite == lint || $suite == docs ]] || pytest_suites=$((pytest_suites + 1))
done
"$PY" - "$REPORTS" "${#failed[@]}" "$pytest_suites" <<'PYEOF'
import glob, sys, xml.etree.ElementTree as ET
totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    root = ET.parse(path).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"all suites: {passed} passed, {failed} failed, {totals['skipped']} skipped")
sys.exit(1 if failed or int(sys.argv[2]) or (int(sys.argv[3]) and totals["tests"] == 0) else 0)
PYEOF
status=$?
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
fi
rm -rf "$REPORTS"
exit $status
