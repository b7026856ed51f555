"""Everything one lent GPU session should measure, in one command, each step under its own limit.

GPU time is scarce (one call of at most ten minutes, a few times a month), so the steps run in
order of value and a step that hangs or fails does not take the others with it:

1. ``benchmarks.gpu_check``: correctness against float64, determinism, no host sync, CUDA graph,
   ``torch.compile``, custom-op overhead, then the full grid and the small-batch latency;
2. the launcher's tests and the kernel's tests that force each per-group path, compare scan and
   bucket mode bit for bit, check the buckets (the counting kernel's cross-program step runs on
   real atomics only here) and the GPU-only ones, all on the GPU's compiler;
3. ``benchmarks.gpu_probe``: pieces of one call, host costs, and the sweep of every per-group
   path, each variant checked against float64, which decides the defaults.

The resource report (``benchmarks.resources``) needs no GPU and is not repeated here.

Each writes under ``--out``; the last lines printed are a short summary (the device tool returns
the end of the output). Usage, on the GPU machine::

    python -m benchmarks.gpu_session --out "$OUT"          # at most 540 s (the limits)
    python -m benchmarks.gpu_session --out out/dry --dry-run   # CPU: every step, tiny, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (name, seconds allowed, argv after "python -m") on the GPU; --dry-run swaps in the CPU forms
STEPS = (
    ("check", 270, ["benchmarks.gpu_check", "--out", "{out}/check", "--budget-s", "240"]),
    ("pytest", 150, ["pytest", "-v", "--tb=short", "-p", "no:cacheprovider", "tests/test_launch.py",
                     "tests/test_triton.py", "-k", "gpu or every_group_path or same_bits or "
                     "buckets_hold or split or out_of_range or fast"]),
    ("probe", 120, ["benchmarks.gpu_probe", "--out", "{out}/probe", "--budget-s", "100"]),
)  # fmt: skip
DRY_STEPS = (
    ("check", 900, ["benchmarks.gpu_check", "--out", "{out}/check", "--device", "cpu"]),
    ("pytest", 300, ["pytest", "-q", "-p", "no:cacheprovider", "tests/test_launch.py"]),
    ("probe", 600, ["benchmarks.gpu_probe", "--out", "{out}/probe", "--device", "cpu", "--small"]),
)


def run_steps(out: Path, dry_run: bool, only: set[str] | None = None) -> dict[str, Any]:
    """Run the steps; ``{name: {"rc", "seconds", "log"}}`` (also written to ``session.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, Any] = {}
    for name, limit, argv in DRY_STEPS if dry_run else STEPS:
        if only is not None and name not in only:
            continue
        args = [a.format(out=out) for a in argv]
        log = out / f"{name}.log"
        started = time.perf_counter()
        env = dict(os.environ)
        print(f"[session] {name}: python -m {' '.join(args)} (limit {limit} s)", flush=True)
        try:
            with log.open("w") as sink:
                rc = subprocess.run(
                    [sys.executable, "-m", *args], stdout=sink, stderr=subprocess.STDOUT,
                    timeout=limit, env=env,
                ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = "timeout"
        status[name] = {
            "rc": rc,
            "seconds": round(time.perf_counter() - started, 1),
            "log": log.name,
        }
        print(f"[session] {name}: rc={rc} in {status[name]['seconds']} s", flush=True)
        (out / "session.json").write_text(json.dumps(status, indent=1))
    return status


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary(out: Path, status: dict[str, Any]) -> list[str]:
    """The short table printed last: steps, checks, targets, fast launch, sweep winners."""
    lines = ["[session] steps: " + ", ".join(f"{k} rc={v['rc']} {v['seconds']}s"
                                            for k, v in status.items())]  # fmt: skip
    pytest_log = out / "pytest.log"
    if pytest_log.exists():
        tail = [line for line in pytest_log.read_text().splitlines() if line.strip()][-1:]
        lines.append(f"[session] pytest: {tail[0] if tail else 'no output'}")
    check = _load(out / "check" / "bench.json")
    if check:
        meta = check.get("meta", {})
        lines.append(f"[session] device {meta.get('device_name', meta.get('device_type'))}, "
                     f"torch {meta.get('torch')}, triton {meta.get('triton')}")  # fmt: skip
        checks = check.get("checks", {})
        failed = [name for name, c in checks.items() if not c.get("ok")]
        lines.append(f"[session] checks: {len(checks) - len(failed)}/{len(checks)} ok"
                     + (f"; failed: {failed}" if failed else ""))  # fmt: skip
        lines.append(f"[session] fast launch: {meta.get('triton_fast_launch')}")
        for name, target in check.get("targets", {}).items():
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
    args = parser.parse_args(argv)
    status = run_steps(args.out, args.dry_run, set(args.only) if args.only else None)
    for line in summary(args.out, status):
        print(line, flush=True)
    return 0 if all(v["rc"] == 0 for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
