"""The ``dra-kernels`` command: embed rollouts, apply DRA, analyse diversity, benchmark.

Exit codes: 0 success, 1 bad input (unreadable or invalid rollout file, model that cannot be
loaded, missing optional dependency), 2 usage error (unknown option, invalid option value).
Needs the ``cli`` extra: ``pip install 'dra-kernels[cli]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dra_kernels import __version__
from dra_kernels.api import adjust_rewards, group_advantages, smi_scores
from dra_kernels.rollouts import RolloutError, Rollouts, read_rollouts, write_rows

__all__ = ["build_parser", "main"]

PROG = "dra-kernels"
OUTPUT_FIELDS = ("smi", "reward_adjusted", "advantage", "advantage_dra")
_SUMMARY_ROWS = 20

_ADJUST_EXAMPLES = """\
examples:
  dra-kernels adjust rollouts.jsonl -o adjusted.jsonl
  dra-kernels adjust rollouts.csv -o adjusted.csv --group-field prompt_id --scale none
  dra-kernels adjust rollouts.jsonl -o out.jsonl --model jinaai/jina-embeddings-v2-small-en \\
      --trust-remote-code --device cuda

Each output row is the input row plus: smi (similarity of the completion to the rest of its
group), reward_adjusted = reward / (1 + smi), advantage (GRPO advantage of the original reward)
and advantage_dra (of the adjusted reward). Existing fields of those names are replaced.
"""

_ANALYZE_EXAMPLES = """\
examples:
  dra-kernels analyze rollouts.jsonl
  dra-kernels analyze rollouts.jsonl --plot pvalues.png -o per_prompt.csv

For each prompt: Spearman's rank correlation, over the pairs of its completions, between the
absolute reward difference and the embedding distance (1 - cosine). The DRA paper found p > 0.05
for more than 80% of prompts: rewards that ignore how different the reasoning is.
"""

_DEMO_EXAMPLES = """\
examples:
  dra-kernels demo
  dra-kernels demo -o outputs/demo --device cpu

