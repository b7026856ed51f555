# Shared by scripts/test.sh and .ci/*.sh (sourced, not run).

# quietly CMD...: run CMD (a pip install) with its output kept aside, printed only if CMD fails, so
# the test log stays readable: even with --quiet, pip prints one warning per index location of this
# machine's pip configuration that does not exist and every notice of the build backend (over 400
# lines in a full run). Returns CMD's exit status.
quietly() {
    local log status
    log=$(mktemp)
    if "$@" >"$log" 2>&1; then status=0; else status=$?; fi
    if [ "$status" -ne 0 ]; then
        echo "FAILED ($status): $*" >&2
        cat "$log" >&2
    fi
    rm -f "$log"
    return "$status"
}

# uv (PyPI's `uv`) builds every virtual environment of the suite from one cache of packages,
# hard-linked into each environment rather than copied: the five environments share one copy of
# torch and the other common packages, and an install takes seconds instead of minutes (measured
# in README.md, "Try it"). It runs from a small environment of its own, .venv-uv.
#
# uv does not read pip's configuration, so the wheel folders (find-links) and the constraints file
# this machine's pip is configured with are passed on (on a machine whose pip has a local CPU
# build of torch, `torch==2.13.0` must resolve to it, as it does for pip).
#
# venv_install VENV ARGS...: create VENV (with pip in it, for anyone who uses it later) if missing, then
# `uv pip install ARGS` into it, quietly.
UV=.venv-uv/bin/uv

ensure_uv() {
    if [ ! -x "$UV" ]; then
        python3 -m venv .venv-uv || return 1
        quietly .venv-uv/bin/python -m pip install --quiet uv || return 1
    fi
    local value
    if [ -z "${UV_FIND_LINKS:-}" ]; then
        value=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
        [ -n "$value" ] && export UV_FIND_LINKS="$value"
    fi
    if [ -z "${UV_CONSTRAINT:-}" ]; then
        value=${PIP_CONSTRAINT:-$(python3 -m pip config get global.constraint 2>/dev/null || true)}
        [ -n "$value" ] && [ -f "$value" ] && export UV_CONSTRAINT="$value"
    fi
    return 0
}

venv_install() {
    local venv=$1
    shift
    ensure_uv || return 1
    if [ ! -x "$venv/bin/python" ]; then
        quietly "$UV" venv --quiet --seed --python python3 "$venv" || return 1
    fi
    quietly "$UV" pip install --quiet --python "$venv/bin/python" "$@"
}
