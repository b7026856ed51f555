"""The CPU torch path against what other code does, timed side by side (issue 14, item 7).

Four implementations of the same adjustment on the same inputs (float32, groups of equal size in
sorted order, ``min_denominator`` 0.1):

============= ===================================================================================
``library``   ``adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=K)``
``dense``     the dense per-group formulation (what the fastest public code does for equal
              groups): ``F.normalize``, view ``[K, G, D]``, one ``G x G`` bmm per group, row sums
              minus the diagonal, divide
``loop``      a per-uid Python loop, as trainers write it: rows of each uid collected in a dict,
              then per uid ``F.normalize`` of its rows, a ``G x G`` matmul, row sums minus diagonal
``normalize`` one ``F.normalize(embeddings, dim=1)`` of the same tensor (the memory floor's proxy)
============= ===================================================================================

Every shape is timed round-robin, the order rotating each round, so that load from other work on
the machine falls on all four alike; in each round every implementation is called once untimed,
then once timed, so each is measured warm (the loop would otherwise leave the dense code warm and
the library's cold; calls over 50 ms skip the untimed call); the medians and their ratios are
reported. Goals checked
(issue 14, item 7): ``library <= dense`` and ``library <= loop`` at every shape,
``library <= 3 x normalize`` for ``N <= 4,096``. Self-contained: imports only the library.

    python -m benchmarks.cpu_peers                      # the grid, a few minutes on 2 cores
    python -m benchmarks.cpu_peers --quick              # N <= 1,024 only
    python -m benchmarks.cpu_peers --json out.json --markdown out.md
    python -m benchmarks.cpu_peers --quick --against 7a04100   # also the library at a revision

``--against REV`` loads the package as it was at git revision ``REV`` (``git archive`` into a
temporary folder, imported under its own module objects) and times it as a fifth implementation,
``library@REV``, in the same rounds: a before/after comparison in one process, where both
versions meet the same load. Its row adds ``library/library@REV``, the median over rounds of the
ratio of the two timed calls of one round, with the range that holds that median with 95%
confidence (order statistics of the per-round ratios).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dra_kernels import adjust_rewards

__all__ = [
    "GRID",
    "IMPLEMENTATIONS",
    "MIN_DENOMINATOR",
    "NORMALIZE_GOAL",
    "NORMALIZE_GOAL_MAX_N",
    "Shape",
    "check_agreement",
    "dense_adjust",
    "goals",
    "implementations",
    "library_adjust",
    "loop_adjust",
    "make_inputs",
    "measure",
    "normalize_pass",
    "rows_from_pytest_benchmark",
    "run_rounds",
    "summary",
    "timed_round",
    "WARM_BELOW_S",
]

MIN_DENOMINATOR = 0.1
IMPLEMENTATIONS = ("library", "dense", "loop", "normalize")
NORMALIZE_GOAL = 3.0  # library / normalize, for N <= NORMALIZE_GOAL_MAX_N
NORMALIZE_GOAL_MAX_N = 4096


@dataclass(frozen=True)
class Shape:
    """``n`` rows in groups of ``group_size``, embeddings of width ``dim``."""

    n: int
    group_size: int
    dim: int

    @property
    def groups(self) -> int:
        return self.n // self.group_size

    @property
    def name(self) -> str:
        return f"N={self.n} G={self.group_size} D={self.dim}"

    @property
    def id(self) -> str:
        """For test ids and ``pytest -k``: ``n1024-g16-d768``."""
        return f"n{self.n}-g{self.group_size}-d{self.dim}"


GRID = tuple(
    Shape(n, g, d)
    for n in (256, 1024, 4096, 16384, 131072)
    for g in (8, 16, 64)
    for d in (384, 768)
)


def make_inputs(
    shape: Shape, *, seed: int = 0, layout: str = "sorted", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rewards [N], embeddings [N, D], codes [N])`` on CPU.

    Embeddings share a positive direction (cosines mostly positive, as real sentence embedders
    give) and have random scales; ``layout`` ``"sorted"`` puts each group's rows together,
    ``"shuffled"`` permutes the rows.
    """
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, shape.dim, generator=gen)
    embeddings = base + torch.randn(shape.n, shape.dim, generator=gen)
    embeddings *= torch.exp(torch.randn(shape.n, 1, generator=gen))
    rewards = torch.rand(shape.n, generator=gen)
    codes = torch.arange(shape.groups).repeat_interleave(shape.group_size)
    if layout == "shuffled":
        codes = codes[torch.randperm(shape.n, generator=gen)]
    elif layout != "sorted":
        raise ValueError(f"layout must be 'sorted' or 'shuffled', got {layout!r}")
    return rewards, embeddings.to(dtype), codes


