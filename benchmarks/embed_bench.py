"""``python -m benchmarks.embed_bench``: what embedding long completions costs (issue 12, item 7).

Measures, with the bundled all-MiniLM-L6-v2 (or ``--model``):

- **throughput** per long-text mode (``windows``, ``head``, ``head_tail``) at about 300, 1,500
  and 6,000 tokens per text: completions/s, text tokens/s (tokens of the inputs) and read
  tokens/s (tokens fed to the model), and the time of the tokenisation alone;
- **linearity**: seconds per token read in ``windows`` mode for ~270-token and ~4,800-token texts
  of the same total, timed alternately; the issue asks for a ratio of at most 1.5;
- **the DRA step**: ``Embedder.encode`` + ``adjust_rewards`` for 512 completions in groups of 8.
  When 512 texts of a length exceed ``--step-max-tokens``, fewer are measured and the 512 figure
  is derived by linear scaling (marked ``derived`` in the JSON and the table).

Token counts are the embedding model's own tokens (not the policy's). Texts are cut from the
synthetic R1-style traces of ``tests/data/long_traces.json`` (each text starts at another place,
cycling through them), to exact token counts. Every timing is repeated (``--repeats``); the
report gives the median and the range (min-max). Writes ``bench.json`` (after every section) and
``bench.md`` into ``--out``::

    python -m benchmarks.embed_bench --out out/embed          # full run: 40-55 min (2 shared cores)
    python -m benchmarks.embed_bench --quick --out out/embed  # smoke test: a few minutes
    python -m benchmarks.embed_bench --device cuda --out out/embed-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model loads offline

from dra_kernels import adjust_rewards
from dra_kernels.embed import LONG_TEXT_MODES, Embedder, TruncationWarning

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "tests" / "data" / "long_traces.json"

LENGTHS = (300, 1500, 6000)
"""Tokens per text of the throughput and step measurements."""
THROUGHPUT_TOKENS = 48_000
"""Text tokens per throughput measurement: texts = this // length (at least 4)."""
LINEARITY_LENGTHS = (270, 4800)
LINEARITY_TOKENS = 48_000
STEP_COMPLETIONS = 512
STEP_GROUP = 8
STEP_MAX_TOKENS = 800_000
"""Above this many tokens, the step is measured on fewer completions and scaled to 512."""
STEP_DERIVE_FROM = 64
ADJUST_CALLS = 50


# ----------------------------------------------------------------------------- texts


@dataclass(frozen=True)
class TextPool:
    """Word pieces (each a word with its trailing whitespace) and their token counts."""

    pieces: list[str]
    tokens: list[int]

    @classmethod
    def from_traces(cls, embedder: Embedder, path: Path = TRACES) -> TextPool:
        data = json.loads(path.read_text(encoding="utf-8"))
        texts = [c["text"] for c in data["prefix_group"]["completions"]]
        texts += [c["text"] for c in data["copies_group"]["completions"]]
        for pair in data["last_fifth_pairs"]:
            texts += [pair["original"], pair["rewritten"]]
        pieces = [p for text in texts for p in re.findall(r"\S+\s*", text + "\n\n")]
        unique = sorted(set(pieces))
        # NOTE: a BERT-style tokenizer splits on whitespace first, so a text's token count is the
        # sum of its words' counts; make_texts checks that on what it builds.
        counts = dict(zip(unique, embedder.token_counts([u.strip() for u in unique]), strict=True))
        return cls(pieces, [counts[p] for p in pieces])


def make_texts(embedder: Embedder, pool: TextPool, count: int, tokens: int) -> list[str]:
    """``count`` different texts of ``tokens`` embedder tokens each (a word's tokens over at most).

    Text ``i`` starts ``i * 997`` pieces into the pool and cycles through it.
    """
    texts = []
    size = len(pool.pieces)
    for i in range(count):
        start = (i * 997) % size
        parts: list[str] = []
        total = 0
        position = start
        while total < tokens:
            parts.append(pool.pieces[position % size])
            total += pool.tokens[position % size]
            position += 1
        texts.append("".join(parts).rstrip())
    counted = embedder.token_counts(texts[:4])
    if any(abs(c - tokens) > 16 for c in counted):
        raise RuntimeError(f"texts of {tokens} tokens came out with {counted} tokens")
    return texts


# ----------------------------------------------------------------------------- timing


def _summary(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": list(samples),
    }


@dataclass(frozen=True)
class Timed:
    wall: float  # seconds of wall clock
    cpu: float  # CPU seconds of this process, all threads


