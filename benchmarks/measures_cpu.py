"""The SMI measures on CPU: Graph-Cut, facility location and log-det side by side (issue 15).

For each shape (float32 embeddings sharing a positive direction, groups of equal size in sorted
order, :func:`benchmarks.cpu_peers.make_inputs`) three calls of the public API are timed
round-robin, the order rotating each round, each called once untimed and once timed per round
(:func:`benchmarks.cpu_peers.timed_round`), so load from other work falls on all alike:

===================== ============================================================================
``graph_cut``         ``smi_scores(embeddings, codes, num_groups=K, backend="torch")``
``facility_location`` the same with ``measure="facility_location"``
``log_det``           the same with ``measure="log_det"``
===================== ============================================================================

With ``--submodlib`` (and ``submodlib-py`` installed), shapes with ``N <= 1,024`` also time what
a user of submodlib writes for the same numbers: per group, unit rows and the cosine matrix in
numpy float32, then per row one ``FacilityLocationMutualInformationFunction`` /
``LogDeterminantMutualInformationFunction`` evaluated at ``{i}``; its results are checked against
the library's first.

``--breakdown`` times the parts of one log-det call on the groups of a shape: the float64 cosine
products (``measures._cosines``) and the batched Cholesky factorisation plus the diagonal of the
inverse (``measures._inverse_diagonal``) of the same matrices, so that the share of the
factorisation in a call is measured, not guessed.

    python -m benchmarks.measures_cpu                               # the grid, about a minute
    python -m benchmarks.measures_cpu --submodlib --breakdown --json out.json --markdown out.md

Medians of the timed calls, in milliseconds, and their ratios to Graph-Cut are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cpu_peers import Shape, make_inputs, run_rounds
from benchmarks.environment import environment
from dra_kernels import smi_scores
from dra_kernels.measures import CHUNK_ELEMENTS, MEASURES, _cosines, _inverse_diagonal

__all__ = [
    "GRID",
    "SUBMODLIB_MAX_N",
    "breakdown",
    "library_calls",
    "markdown",
    "measure_shape",
    "parse_shape",
    "submodlib_smi",
]

GRID = tuple(Shape(n, g, d) for n in (1024, 16384) for g in (8, 16, 64) for d in (384,))
SUBMODLIB_MAX_N = 1024  # the per-row peer takes about 0.04 (FL) and 0.12 (log-det) ms per row
PEER = {"facility_location": "submodlib_fl", "log_det": "submodlib_ld"}


def library_calls(
    embeddings: torch.Tensor, codes: torch.Tensor, groups: int
) -> dict[str, Callable[[], torch.Tensor]]:
    """One call of the public API per measure, on the torch backend."""

    def call(measure: str) -> Callable[[], torch.Tensor]:
        return lambda: smi_scores(
            embeddings, codes, num_groups=groups, backend="torch", measure=measure
        )

    return {measure: call(measure) for measure in MEASURES}


def submodlib_smi(embeddings: torch.Tensor, codes: torch.Tensor, measure: str) -> np.ndarray:
    """The SMI of every row as a submodlib user computes it (eta = lam = 1): float32 unit rows
    and cosine matrix per group, one submodlib function per row, evaluated at ``{i}``."""
    import submodlib

    x = embeddings.numpy()
    codes_np = codes.numpy()
    out = np.zeros(len(x))
    for code in np.unique(codes_np):
        rows = np.flatnonzero(codes_np == code)
        g = len(rows)
        if g == 1:
            continue  # SMI 0 (submodlib: FLT_MIN for facility location, IndexError for log-det)
        u = x[rows] / np.linalg.norm(x[rows], axis=1, keepdims=True)
        s = u @ u.T
        for i in range(g):
            keep = [j for j in range(g) if j != i]
            if measure == "facility_location":
                f = submodlib.FacilityLocationMutualInformationFunction(
                    n=g, num_queries=g - 1, data_sijs=s, query_sijs=s[:, keep]
                )
            else:
                f = submodlib.LogDeterminantMutualInformationFunction(
                    n=g,
                    num_queries=g - 1,
                    lambdaVal=1.0,
                    data_sijs=s,
                    query_sijs=s[:, keep],
                    query_query_sijs=s[np.ix_(keep, keep)],
                )
            out[rows[i]] = f.evaluate({i})
    return out


def _check_peer(name: str, got: np.ndarray, want: torch.Tensor, group_size: int) -> float:
    """Largest difference of the submodlib peer from the library (raises beyond float32's
    rounding, amplified by the group size and, for log-det, 1 / lam = 1)."""
    diff = float(np.abs(got - want.double().numpy()).max())
    if diff > 1e-5 * group_size:
        raise AssertionError(f"{name} disagrees with the library by {diff:.3g}")
    return diff


def measure_shape(
    shape: Shape,
    *,
    budget_s: float = 3.0,
    min_rounds: int = 3,
    max_rounds: int = 200,
    with_submodlib: bool = False,
) -> dict[str, Any]:
    """Time the three measures (and the submodlib peers) round-robin on ``shape``."""
    _, embeddings, codes = make_inputs(shape)
    calls = library_calls(embeddings, codes, shape.groups)
    max_diff: dict[str, float] = {}
    if with_submodlib and shape.n <= SUBMODLIB_MAX_N:
        for measure, peer in PEER.items():
            calls[peer] = lambda m=measure: submodlib_smi(embeddings, codes, m)
            max_diff[peer] = _check_peer(peer, calls[peer](), calls[measure](), shape.group_size)
    rounds, samples = run_rounds(
        calls, budget_s=budget_s, min_rounds=min_rounds, max_rounds=max_rounds
    )
    medians = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    ratios = {f"{m}/graph_cut": medians[m] / medians["graph_cut"] for m in MEASURES[1:]}
    ratios.update(
        {f"{m}/{peer}": medians[m] / medians[peer] for m, peer in PEER.items() if peer in medians}
    )
    return {
        "shape": asdict(shape),
        "name": shape.name,
        "rounds": rounds,
        "median_ms": medians,
        "ratios": ratios,
        "peer_max_abs_diff": max_diff,
    }


def breakdown(
    shape: Shape, *, budget_s: float = 3.0, min_rounds: int = 3, max_rounds: int = 200
) -> dict[str, Any]:
    """Medians (ms) of a whole log-det ``smi_scores`` call on ``shape`` and of its two heavy
    parts on the same groups, in the call's chunks of groups: the float64 cosine products (from
    the float64 upcast rows) and the factorisation plus inverse; timed round-robin like
    :func:`measure_shape`."""
    _, embeddings, codes = make_inputs(shape)
    g, d = shape.group_size, shape.dim
    step = max(1, CHUNK_ELEMENTS // (g * max(g, d)))
    chunks = [
        embeddings[first * g : min(first + step, shape.groups) * g].double().view(-1, g, d)
        for first in range(0, shape.groups, step)
    ]
    ridges = []
    for x in chunks:
        s = _cosines(x, raw=True)[0]
        s.diagonal(dim1=1, dim2=2).add_(1.0)  # S + lam I, lam = 1
        ridges.append(s)
    calls = {
        "call": library_calls(embeddings, codes, shape.groups)["log_det"],
        "cosines": lambda: [_cosines(x, raw=True) for x in chunks],
        "factorisation": lambda: [
            _inverse_diagonal(torch.linalg.cholesky_ex(s)[0]) for s in ridges
        ],
    }
    rounds, samples = run_rounds(
        calls, budget_s=budget_s, min_rounds=min_rounds, max_rounds=max_rounds
    )
    medians = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    return {
        "shape": asdict(shape),
        "name": shape.name,
        "rounds": rounds,
        "median_ms": medians,
        "share": {k: medians[k] / medians["call"] for k in ("cosines", "factorisation")},
    }


def markdown(rows: Sequence[dict[str, Any]], parts: Sequence[dict[str, Any]] = ()) -> str:
    """The timing table (and the log-det breakdown, when measured)."""
    peers = any(PEER["log_det"] in row["median_ms"] for row in rows)
    head = "| N | G | D | graph_cut ms | facility_location ms | log_det ms | FL / GC | LD / GC |"
    rule = "|---|---|---|---|---|---|---|---|"
    if peers:
        head += " submodlib FL ms | submodlib LD ms | FL / submodlib | LD / submodlib |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for row in rows:
        s, m, r = row["shape"], row["median_ms"], row["ratios"]
        line = (
            f"| {s['n']:,} | {s['group_size']} | {s['dim']} | {m['graph_cut']:.3f} "
            f"| {m['facility_location']:.3f} | {m['log_det']:.3f} "
            f"| {r['facility_location/graph_cut']:.1f} | {r['log_det/graph_cut']:.1f} |"
        )
        if peers:
            if PEER["log_det"] in m:
                line += (
                    f" {m[PEER['facility_location']]:.1f} | {m[PEER['log_det']]:.1f} "
                    f"| {r['facility_location/' + PEER['facility_location']]:.3f} "
                    f"| {r['log_det/' + PEER['log_det']]:.3f} |"
                )
            else:
                line += " | | | |"
        lines.append(line)
    if parts:
        lines += [
            "",
            "| N | G | D | log_det call ms | cosine products ms (share) "
            "| factorisation + inverse ms (share) |",
            "|---|---|---|---|---|---|",
        ]
        for part in parts:
            s, m, share = part["shape"], part["median_ms"], part["share"]
            lines.append(
                f"| {s['n']:,} | {s['group_size']} | {s['dim']} | {m['call']:.2f} "
                f"| {m['cosines']:.2f} ({share['cosines']:.0%}) "
                f"| {m['factorisation']:.2f} ({share['factorisation']:.0%}) |"
            )
    return "\n".join(lines)


def parse_shape(text: str) -> Shape:
    """``"N,G,D"`` -> :class:`Shape` (G must divide N)."""
    try:
        n, g, d = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shape takes N,G,D (three integers), got {text!r}"
        ) from None
    if min(n, g, d) < 1 or n % g:
        raise argparse.ArgumentTypeError(f"--shape needs N, G, D >= 1 and G dividing N: {text!r}")
    return Shape(n, g, d)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        help="N,G,D to time instead of the grid (repeatable)",
    )
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per shape (>= 3 rounds)")
    parser.add_argument(
        "--submodlib", action="store_true", help=f"also time submodlib for N <= {SUBMODLIB_MAX_N:,}"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="time the parts of log-det for N = 16,384"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    args = parser.parse_args(argv)
    if args.budget < 0:
        parser.error(f"--budget must be >= 0, got {args.budget}")
    if args.submodlib:
        try:
            import submodlib  # noqa: F401
        except ImportError:
            parser.error("--submodlib needs submodlib-py: pip install 'dra-kernels[submodlib]'")
    shapes = args.shape or list(GRID)
    env = environment(torch.device("cpu"))
    env["load_average"] = list(os.getloadavg())
    if args.submodlib:
        from importlib.metadata import version

        env["submodlib_py"] = version("submodlib-py")
    print(
        f"torch {env['torch']}, {env['torch_threads']} threads, {env['cpu']}, "
        f"commit {env['commit']}, load {env['load_average']}"
    )
    rows = []
    for shape in shapes:
        row = measure_shape(shape, budget_s=args.budget, with_submodlib=args.submodlib)
        rows.append(row)
        m = row["median_ms"]
        print(
            f"{shape.name:24s} "
            + "  ".join(f"{k} {v:.3f} ms" for k, v in m.items())
            + f"  ({row['rounds']} rounds)",
            flush=True,
        )
    parts = []
    if args.breakdown:
        for shape in [s for s in shapes if s.n == 16384 and s.group_size in (16, 64)] or shapes:
            parts.append(breakdown(shape, budget_s=args.budget))
            print(f"{shape.name:24s} log-det parts (ms): {parts[-1]['median_ms']}", flush=True)
    env["load_average_end"] = list(os.getloadavg())
    table = markdown(rows, parts)
    print(table)
    print(f"load average at the end: {env['load_average_end']}")
    if args.json:
        record = {"environment": env, "rows": rows, "log_det_breakdown": parts}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