def library_adjust(rewards, embeddings, codes, groups: int) -> torch.Tensor:
    """The library's CPU torch path, through the public API."""
    return adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=groups)


def dense_adjust(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    groups: int,
    group_size: int,
    min_denominator: float = MIN_DENOMINATOR,
) -> torch.Tensor:
    """Equal groups in sorted order: normalise, one ``G x G`` bmm per group, row sums."""
    units = F.normalize(embeddings, dim=1).view(groups, group_size, -1)
    similarity = torch.bmm(units, units.transpose(1, 2))
    smi = similarity.sum(2) - similarity.diagonal(dim1=1, dim2=2)
    adjusted = rewards.view(groups, group_size) / (1.0 + smi).clamp(min=min_denominator)
    return adjusted.reshape(-1)


def loop_adjust(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    uids: Sequence[Any],
    min_denominator: float = MIN_DENOMINATOR,
) -> torch.Tensor:
    """A per-uid Python loop: each uid's rows, normalised, one ``G x G`` matmul."""
    rows_of = defaultdict(list)
    for row, uid in enumerate(uids):
        rows_of[uid].append(row)
    out = torch.empty_like(rewards)
    for rows in rows_of.values():
        index = torch.tensor(rows)
        units = F.normalize(embeddings[index], dim=1)
        similarity = units @ units.T
        smi = similarity.sum(1) - similarity.diagonal()
        out[index] = rewards[index] / (1.0 + smi).clamp(min=min_denominator)
    return out


def normalize_pass(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings, dim=1)