def _encode(embedder: Embedder, texts: list[str]) -> tuple[Timed, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # head modes cut on purpose
        cpu = time.process_time()
        start = time.perf_counter()
        vectors = embedder.encode(texts)
        return Timed(time.perf_counter() - start, time.process_time() - cpu), vectors


def measure_throughput(
    embedders: dict[str, Embedder],
    pool: TextPool,
    lengths: Sequence[int],
    repeats: int,
    budget: int = THROUGHPUT_TOKENS,
) -> list[dict[str, Any]]:
    """One row per (length, mode): seconds per encode of the same texts, repeated, alternating."""
    any_embedder = next(iter(embedders.values()))
    sets = {n: make_texts(any_embedder, pool, max(4, budget // n), n) for n in lengths}
    for embedder in embedders.values():  # warm-up: first calls allocate
        _encode(embedder, sets[lengths[0]][:4])
    seconds: dict[tuple[int, str], list[float]] = {}
    cpu: dict[tuple[int, str], list[float]] = {}
    tokenize: dict[int, list[float]] = {n: [] for n in lengths}
    stats: dict[tuple[int, str], Any] = {}
    for repeat in range(repeats):
        for n in lengths:
            start = time.perf_counter()
            any_embedder.token_counts(sets[n])
            tokenize[n].append(time.perf_counter() - start)
            modes = list(embedders) if repeat % 2 == 0 else list(reversed(embedders))
            for mode in modes:
                elapsed, _ = _encode(embedders[mode], sets[n])
                seconds.setdefault((n, mode), []).append(elapsed.wall)
                cpu.setdefault((n, mode), []).append(elapsed.cpu)
                stats[n, mode] = embedders[mode].last_stats
    rows = []
    for (n, mode), samples in seconds.items():
        s = stats[n, mode]
        median = statistics.median(samples)
        rows.append(
            {
                "tokens_per_text": n,
                "mode": mode,
                "texts": s.texts,
                "text_tokens": s.tokens,
                "tokens_read": s.tokens_read,
                "windows": s.windows,
                "share_read": s.share_read,
                "seconds": _summary(samples),
                "cpu_seconds": _summary(cpu[n, mode]),
                "cpu_ms_per_1k_read_tokens": 1e6 * statistics.median(cpu[n, mode]) / s.tokens_read,
                "tokenize_seconds": _summary(tokenize[n]),
                "completions_per_s": s.texts / median,
                "text_tokens_per_s": s.tokens / median,
                "read_tokens_per_s": s.tokens_read / median,
                "completions_per_s_range": [s.texts / max(samples), s.texts / min(samples)],
            }
        )
    rows.sort(key=lambda r: (r["tokens_per_text"], LONG_TEXT_MODES.index(r["mode"])))
    return rows


def measure_linearity(
    embedder: Embedder,
    pool: TextPool,
    repeats: int,
    lengths: tuple[int, int] = LINEARITY_LENGTHS,
    budget: int = LINEARITY_TOKENS,
) -> dict[str, Any]:
    """Seconds per token read, short vs long texts of the same total, timed alternately."""
    short, long = lengths
    sets = {n: make_texts(embedder, pool, max(2, budget // n), n) for n in lengths}
    _encode(embedder, sets[short][:8])
    per_token: dict[int, list[float]] = {short: [], long: []}
    cpu_per_token: dict[int, list[float]] = {short: [], long: []}
    read: dict[int, int] = {}
    texts: dict[int, int] = {}
    for repeat in range(repeats):
        for n in (short, long) if repeat % 2 == 0 else (long, short):
            elapsed, _ = _encode(embedder, sets[n])
            read[n] = embedder.last_stats.tokens_read
            texts[n] = embedder.last_stats.texts
            per_token[n].append(elapsed.wall / read[n])
            cpu_per_token[n].append(elapsed.cpu / read[n])
    ratios = [b / a for a, b in zip(per_token[short], per_token[long], strict=True)]
    cpu_ratios = [b / a for a, b in zip(cpu_per_token[short], cpu_per_token[long], strict=True)]
    return {
        "mode": embedder.long_text,
        "short_tokens_per_text": short,
        "long_tokens_per_text": long,
        "short_texts": texts[short],
        "long_texts": texts[long],
        "short_tokens_read": read[short],
        "long_tokens_read": read[long],
        "short_us_per_token": _summary([1e6 * t for t in per_token[short]]),
        "long_us_per_token": _summary([1e6 * t for t in per_token[long]]),
        "ratio_per_repeat": ratios,
        "ratio_median": statistics.median(ratios),
        "ratio_of_medians": (
            statistics.median(per_token[long]) / statistics.median(per_token[short])
        ),
        "short_cpu_us_per_token": _summary([1e6 * t for t in cpu_per_token[short]]),
        "long_cpu_us_per_token": _summary([1e6 * t for t in cpu_per_token[long]]),
        "cpu_ratio_per_repeat": cpu_ratios,
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "goal": 1.5,
    }


def measure_step(
    embedder: Embedder,
    pool: TextPool,
    lengths: Sequence[int],
    repeats: int,
    completions: int = STEP_COMPLETIONS,
    group: int = STEP_GROUP,
    max_tokens: int = STEP_MAX_TOKENS,
    derive_from: int = STEP_DERIVE_FROM,
) -> list[dict[str, Any]]:
    """The DRA step, embed + ``adjust_rewards``, for ``completions`` texts per length."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for n in lengths:
        measured = completions if completions * n <= max_tokens else min(derive_from, completions)
        texts = make_texts(embedder, pool, measured, n)
        rewards = torch.randint(0, 2, (measured,), generator=generator).float()
        group_ids = torch.arange(measured) // group
        num_groups = (measured + group - 1) // group
        step: list[float] = []
        embed: list[float] = []
        embed_cpu: list[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            elapsed, vectors = _encode(embedder, texts)
            out = adjust_rewards(rewards, vectors, group_ids, num_groups=num_groups)
            step.append(time.perf_counter() - start)
            embed.append(elapsed.wall)
            embed_cpu.append(elapsed.cpu)
            if not torch.isfinite(out).all():
                raise RuntimeError("adjust_rewards returned non-finite values")
        adjust = []
        for _ in range(ADJUST_CALLS):
            start = time.perf_counter()
            adjust_rewards(rewards, vectors, group_ids, num_groups=num_groups)
            adjust.append(time.perf_counter() - start)
        scale = completions / measured
        median = statistics.median(step)
        rows.append(
            {
                "tokens_per_text": n,
                "mode": embedder.long_text,
                "group_size": group,
                "measured_completions": measured,
                "tokens_read": embedder.last_stats.tokens_read,
                "step_seconds": _summary(step),
                "embed_seconds": _summary(embed),
                "embed_cpu_seconds": _summary(embed_cpu),
                "adjust_ms": _summary([1e3 * t for t in adjust]),
                "completions": completions,
                "derived": measured != completions,
                "step_seconds_for_completions": median * scale,
                "step_seconds_for_completions_range": [min(step) * scale, max(step) * scale],
                "adjust_share_of_step": statistics.median(adjust) / median,
            }
        )
    return rows


# ----------------------------------------------------------------------------- report


def environment(device: torch.device, model_name: str) -> dict[str, Any]:
    from benchmarks.environment import environment as base_environment

    info = base_environment(device)
    for name in ("transformers", "sentence_transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "not installed"
    info["model"] = model_name
    head_embed = _git("show", "HEAD:dra_kernels/embed.py", strip=False)
    local_embed = (REPO / "dra_kernels" / "embed.py").read_text(encoding="utf-8")
    info["embed_py_matches_commit"] = head_embed == local_embed
    info["load_average_start"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return info


def _git(*args: str, strip: bool = True) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.strip() if strip else out


def _range(s: dict[str, Any], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def render_markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# Embedder benchmark (issue 12, item 7)",
        "",
        f"- device: {env['device_name']} ({env['device_type']}), {env['cpu_count']} CPUs "
        f"visible, {env['torch_threads']} torch threads",
        f"- date (UTC): {env['date_utc']}; commit {env['commit']} (dra_kernels/embed.py "
        f"{'as committed' if env['embed_py_matches_commit'] else 'modified from the commit'})",
        f"- python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"sentence-transformers {env['sentence_transformers']}, dra_kernels "
        f"{env['dra_kernels']}",
        f"- model: {env['model']} (window {results['window_tokens']} tokens, batch "
        f"{results['batch_size']} windows), model load {results['load_seconds']:.1f} s",
        f"- load average at start {_loads(env['load_average_start'])}, at end "
        f"{_loads(results.get('load_average_end'))} (1, 5, 15 min)",
        f"- {results['repeats']} repeats per timing; medians with (min-max). Tokens are the "
        "embedding model's tokens.",
        "",
    ]
    if "throughput" in results:
        lines += [
            "## Throughput per long-text mode",
            "",
            "| tokens/text | mode | texts | share read | s per encode | completions/s | "
            "text tokens/s | read tokens/s | CPU ms per 1k read | tokenize s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["throughput"]:
            lo, hi = r["completions_per_s_range"]
            lines.append(
                f"| {r['tokens_per_text']:,} | {r['mode']} | {r['texts']} | "
                f"{r['share_read']:.1%} | {_range(r['seconds'])} | "
                f"{r['completions_per_s']:.1f} ({lo:.1f}-{hi:.1f}) | "
                f"{r['text_tokens_per_s']:,.0f} | {r['read_tokens_per_s']:,.0f} | "
                f"{r['cpu_ms_per_1k_read_tokens']:.0f} | {r['tokenize_seconds']['median']:.3f} |"
            )
        lines.append("")
    if "linearity" in results:
        lin = results["linearity"]
        ratios = lin["ratio_per_repeat"]
        cpu_ratios = lin["cpu_ratio_per_repeat"]
        lines += [
            "## Cost per token: long vs short texts (windows mode)",
            "",
            "| tokens/text | texts | tokens read | wall us per token read | "
            "CPU us per token read |",
            "|---|---|---|---|---|",
            f"| {lin['short_tokens_per_text']:,} | {lin['short_texts']} | "
            f"{lin['short_tokens_read']:,} | {_range(lin['short_us_per_token'], '{:.1f}')} | "
            f"{_range(lin['short_cpu_us_per_token'], '{:.1f}')} |",
            f"| {lin['long_tokens_per_text']:,} | {lin['long_texts']} | "
            f"{lin['long_tokens_read']:,} | {_range(lin['long_us_per_token'], '{:.1f}')} | "
            f"{_range(lin['long_cpu_us_per_token'], '{:.1f}')} |",
            "",
            f"Ratio (long / short, per token), per alternating repeat: median "
            f"{lin['ratio_median']:.2f} (range {min(ratios):.2f}-{max(ratios):.2f}); ratio of "
            f"the medians {lin['ratio_of_medians']:.2f}. In CPU time: median "
            f"{lin['cpu_ratio_median']:.2f} (range {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}). "
            f"Goal: at most {lin['goal']}.",
            "",
        ]
    if "step" in results:
        target = results["step"][0]["completions"]
        lines += [
            f"## The DRA step: encode + adjust_rewards, {target} completions",
            "",
            "| tokens/text | groups of | measured on | step s (measured) | embed CPU s | "
            f"step s for {target} | adjust_rewards ms | adjust share |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["step"]:
            lo, hi = r["step_seconds_for_completions_range"]
            full = f"{r['step_seconds_for_completions']:.1f} ({lo:.1f}-{hi:.1f})"
            if r["derived"]:
                full += f", derived (x {r['completions'] / r['measured_completions']:.0f})"
            else:
                full += ", measured"
            lines.append(
                f"| {r['tokens_per_text']:,} | {r['group_size']} | "
                f"{r['measured_completions']} | {_range(r['step_seconds'])} | "
                f"{_range(r['embed_cpu_seconds'], '{:.1f}')} | {full} | "
                f"{_range(r['adjust_ms'], '{:.2f}')} | {r['adjust_share_of_step']:.1e} |"
            )
        lines.append("")
    return "\n".join(lines)


def _loads(values: Sequence[float] | None) -> str:
    return "n/a" if not values else ", ".join(f"{v:.2f}" for v in values)


def _write(out: Path, results: dict[str, Any]) -> None:
    (out / "bench.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(render_markdown(results) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for bench.json, bench.md")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--model", default=None, help="model name or directory (bundled)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every timing")
    parser.add_argument("--step-max-tokens", type=int, default=STEP_MAX_TOKENS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    scale = 16 if args.quick else 1

    start = time.perf_counter()
    embedders = {
        mode: Embedder(args.model, device=args.device, batch_size=args.batch_size, long_text=mode)
        for mode in LONG_TEXT_MODES
    }
    load = (time.perf_counter() - start) / len(embedders)
    windows = embedders["windows"]
    pool = TextPool.from_traces(windows)
    results: dict[str, Any] = {
        "environment": environment(device, windows.model_name),
        "window_tokens": windows.window_tokens,
        "batch_size": args.batch_size,
        "load_seconds": load,
        "repeats": args.repeats,
        "quick": args.quick,
    }
    print(f"model loaded ({load:.1f} s each); throughput ...", flush=True)
    results["throughput"] = measure_throughput(
        embedders, pool, LENGTHS, args.repeats, THROUGHPUT_TOKENS // scale
    )
    _write(args.out, results)
    print("linearity ...", flush=True)
    results["linearity"] = measure_linearity(
        windows, pool, max(args.repeats, 5), budget=LINEARITY_TOKENS // scale
    )
    _write(args.out, results)
    print("DRA step ...", flush=True)
    results["step"] = measure_step(
        windows,
        pool,
        LENGTHS,
        args.repeats,
        completions=STEP_COMPLETIONS // scale,
        max_tokens=args.step_max_tokens // scale,
        derive_from=STEP_DERIVE_FROM // (4 if args.quick else 1),
    )
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _write(args.out, results)
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
