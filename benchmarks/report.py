"""The outputs of a benchmark run: ``bench.json`` (every number), ``bench.md`` (the tables and
the status of each target), ``bench.png`` (:mod:`benchmarks.plots`), and the table on stdout."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.grid import describe, primary_impl
from benchmarks.impls import IMPLEMENTATIONS, case_key
from benchmarks.plots import plot
from benchmarks.targets import evaluate_targets

__all__ = ["format_table", "summary_markdown", "write_json", "write_outputs"]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """One line per case: p50 of each implementation, and GB/s, x floor, speedups of the primary."""
    rows = results.get("grid", [])
    if not rows:
        return "(no grid results)"
    impls = [i for i in IMPLEMENTATIONS if any(r["impl"] == i and "p50_us" in r for r in rows)]
    primary = primary_impl(rows)
    others = [i for i in impls if i not in (primary, "advantages")]
    header = ["B x G", "N", "D", "dtype", "ids", "floor us"]
    header += [f"{primary} us (p20-p80)", "GB/s", "x floor"]
    header += [f"{i} us" for i in impls if i != primary]
    header += [f"vs {i}" for i in others]
    if "advantages" in impls:
        header.append("adv/adj")
    by_case: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(case_key(row), {})[row["impl"]] = row
    lines = []
    for key, case_rows in by_case.items():
        first = next(iter(case_rows.values()))
        main_row = case_rows.get(primary, {})
        cells = [
            f"{key[0]} x {key[1]}",
            str(first["n"]),
            str(key[2]),
            key[3],
            key[4],
            _fmt(first.get("floor_us")),
        ]
        if "p50_us" in main_row:
            cells.append(
                f"{main_row['p50_us']:.1f} ({main_row['p20_us']:.1f}-{main_row['p80_us']:.1f})"
            )
        else:
            cells.append(_short_error(main_row))
        cells += [_fmt(main_row.get("gbps")), _fmt(main_row.get("x_floor"), 2)]
        cells += [_fmt(case_rows.get(i, {}).get("p50_us")) for i in impls if i != primary]
        cells += [_fmt(main_row.get(f"speedup_vs_{i}"), 1) for i in others]
        if "advantages" in impls:
            adv = case_rows.get("advantages", {}).get("p50_us")
            ratio = adv / main_row["p50_us"] if adv and "p50_us" in main_row else None
            cells.append(_fmt(ratio, 2))
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in lines]
    return "\n".join(out)


def _short_error(row: dict[str, Any]) -> str:
    error = row.get("error")
    return "-" if not error else ("skipped" if error.startswith("skipped") else "error")


def _code_line(meta: dict[str, Any]) -> str:
    dirty = meta.get("dirty")
    state = {True: ", with uncommitted changes", False: ", clean", None: ""}[dirty]
    return (
        f"- code: commit {meta.get('commit') or 'unknown'} ({meta.get('commit_source')}{state}), "
        f"sources sha256 {str(meta.get('source_sha256'))[:16]}"
    )


def summary_markdown(results: dict[str, Any]) -> str:
    """``bench.md``: where and on what it ran, the grid's table, the other sections, targets."""
    meta = results.get("meta", {})
    lines = [
        "# DRA benchmark results",
        "",
        f"- device: {meta.get('device_name')} ({meta.get('device_type')})",
        f"- date (UTC): {meta.get('date_utc')}",
        _code_line(meta),
        f"- dra_kernels {meta.get('dra_kernels')}, torch {meta.get('torch')} (CUDA "
        f"{meta.get('cuda')}), triton {meta.get('triton')}, numpy {meta.get('numpy')}, "
        f"python {meta.get('python')}",
        f"- timer: {meta.get('timer')}",
    ]
    copy = results.get("copy_bandwidth")
    if copy:
        lines.append(
            f"- copy bandwidth: {copy['gbps']:.1f} GB/s (read + write, copy of "
            f"{copy['bytes_moved'] // 2 // 2**20} MiB, median)"
        )
    lines += [
        "",
        "Times are medians in microseconds; (p20-p80) for the primary implementation.",
        "",
        format_table(results, markdown=True),
        "",
    ]
    if results.get("latency"):
        lines += [
            "## Per-call latency from Python (N <= 1024)",
            "",
            "| B x G | D | dtype | variant | p50 us | p20-p80 |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["latency"]:
            spread = f"{_fmt(r.get('p20_us'))}-{_fmt(r.get('p80_us'))}"
            lines.append(
                f"| {r['groups']} x {r['group_size']} | {r['dim']} | {r['dtype']} | "
                f"{r['variant']} | {_fmt(r.get('p50_us'))} | {spread} |"
            )
        lines.append("")
    if results.get("custom_op"):
        lines += [
            "## Custom-op overhead in eager mode (p50 us per call from Python)",
            "",
            "| B x G | D | custom op | launcher | public API | overhead |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["custom_op"]:
            lines.append(
                f"| {r['groups']} x {r['group_size']} | {r['dim']} | "
                f"{_fmt(r.get('custom_op_p50_us'))} | {_fmt(r.get('launcher_p50_us'))} | "
                f"{_fmt(r.get('public_api_p50_us'))} | {_fmt(r.get('overhead_us'))} |"
            )
        lines.append("")
    modes = results.get("launch_modes")
    if modes:
        lines += [
            "## One call of adjust_rewards + dra_advantages, three ways (p50 us per call)",
            "",
            f"{modes['groups']} x {modes['group_size']}, D={modes['dim']}, {modes['dtype']}: "
            f"eager {_fmt(modes.get('eager_p50_us'))}, CUDA-graph replay "
            f"{_fmt(modes.get('graph_replay_p50_us'))}, torch.compile(fullgraph=True) "
            f"{_fmt(modes.get('compiled_p50_us'))} (compiled in {_fmt(modes.get('compile_s'))} s).",
            "",
        ]
    ratio = results.get("reference_ratio")
    if ratio:
        phases = ", ".join(f"{k} {v:.1f} ms" for k, v in ratio["phases_ms"].items())
        lines += [
            "## CPU reference vs F.normalize (target 7)",
            "",
            f"N={ratio['n']}, D={ratio['dim']}, fp32, {ratio['threads']} threads: "
            f"adjust_rewards {ratio['adjust_rewards_ms']:.1f} ms, normalize "
            f"{ratio['normalize_ms']:.1f} ms, ratio {ratio['ratio']:.2f} "
            f"(target <= {ratio['target']}). Phases: {phases}.",
            "",
        ]
    if results.get("checks"):
        lines += ["## GPU checks (pytest -m gpu)", "", "| check | ok | detail |", "|---|---|---|"]
        for name, check in results["checks"].items():
            detail = str(check.get("detail", check.get("error", ""))).replace("|", "/")
            lines.append(f"| {name} | {check.get('ok')} | {detail[:300]} |")
        lines.append("")
    if results.get("targets"):
        lines += ["## Targets", "", "| target | status | goal | value |", "|---|---|---|---|"]
        for name, target in results["targets"].items():
            values = {k: v for k, v in target.items() if k not in ("goal", "status")}
            shown = ", ".join(
                f"{k}={_fmt(v, 2) if isinstance(v, float) else v}" for k, v in values.items()
            )
            lines.append(f"| {name} | {target['status']} | {target['goal']} | {shown} |")
        lines.append("")
    if results.get("errors"):
        lines += ["## Section errors", ""]
        lines += [f"- {k}: {v.splitlines()[-1] if v else v}" for k, v in results["errors"].items()]
        lines.append("")
    return "\n".join(lines)


def write_outputs(results: dict[str, Any], out_dir: Path, *, with_plot: bool = True) -> None:
    """``bench.json`` (always first), ``bench.md`` and ``bench.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = evaluate_targets(results)
    write_json(results, out_dir / "bench.json")
    (out_dir / "bench.md").write_text(summary_markdown(results), encoding="utf-8")
    if with_plot and any("p50_us" in r for r in results.get("grid", [])):
        try:
            plot(results, out_dir / "bench.png")
        except Exception as exc:  # matplotlib missing or broken: the JSON keeps every number
            results.setdefault("errors", {})["plot"] = describe(exc)
            write_json(results, out_dir / "bench.json")


def write_json(results: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
