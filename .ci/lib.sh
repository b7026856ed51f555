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