Runs adjust and analyze on the bundled hand-written sample (12 math problems x 7 completions,
rewards from a \\boxed{} answer checker) and writes adjusted.jsonl, analysis.csv and pvalues.png.
"""

_BENCH_EXAMPLES = """\
examples:
  dra-kernels bench --help      (the benchmark's own options)
  dra-kernels bench
"""

_MAIN_EXAMPLES = """\
examples:
  dra-kernels demo                                   try it on the bundled sample
  dra-kernels adjust rollouts.jsonl -o adjusted.jsonl
  dra-kernels analyze rollouts.jsonl --plot pvalues.png
  dra-kernels bench

Rollout files: JSONL or CSV, one completion per row, with a group key (default field: prompt), the
completion text (completion) and a numeric reward (reward); other fields pass through.
"""


class _UsageError(Exception):
    """An option value found invalid after parsing: exit code 2."""


# ----------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _finite_float(low: float, *, inclusive: bool) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = np.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text}")
        return value

    return parse


def _alpha(text: str) -> float:
    value = _finite_float(0.0, inclusive=False)(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a level in (0, 1), got {text}")
    return value


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rollout file")
    group.add_argument("input", metavar="IN", help="rollout file (.jsonl or .csv)")
    group.add_argument(
        "--format", choices=("jsonl", "csv"), help="file format (default: from the suffix)"
    )
    group.add_argument(
        "--group-field",
        default="prompt",
        metavar="NAME",
        help="field grouping completions: prompt text or an id (default: prompt)",
    )
    group.add_argument(
        "--completion-field",
        default="completion",
        metavar="NAME",
        help="field with the completion text (default: completion)",
    )
    group.add_argument(
        "--reward-field",
        default="reward",
        metavar="NAME",
        help="field with the numeric reward (default: reward)",
    )


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("embedding")
    group.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_DIR",
        help="sentence-transformers model name or directory (default: the bundled "
        "all-MiniLM-L6-v2, loaded offline)",
    )
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: auto)")
    group.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="model weights dtype (default: float32)",
    )
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="windows per forward pass (default: 32)",
    )
    group.add_argument(
        "--long-text",
        choices=("windows", "head", "head_tail"),
        default="windows",
        help="how completions longer than the model's window are read: windows = every token, "
        "in consecutive windows averaged by token count (default); head = the first window only; "
        "head_tail = one window of the first and last tokens. Cuts are reported",
    )
    group.add_argument(
        "--window-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="tokens per window, special tokens included (default: the model's sequence "
        "length, 256 for the default model)",
    )
    group.add_argument(
        "--window-overlap",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="tokens shared by consecutive windows (default: 0)",
    )
    group.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="text tokens read per completion at most; longer ones are cut, with a note "
        "(default: all of them)",
    )
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow models with custom code (e.g. jina-embeddings-v2)",
    )
    group.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (they are shown only when stderr is a terminal anyway)",
    )


def _add_adjust_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DRA")
    group.add_argument(
        "--scale",
        choices=("std", "none"),
        default="std",
        help="advantages: std = GRPO (r - mean) / (std + eps), none = DR.GRPO r - mean "
        "(default: std)",
    )
    group.add_argument(
        "--eps",
        type=_finite_float(0.0, inclusive=True),
        default=1e-4,
        help="added to the group std (default: 1e-4)",
    )
    group.add_argument(
        "--min-denominator",
        type=_finite_float(0.0, inclusive=False),
        default=0.1,
        metavar="X",
        help="lower clamp of 1 + SMI (default: 0.1)",
    )
    group.add_argument(
        "--backend",
        choices=("auto", "torch", "triton"),
        default="auto",
        help="DRA implementation (default: auto)",
    )


def _add_analyze_options(parser: argparse.ArgumentParser, *, files: bool) -> None:
    group = parser.add_argument_group("analysis")
    group.add_argument(
        "--alpha", type=_alpha, default=0.05, help="significance level (default: 0.05)"
    )
    if files:
        group.add_argument("--plot", metavar="FILE.png", help="write the p-value histogram")
        group.add_argument(
            "-o",
            "--output",
            metavar="FILE",
            help="write one row per prompt (rho, p-value) as .csv or .jsonl",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (the ``bench`` options are added when that subcommand runs)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Diversity-aware Reward Adjustment (DRA) for GRPO rollouts: embed "
        "completions, adjust rewards, analyse whether rewards see reasoning diversity.",
        epilog=_MAIN_EXAMPLES,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    adjust = sub.add_parser(
        "adjust",
        help="apply DRA to a rollout file and write the adjusted rows",
        description="Embed the completions, divide each reward by 1 + SMI (its summed cosine "
        "similarity to the other completions of its group), write every row with its SMI, "
        "adjusted reward and GRPO advantages before and after, and print a per-group summary.",
        epilog=_ADJUST_EXAMPLES,
        formatter_class=_formatter,
    )
    _add_input_options(adjust)
    adjust.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (.jsonl or .csv; written atomically)",
    )
    _add_adjust_options(adjust)
    _add_embed_options(adjust)

    analyze = sub.add_parser(
        "analyze",
        help="diversity-quality analysis (Spearman per prompt)",
        description="The DRA paper's diversity-quality analysis of a rollout file.",
        epilog=_ANALYZE_EXAMPLES,
        formatter_class=_formatter,
    )
    _add_input_options(analyze)
    _add_analyze_options(analyze, files=True)
    _add_embed_options(analyze)

    demo = sub.add_parser(
        "demo",
        help="run adjust and analyze on the bundled sample",
        description="Run adjust and analyze on the bundled hand-written sample.",
        epilog=_DEMO_EXAMPLES,
        formatter_class=_formatter,
    )
    demo.add_argument(
        "-o",
        "--output-dir",
        default="dra-demo",
        metavar="DIR",
        help="where to write the outputs (default: ./dra-demo, created if missing)",
    )
    _add_adjust_options(demo)
    _add_analyze_options(demo, files=False)
    _add_embed_options(demo)

    sub.add_parser(
        "bench",
        help="benchmark the DRA implementations",
        description="Benchmark the DRA implementations (torch reference, Triton kernel).",
        epilog=_BENCH_EXAMPLES,
        formatter_class=_formatter,
    )
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv``: the first argument not starting with '-'."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


# ----------------------------------------------------------------------------- helpers


def _say(message: str = "") -> None:
    print(message, flush=True)


def _progress_wanted(args: argparse.Namespace) -> bool:
    if args.progress is False:
        return False
    return sys.stderr.isatty()


def _read(args: argparse.Namespace) -> Rollouts:
    return read_rollouts(
        args.input,
        group_field=args.group_field,
        completion_field=args.completion_field,
        reward_field=args.reward_field,
        format=args.format,
    )


def _check_output(path: str, *, what: str) -> None:
    """Fail before the slow work when an output cannot be written (bad input: exit 1)."""
    target = Path(path)
    if target.is_dir():
        raise RolloutError(path, f"cannot write the {what}: it is a directory")
    if not target.parent.is_dir():
        raise RolloutError(
            path, f"cannot write the {what}: no directory {os.fspath(target.parent)!r}"
        )


def _embed(rollouts: Rollouts, args: argparse.Namespace) -> torch.Tensor:
    import warnings

    from dra_kernels.embed import Embedder, TruncationWarning

    progress = _progress_wanted(args)
    embedder = Embedder(
        args.model,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        long_text=args.long_text,
        window_tokens=args.window_tokens,
        window_overlap=args.window_overlap,
        max_tokens=args.max_tokens,
        trust_remote_code=args.trust_remote_code,
        progress=progress,
    )
    with warnings.catch_warnings():
        # NOTE: the summary line below says the same, in the command's own words.
        warnings.simplefilter("ignore", TruncationWarning)
        embeddings = embedder.encode(rollouts.completions)
    stats = embedder.last_stats
    if stats is not None:
        line = (
            f"embedded {stats.texts} completions ({stats.tokens:,} tokens, {stats.windows:,} "
            f"windows of up to {embedder.window_tokens} tokens, long text: {args.long_text}); "
            f"{stats.share_read:.1%} of tokens read"
        )
        if stats.cut_texts:
            line += (
                f"; {stats.cut_texts} completions cut (--long-text {args.long_text}"
                + (f", --max-tokens {args.max_tokens}" if args.max_tokens is not None else "")
                + "): use --long-text windows without --max-tokens to read every token"
            )
        print(("note: " if stats.cut_texts else "") + line, file=sys.stderr)
    return embeddings


def _check_embed_options(args: argparse.Namespace) -> None:
    """Check the embedding options together, before any file is read or model loaded."""
    if not hasattr(args, "long_text"):
        return
    from dra_kernels.embed import EmbedderConfig

    options = {
        "model": args.model,
        "trust_remote_code": args.trust_remote_code,
        "long_text": args.long_text,
        "window_tokens": args.window_tokens,
        "window_overlap": args.window_overlap,
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
    }
    try:
        EmbedderConfig.from_options(options)
    except (TypeError, ValueError) as exc:
        raise _UsageError(f"--{str(exc).replace('_', '-', 1)}") from None


def _short(text: Any, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _adjust(
    rollouts: Rollouts, embeddings: torch.Tensor, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The output rows, and a per-group summary printed to stdout."""
    rewards = np.asarray(rollouts.rewards, dtype=np.float64)
    emb = embeddings.to(torch.float64).numpy()
    ids = rollouts.group_ids
    smi = smi_scores(emb, ids, backend=args.backend)
    adjusted = adjust_rewards(
        rewards, emb, ids, backend=args.backend, min_denominator=args.min_denominator
    )
    before = group_advantages(rewards, ids, scale=args.scale, eps=args.eps)
    after = group_advantages(adjusted, ids, scale=args.scale, eps=args.eps)
    rows = []
    for index, row in enumerate(rollouts.rows):
        out = dict(row)
        out["smi"] = float(smi[index])
        out["reward_adjusted"] = float(adjusted[index])
        out["advantage"] = float(before[index])
        out["advantage_dra"] = float(after[index])
        rows.append(out)
    _print_summary(rollouts, np.asarray(smi), np.asarray(adjusted))
    return rows


def _print_summary(rollouts: Rollouts, smi: np.ndarray, adjusted: np.ndarray) -> None:
    members: dict[Any, list[int]] = {}
    for index, key in enumerate(rollouts.group_ids):
        members.setdefault(key, []).append(index)
    rewards = np.asarray(rollouts.rewards)
    _say(f"{len(rollouts)} completions in {len(members)} groups")
    _say(f"{'group':<34} {'n':>3} {'reward':>7} {'SMI min..max':>13} {'adjusted':>9}")
    for shown, (key, rows) in enumerate(members.items()):
        if shown == _SUMMARY_ROWS:
            _say(f"... {len(members) - _SUMMARY_ROWS} more groups (all rows are in the output)")
            break
        s = smi[rows]
        _say(
            f"{_short(key, 34):<34} {len(rows):>3} {rewards[rows].mean():>7.3f} "
            f"{s.min():>6.2f}..{s.max():<5.2f} {adjusted[rows].mean():>9.3f}"
        )
    ratio = np.divide(adjusted, rewards, out=np.full_like(adjusted, np.nan), where=rewards != 0)
    if np.isfinite(ratio).any():
        _say(
            f"mean SMI {smi.mean():.3f}; nonzero rewards scaled by "
            f"{np.nanmin(ratio):.3f} to {np.nanmax(ratio):.3f}"
        )


def _analyze(rollouts: Rollouts, embeddings: torch.Tensor, alpha: float) -> Any:
    from dra_kernels.analysis import diversity_quality

    report = diversity_quality(rollouts.rewards, embeddings, rollouts.group_ids, alpha=alpha)
    _say(report.summary())
    return report


def _plot(report: Any, path: str) -> None:
    from dra_kernels.analysis import plot_p_values

    plot_p_values(report, path)


# ----------------------------------------------------------------------------- commands


def _cmd_adjust(args: argparse.Namespace) -> int:
    rollouts = _read(args)
    out_format = _output_format(args.output, args.format)
    _check_output(args.output, what="output")
    embeddings = _embed(rollouts, args)
    rows = _adjust(rollouts, embeddings, args)
    write_rows(args.output, rows, format=out_format, fieldnames=_fieldnames(rollouts))
    _say(f"wrote {len(rows)} rows to {args.output}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    rollouts = _read(args)
    for path, what in ((args.plot, "plot"), (args.output, "per-prompt table")):
        if path is not None:
            _check_output(path, what=what)
    if args.output is not None:
        _output_format(args.output, None)
    embeddings = _embed(rollouts, args)
    report = _analyze(rollouts, embeddings, args.alpha)
    if args.output is not None:
        write_rows(args.output, report.rows())
        _say(f"wrote {len(report.groups)} prompts to {args.output}")
    if args.plot is not None:
        _plot(report, args.plot)
        _say(f"wrote the p-value histogram to {args.plot}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dra_kernels.data import sample_path

    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RolloutError(out_dir, "cannot write the demo outputs here: it is a file")
    source = sample_path()
    rollouts = read_rollouts(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    _say(f"sample: {source} (hand-written, {len(rollouts)} completions)")
    embeddings = _embed(rollouts, args)
    _say("\n== adjust ==")
    rows = _adjust(rollouts, embeddings, args)
    adjusted_path = out_dir / "adjusted.jsonl"
    write_rows(adjusted_path, rows, fieldnames=_fieldnames(rollouts))
    _say("\n== analyze ==")
    report = _analyze(rollouts, embeddings, args.alpha)
    table_path = out_dir / "analysis.csv"
    write_rows(table_path, report.rows())
    plot_path = out_dir / "pvalues.png"
    _plot(report, os.fspath(plot_path))
    _say("\noutputs:")
    _say(f"  {adjusted_path}  every completion with smi, reward_adjusted, advantage(_dra)")
    _say(f"  {table_path}  Spearman rho and p-value per prompt")
    _say(f"  {plot_path}  histogram of the p-values")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from dra_kernels import benchmark

    return int(benchmark.run(args))


def _fieldnames(rollouts: Rollouts) -> list[str]:
    return [*(f for f in rollouts.fieldnames if f not in OUTPUT_FIELDS), *OUTPUT_FIELDS]


def _output_format(path: str, input_format: str | None) -> str | None:
    """The output's format: its suffix, else the input's --format."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json", ".csv"):
        return None
    if input_format is not None:
        return input_format
    raise _UsageError(f"cannot tell the output format of {path!r}: use a .jsonl or .csv name")


_COMMANDS = {
    "adjust": _cmd_adjust,
    "analyze": _cmd_analyze,
    "demo": _cmd_demo,
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 bad input, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if _command_name(argv) == "bench":
        # NOTE: imported only for this subcommand, so the others never pay for it.
        try:
            from dra_kernels import benchmark
        except ImportError as exc:
            print(f"{PROG} bench: the benchmark is not available: {exc}", file=sys.stderr)
            return 1
        benchmark.add_arguments(_subparser(parser, "bench"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _check_embed_options(args)
        return _COMMANDS[args.command](args)
    except _UsageError as exc:
        _subparser(parser, args.command).print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (RolloutError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"{PROG} {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return textwrap.shorten(text, width=2000, placeholder=" ...")


if __name__ == "__main__":
    raise SystemExit(main())
