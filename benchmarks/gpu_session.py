"""Everything one lent GPU session should measure, in one command, each step under its own limit.

GPU time is scarce (one call of at most ten minutes, a few times a month), so the steps run in
order of value and a step that hangs or fails does not take the others with it:

1. the test suite on the GPU: ``pytest -m gpu`` over ``tests/`` (CUDA-only checks: no host sync,
   CUDA graphs, ``torch.compile(fullgraph=True)``, determinism, large layouts), then the kernel's
   tests (``tests/test_launch.py``, ``tests/test_triton.py``, ``tests/test_facility_kernel.py``:
   every dtype, mode and per-group path, scan and bucket mode bit for bit, the counting kernel's
   atomics, the facility-location kernel) on the GPU's compiler;
2. the timing grid and the sections beside it (``python -m benchmarks.run``: copy bandwidth,
   grid, small-batch latency, custom-op overhead, eager / CUDA graph / compiled call);
3. ``benchmarks.gpu_probe``: pieces of one call, host costs, and the sweep of every per-group
   path, which decides the defaults.

The resource report (``benchmarks.resources``) needs no GPU and is not repeated here. Correctness
is the test suite's alone; the outcomes of the tests behind target 6 are written into the grid's
``bench.json`` / ``bench.md`` at the end.

Outputs under ``--out`` (six files, what the device tool brings back): ``session.json`` (the
device, library versions and commit, each step's exit code and time, the test outcomes),
``session.log`` (every step's output), ``grid/bench.{json,md,png}``, ``probe/probe.json``. The
last lines printed are a short summary (the device tool returns the end of the output). Usage::

    python -m benchmarks.gpu_session --out "$OUT" --commit <sha>   # on the GPU machine, <= 540 s
    python -m benchmarks.gpu_session --out out/dry --dry-run        # CPU: every step, small

``--commit`` records the commit measured where the copy that runs has no git metadata (with it,
``git rev-parse HEAD`` is recorded and ``--commit`` only checked against it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

_PYTEST = ["pytest", "-v", "-rs", "--tb=short", "-p", "no:cacheprovider"]

# (name, seconds allowed, argv after "python -m") on the GPU; --dry-run swaps in the CPU forms.
# The limits sum to at most 540 s: one device call, with time to start and copy back.
STEPS = (
    ("tests_gpu", 70, [*_PYTEST, "tests", "-m", "gpu"]),
    ("tests_kernel", 130, [*_PYTEST, "--durations=10", "tests/test_launch.py",
                           "tests/test_triton.py", "tests/test_facility_kernel.py", "-m",
                           "not gpu"]),
    ("grid", 220, ["benchmarks.run", "--device", "cuda", "--out", "{out}/grid",
                   "--time-budget-s", "160"]),
    ("probe", 120, ["benchmarks.gpu_probe", "--out", "{out}/probe", "--budget-s", "100"]),
)  # fmt: skip
DRY_STEPS = (
    ("tests_gpu", 180, [*_PYTEST, "tests", "-m", "gpu"]),
    ("tests_kernel", 300, [*_PYTEST, "tests/test_launch.py", "-m", "not gpu"]),
    ("grid", 300, ["benchmarks.run", "--device", "cpu", "--quick", "--out", "{out}/grid",
                   "--impls", "torch,naive,triton,advantages", "--shapes", "4x4",
                   "--dims", "16", "--rep-ms", "2", "--warmup-ms", "1"]),
    ("probe", 600, ["benchmarks.gpu_probe", "--out", "{out}/probe", "--device", "cpu", "--small"]),
)  # fmt: skip
GRID_STEPS = {"grid"}
"""Steps that take ``--commit``."""


def _tests_outcome(junit: Path) -> dict[str, Any]:
    """Counts of a pytest JUnit XML report, the failed tests and the skip reasons."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"error": f"no test report ({type(exc).__name__})"}
    outcome: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "cases": {}}
    skips: dict[str, int] = {}
    failures = []
    for case in root.iter("testcase"):
        node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
            failures.append(node)
        elif (skip := case.find("skipped")) is not None:
            state = "skipped"
            reason = (skip.get("message") or "").strip()[:120]
            skips[reason] = skips.get(reason, 0) + 1
        else:
            state = "passed"
        outcome[state] += 1
        outcome["cases"][node] = state
    outcome["failures"] = failures
    outcome["skip_reasons"] = skips
    return outcome