def implementations(
    shape: Shape, rewards: torch.Tensor, embeddings: torch.Tensor, codes: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument calls of the four implementations on one set of inputs (sorted layout)."""
    uids = codes.tolist()  # the trainer's list of prompt ids
    return {
        "library": lambda: library_adjust(rewards, embeddings, codes, shape.groups),
        "dense": lambda: dense_adjust(rewards, embeddings, shape.groups, shape.group_size),
        "loop": lambda: loop_adjust(rewards, embeddings, uids),
        "normalize": lambda: normalize_pass(embeddings),
    }


def library_at(revision: str) -> tuple[Callable[..., Any], str]:
    """``adjust_rewards`` of the package as it was at git ``revision``, and its folder.

    The revision's ``dra_kernels/`` is extracted into a temporary folder and imported with the
    current package's modules set aside, then those are put back: the two versions live side by
    side as separate module objects. :func:`check_isolated` verifies that a call of the old one
    runs only the old files (a lazy import inside it would otherwise find the current package).
    """
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", revision, "dra_kernels"], cwd=root, capture_output=True, check=True
    ).stdout
    folder = tempfile.mkdtemp(prefix="dra-kernels-at-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    ours = lambda name: name == "dra_kernels" or name.startswith("dra_kernels.")  # noqa: E731
    current = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    sys.path.insert(0, folder)
    try:
        function = importlib.import_module("dra_kernels").adjust_rewards
    finally:
        sys.path.remove(folder)
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(current)
    return function, folder


def check_isolated(call: Callable[[], Any], folder: str) -> None:
    """Raise unless every ``dra_kernels`` frame that ``call`` runs is a file under ``folder``."""
    stray: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        path = frame.f_code.co_filename
        if event == "call" and "dra_kernels" in path and not path.startswith(folder):
            stray.add(path)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    if stray:
        raise AssertionError(f"the old library ran current files: {sorted(stray)}")


def check_agreement(calls: dict[str, Callable[[], torch.Tensor]]) -> float:
    """Largest absolute difference of the other implementations (``dense``, ``loop`` and any
    ``library@REV``) from ``library`` (raises above 1e-4 relative: they must compute the same
    thing)."""
    want = calls["library"]().double()
    worst = 0.0
    for name in [n for n in calls if n in ("dense", "loop") or n.startswith("library@")]:
        got = calls[name]().double()
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"{name} disagrees with the library: {(got - want).abs().max()}")
        worst = max(worst, float((got - want).abs().max()))
    return worst


WARM_BELOW_S = 0.05  # calls longer than this are not preceded by an untimed call


def timed_round(
    calls: dict[str, Callable[[], torch.Tensor]],
    names: Sequence[str],
    turn: int,
    samples: dict[str, list[float]],
) -> None:
    """One round: each of ``names`` in turn (starting at ``turn``), called once untimed (so its
    code and data are warm, whatever ran before; skipped once a call takes more than
    ``WARM_BELOW_S``, where that no longer matters) and once timed into ``samples``."""
    for name in list(names[turn % len(names) :]) + list(names[: turn % len(names)]):
        if not samples[name] or samples[name][-1] < WARM_BELOW_S:
            calls[name]()
        t0 = time.perf_counter()
        calls[name]()
        samples[name].append(time.perf_counter() - t0)


def measure(
    shape: Shape,
    *,
    budget_s: float = 4.0,
    min_rounds: int = 3,
    max_rounds: int = 200,
    against: tuple[str, Callable[..., Any]] | None = None,
) -> dict[str, Any]:
    """Time the four implementations round-robin on ``shape``; medians, spread and ratios.

    Rounds (:func:`timed_round`) continue until ``budget_s`` seconds have passed (at least
    ``min_rounds``, at most ``max_rounds``). ``against``: ``(revision, adjust_rewards)`` of
    :func:`library_at`, timed as ``library@revision`` in the same rounds.
    """
    rewards, embeddings, codes = make_inputs(shape)
    calls = implementations(shape, rewards, embeddings, codes)
    if against is not None:
        revision, old = against
        calls[f"library@{revision}"] = lambda: old(
            rewards, embeddings, codes, backend="torch", num_groups=shape.groups
        )
    max_diff = check_agreement(calls)
    rounds, samples = run_rounds(
        calls, budget_s=budget_s, min_rounds=min_rounds, max_rounds=max_rounds
    )
    return summary(shape, rounds, samples, max_diff)


def paired_ratio(new: Sequence[float], old: Sequence[float]) -> dict[str, float]:
    """Median of the per-round ratios ``new / old`` and the range of order statistics that holds
    the median with at least 95% confidence (the sign-test interval; rounds are independent
    pairs)."""
    ratios = sorted(a / b for a, b in zip(new, old, strict=True))
    n = len(ratios)
    # the largest k with P(Binomial(n, 1/2) < k) <= 2.5%: [ratios[k - 1], ratios[n - k]]
    k, tail = 0, 0.0
    while k < n // 2 and tail + math.comb(n, k) / 2**n <= 0.025:
        tail += math.comb(n, k) / 2**n
        k += 1
    low, high = (ratios[k - 1], ratios[n - k]) if k else (ratios[0], ratios[-1])
    return {"median": statistics.median(ratios), "low95": low, "high95": high, "rounds": n}


def run_rounds(
    calls: dict[str, Callable[[], Any]], *, budget_s: float, min_rounds: int, max_rounds: int
) -> tuple[int, dict[str, list[float]]]:
    """:func:`timed_round` over ``calls`` until ``budget_s`` seconds have passed (at least
    ``min_rounds``, at most ``max_rounds``): the number of rounds and each call's seconds."""
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        timed_round(calls, names, rounds, samples)
        rounds += 1
    return rounds, samples


def summary(
    shape: Shape, rounds: int, samples: dict[str, list[float]], max_diff: float
) -> dict[str, Any]:
    """Medians (ms), p20-p80, the three ratios and the goals of one shape."""
    medians = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    spread = {name: _quantiles(v) for name, v in samples.items()}
    ratios = {
        "library/dense": medians["library"] / medians["dense"],
        "library/loop": medians["library"] / medians["loop"],
        "library/normalize": medians["library"] / medians["normalize"],
    }
    row = {
        "shape": asdict(shape),
        "name": shape.name,
        "rounds": rounds,
        "median_ms": medians,
        "p20_p80_ms": spread,
        "ratios": ratios,
        "goals": goals(shape, ratios),
        "max_abs_diff": max_diff,
    }
    for name in [n for n in samples if n.startswith("library@")]:
        ratios[f"{name}/dense"] = medians[name] / medians["dense"]
        row["against"] = {"name": name, **paired_ratio(samples["library"], samples[name])}
    return row


def _quantiles(values: list[float]) -> list[float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return [pick(0.2), pick(0.8)]


def goals(shape: Shape, ratios: dict[str, float]) -> dict[str, bool | None]:
    """Issue 14, item 7: True (met), False (missed) or None (does not apply to this shape)."""
    return {
        "library <= dense": ratios["library/dense"] <= 1.0,
        "library <= loop": ratios["library/loop"] <= 1.0,
        f"library <= {NORMALIZE_GOAL:g} x normalize": (
            ratios["library/normalize"] <= NORMALIZE_GOAL
            if shape.n <= NORMALIZE_GOAL_MAX_N
            else None
        ),
    }


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The ratio table: medians in ms and the three ratios per shape."""
    lines = [
        "| N | G | D | library ms | dense ms | loop ms | normalize ms | library/dense "
        "| library/loop | library/normalize | goals |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s, m, r = row["shape"], row["median_ms"], row["ratios"]
        met = [v for v in row["goals"].values() if v is not None]
        status = (
            "met"
            if all(met)
            else "MISSED: " + ", ".join(k for k, v in row["goals"].items() if v is False)
        )
        lines.append(
            f"| {s['n']:,} | {s['group_size']} | {s['dim']} | {m['library']:.3f} "
            f"| {m['dense']:.3f} | {m['loop']:.3f} | {m['normalize']:.3f} "
            f"| {r['library/dense']:.2f} | {r['library/loop']:.3f} "
            f"| {r['library/normalize']:.2f} | {status} |"
        )
    against = [row["against"] for row in rows if "against" in row]
    if against:
        old = against[0]["name"]
        lines += [
            "",
            f"| N | G | D | {old} ms | {old}/dense | library/dense "
            f"| library/{old} (median of rounds) | 95% range | rounds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            s, m, r, a = row["shape"], row["median_ms"], row["ratios"], row["against"]
            lines.append(
                f"| {s['n']:,} | {s['group_size']} | {s['dim']} | {m[old]:.3f} "
                f"| {r[old + '/dense']:.2f} | {r['library/dense']:.2f} | {a['median']:.3f} "
                f"| {a['low95']:.3f}-{a['high95']:.3f} | {a['rounds']} |"
            )
    return "\n".join(lines)


def rows_from_pytest_benchmark(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``extra_info`` of each ``test_side_by_side`` benchmark, in grid order."""
    rows = [b["extra_info"] for b in report["benchmarks"] if "ratios" in b.get("extra_info", {})]
    order = {shape.name: i for i, shape in enumerate(GRID)}
    return sorted(rows, key=lambda row: order.get(row["name"], len(order)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the shapes with N <= 1,024")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per shape (>= 3 rounds)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the ratio table here")
    parser.add_argument(
        "--table-from",
        type=Path,
        help="only print the ratio table of a pytest-benchmark JSON of test_side_by_side",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also time the library as it was at this git revision, in the same rounds",
    )
    args = parser.parse_args(argv)
    if args.table_from:
        print(markdown(rows_from_pytest_benchmark(json.loads(args.table_from.read_text()))))
        return 0
    shapes = [s for s in GRID if not args.quick or s.n <= 1024]
    env = environment()
    print(
        f"torch {env['torch']}, {env['threads']} threads, {env['cpu']}, load {env['load_average']}"
    )
    against = None
    if args.against:
        old, folder = library_at(args.against)
        env["against"] = args.against
        rewards, embeddings, codes = make_inputs(shapes[0])
        check_isolated(lambda: old(rewards, embeddings, codes, backend="torch"), folder)
        against = (args.against, old)
    rows = []
    for shape in shapes:
        row = measure(shape, budget_s=args.budget, against=against)
        rows.append(row)
        r = row["ratios"]
        print(
            f"{shape.name:24s} library {row['median_ms']['library']:9.3f} ms  "
            f"/dense {r['library/dense']:5.2f}  /loop {r['library/loop']:6.3f}  "
            f"/normalize {r['library/normalize']:5.2f}  ({row['rounds']} rounds)"
            + (f"  /{args.against} {row['against']['median']:5.3f}" if against else ""),
            flush=True,
        )
    env["load_average_end"] = list(os.getloadavg())
    table = markdown(rows)
    print(table)
    print(f"load average at the end: {env['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    missed = [row["name"] for row in rows if False in row["goals"].values()]
    if missed:
        print("goals missed at: " + "; ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
