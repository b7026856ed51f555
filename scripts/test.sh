#!/usr/bin/env bash
# Sets up every environment the tests need and runs all of them: lint, the docs build, the core
# suite (Triton kernels through the CPU interpreter when there is no GPU), then each trainer
# integration in its own virtual environment, and the kernel tests again under the oldest Triton we
# support (3.2). Prints one closing line with the totals.
set -uo pipefail
cd "$(dirname "$0")/.."

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
  [ -x .venv/bin/python ] || "$PY" -m venv .venv || return 1
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # torch is pinned on the same command line so pip never resolves another build.
  .venv/bin/python -m pip install -q torch==2.13.0 -e ".[triton,cli,test,docs]"
}

lint() {
  .venv/bin/ruff check . && .venv/bin/ruff format --check .
}

docs() {
  .venv/bin/mkdocs build --strict --quiet --site-dir "$REPORTS/site"
}

core_tests() {
  HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests benchmarks dra_kernels/api.py dra_kernels/distributed.py docs README.md \
    --ignore=tests/integrations -p no:cacheprovider --junitxml="$REPORTS/core.xml" -q
}

step "set up .venv" setup_main
step "ruff" lint
step "mkdocs --strict" docs
step "core tests" core_tests
for integration in trl verl openrlhf triton32; do
  if [ -f ".ci/$integration.sh" ]; then
    step "$integration tests" env JUNIT_XML="$REPORTS/$integration.xml" bash ".ci/$integration.sh"
  fi
done

# One closing line over every pytest run (each wrote a JUnit report).
"$PY" - "$REPORTS" "${#failed[@]}" <<'PYEOF'
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
sys.exit(1 if failed or int(sys.argv[2]) or totals["tests"] == 0 else 0)
PYEOF
status=$?
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
fi
rm -rf "$REPORTS"
exit $status