def gpu_checks(tests: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Target 6's checks from the test outcomes: ok when every test behind a check ran and passed
    (parametrisations included), False when one failed, None when none ran."""
    from benchmarks.targets import GPU_CHECK_TESTS

    cases: dict[str, str] = {}
    for outcome in tests.values():
        cases.update(outcome.get("cases", {}))
    checks = {}
    for name, nodes in GPU_CHECK_TESTS.items():
        states = {
            node: state
            for node, state in cases.items()
            if any(node == want or node.startswith(want + "[") for want in nodes)
        }
        ran = {node: state for node, state in states.items() if state != "skipped"}
        missing = [want for want in nodes if not any(n.split("[")[0] == want for n in ran)]
        ok = False if "failed" in ran.values() else (None if missing else True)
        checks[name] = {"ok": ok, "detail": ran or "not run"}
    return checks


def run_steps(
    out: Path, dry_run: bool, only: set[str] | None = None, commit: str | None = None
) -> dict[str, Any]:
    """Run the steps, each output appended to ``session.log``; the status, also written to
    ``session.json`` after every step."""
    import torch

    from benchmarks.environment import environment

    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
    session: dict[str, Any] = {"meta": environment(device, commit=commit), "steps": {}, "tests": {}}
    session["meta"]["dry_run"] = dry_run
    env = dict(os.environ)
    if dry_run:
        env["TRITON_INTERPRET"] = "1"  # NOTE: the kernels through Triton's CPU interpreter
    log = out / "session.log"
    log.write_text("")
    reports = Path(tempfile.mkdtemp(prefix="dra-session-"))
    for name, limit, argv in DRY_STEPS if dry_run else STEPS:
        if only is not None and name not in only:
            continue
        args = [a.format(out=out) for a in argv]
        if name in GRID_STEPS and commit is not None:
            args += ["--commit", commit]
        junit = reports / f"{name}.xml"
        if args[0] == "pytest":
            args.append(f"--junitxml={junit}")
        print(f"[session] {name}: python -m {' '.join(args)} (limit {limit} s)", flush=True)
        started = time.perf_counter()
        with log.open("a") as sink:
            sink.write(f"\n==== {name}: python -m {' '.join(args)} (limit {limit} s)\n")
            sink.flush()
            try:
                rc: int | str = subprocess.run(
                    [sys.executable, "-m", *args], stdout=sink, stderr=subprocess.STDOUT,
                    timeout=limit, env=env,
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                rc = "timeout"
        seconds = round(time.perf_counter() - started, 1)
        session["steps"][name] = {"rc": rc, "seconds": seconds, "limit_s": limit}
        if args[0] == "pytest":
            session["tests"][name] = _tests_outcome(junit)
        print(f"[session] {name}: rc={rc} in {seconds} s", flush=True)
        _write(out / "session.json", session)
    session["checks"] = gpu_checks(session["tests"])
    _write(out / "session.json", session)
    _add_checks_to_grid(out / "grid", session["checks"])
    return session


def _write(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=1, default=str))


def _add_checks_to_grid(grid: Path, checks: dict[str, Any]) -> None:
    """The tests' outcomes for target 6 into the grid's results, its outputs rendered again."""
    results = _load(grid / "bench.json")
    if not results:
        return
    from benchmarks.report import write_outputs

    results["checks"] = checks
    write_outputs(results, grid, with_plot=(grid / "bench.png").exists())


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary(out: Path, session: dict[str, Any]) -> list[str]:
    """The short table printed last: the code and device, steps, tests, targets, sweep winners."""
    meta = session.get("meta", {})
    dirty = {True: ", uncommitted changes", False: "", None: ", git state unknown"}
    lines = [
        f"[session] device {meta.get('device_name')}, torch {meta.get('torch')} (CUDA "
        f"{meta.get('cuda')}), triton {meta.get('triton')}; commit {meta.get('commit')}"
        f"{dirty[meta.get('dirty')]}; sources {str(meta.get('source_sha256'))[:16]}",
        "[session] steps: " + ", ".join(f"{k} rc={v['rc']} {v['seconds']}s"
                                        for k, v in session.get("steps", {}).items()),
    ]  # fmt: skip
    for name, outcome in session.get("tests", {}).items():
        if "error" in outcome:
            lines.append(f"[session] {name}: {outcome['error']}")
            continue
        lines.append(f"[session] {name}: {outcome['passed']} passed, {outcome['failed']} failed, "
                     f"{outcome['skipped']} skipped")  # fmt: skip
        lines += [f"[session]   failed: {node}" for node in outcome["failures"][:8]]
    checks = session.get("checks", {})
    if checks:
        lines.append("[session] GPU checks: " + ", ".join(f"{k} {v['ok']}"
                                                          for k, v in checks.items()))  # fmt: skip
    grid = _load(out / "grid" / "bench.json")
    for name, target in grid.get("targets", {}).items():
        lines.append(f"[session] target {name}: {target.get('status')}")
    probe = _load(out / "probe" / "probe.json")
    if probe.get("host_us"):
        host = {k: round(v, 1) for k, v in probe["host_us"].items()}
        lines.append(f"[session] host us: {host}")
    for row in probe.get("rows", []):
        timings = {k: v for k, v in row.get("sweep", {}).items() if isinstance(v, float)}
        if timings:
            best = sorted(timings.items(), key=lambda kv: kv[1])[:3]
            default = [f"{k} {v:.1f}" for k, v in timings.items() if k.endswith("(default)")]
            lines.append(f"[session] sweep {row['B']}x{row['G']}x{row['D']} {row['dtype']}: "
                         + ", ".join(f"{k} {v:.1f}" for k, v in best)
                         + f" | {', '.join(default) or 'default not timed'}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="the CPU forms of every step")
    parser.add_argument("--only", nargs="+", choices=[s[0] for s in STEPS], help="these steps")
    parser.add_argument(
        "--commit", default=None, help="the commit measured (where the tree has no git metadata)"
    )
    args = parser.parse_args(argv)
    session = run_steps(
        args.out, args.dry_run, set(args.only) if args.only else None, commit=args.commit
    )
    for line in summary(args.out, session):
        print(line, flush=True)
    return 0 if all(v["rc"] == 0 for v in session["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
