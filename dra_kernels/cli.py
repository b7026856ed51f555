"""The ``dra-kernels`` command: embed rollouts, apply DRA, analyse diversity.

Exit codes: 0 success, 1 bad input (unreadable or invalid rollout file, model that cannot be
loaded, missing optional dependency), 2 usage error (unknown option, invalid option value).
Needs the ``cli`` extra: ``pip install -e ".[cli]"`` in a clone of the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import signal
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dra_kernels import __version__
from dra_kernels._words import counted
from dra_kernels.rollouts import (
    STDIN,
    RolloutError,
    RolloutIndex,
    clean_stale_temporaries,
    readable_again,
    scan_rollouts,
    write_rows,
)

if TYPE_CHECKING:
    import numpy as np

# NOTE: numpy, torch, the library's functions and the embedding model are imported inside the
# commands that use them, so that ``--help`` and usage errors answer at once (torch alone takes
# seconds to import).

__all__ = ["build_parser", "main"]

PROG = "dra-kernels"
OUTPUT_FIELDS = ("smi", "reward_adjusted", "advantage", "advantage_dra")
_SUMMARY_ROWS = 20
_REWARD_LIMIT = 1e100
"""Largest |reward| / min_denominator taken: DRA's and the advantages' float64 arithmetic
(squared deviations summed over a group) stays finite below it for any group size."""

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
rewards from a \\boxed{} answer checker): shows one prompt completion by completion (reward, SMI,
adjusted reward, GRPO and DRA-GRPO advantages), then every prompt, then the diversity analysis, and
writes adjusted.jsonl, analysis.csv and pvalues.png.
"""

BENCH_HOWTO = """\
The benchmarks live in the benchmarks/ folder of the source repository, not in the installed
package. From a clone, with the package installed:

  python -m benchmarks.run --help                 the runner's options
  python -m benchmarks.run --quick --out out/bench  a reduced grid (seconds on CPU)
  python -m benchmarks.run --out out/bench          the full grid (CUDA) or the CPU grid
  python -m benchmarks.gpu_session --out OUT        everything a GPU session measures

See docs/performance.md for the method and the results.
"""

_BENCH_EXAMPLES = """\
examples:
  python -m benchmarks.run --help      (from a clone of the repository)
"""

_MAIN_EXAMPLES = """\
examples:
  dra-kernels demo                                   try it on the bundled sample
  dra-kernels adjust rollouts.jsonl -o adjusted.jsonl
  dra-kernels analyze rollouts.jsonl --plot pvalues.png

Rollout files: JSONL or CSV, one completion per row, with a group key (default field: prompt), the
completion text (completion) and a numeric reward (reward); other fields pass through.
"""


class _UsageError(Exception):
    """An option value found invalid after parsing: exit code 2."""


def _usage_error_text(prog: str, message: str) -> str:
    return f"{prog}: error: {message}\nrun '{prog} --help' for usage\n"


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors (exit 2) are one line and a pointer to ``--help``,
    not the usage block (17 lines for a subcommand) first. The package's other commands use it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, _usage_error_text(self.prog, message))


def add_file_options(
    parser: Any,
    name: str,
    what: str,
    fields: Sequence[tuple[str, str, str]],
    **positional: Any,
) -> None:
    """The rollout file argument ``name`` (``what`` it is; ``positional``: more of its
    :meth:`~argparse.ArgumentParser.add_argument` keywords), ``--format``, and a ``--NAME-field``
    option per ``(NAME, default, what it holds)``."""
    parser.add_argument(name, help=what, **positional)
    parser.add_argument(
        "--format", choices=("jsonl", "csv"), help="file format (default: from the suffix)"
    )
    for field, default, holds in fields:
        parser.add_argument(
            f"--{field}-field",
            default=default,
            metavar="NAME",
            help=f"{holds} (default: {default})",
        )


# ----------------------------------------------------------------------------- parser


def _option_type(kind: type, what: str, ok: Callable[[Any], bool]) -> Any:
    """An argparse ``type``: ``kind(text)`` if ``ok`` says so, else a usage error expecting
    ``what``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


_COUNT = _option_type(int, "a positive integer", lambda n: n >= 1)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_embed_options(group: Any) -> None:
    group.add_argument(
        "--model",
        metavar="NAME_OR_DIR",
        help="sentence-transformers model name or directory (default: the bundled "
        "all-MiniLM-L6-v2, loaded offline)",
    )
    group.add_argument("--device", help="cpu, cuda, cuda:1... (default: auto)")
    group.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        help="model weights dtype (default: float32)",
    )
    count = functools.partial(group.add_argument, type=_COUNT, metavar="N")
    count("--batch-size", default=32, help="windows per forward pass (default: 32)")
    group.add_argument(
        "--long-text",
        choices=("windows", "head", "head_tail"),
        default="windows",
        help="how completions longer than the model's window are read: windows = every token, "
        "in consecutive windows averaged by token count (default); head = the first window only; "
        "head_tail = one window of the first and last tokens. Cuts are reported",
    )
    count(
        "--window-tokens",
        help="tokens per window, special tokens included (default: the model's sequence "
        "length, 256 for the default model)",
    )
    count(
        "--window-overlap",
        type=_option_type(int, "an integer >= 0", lambda n: n >= 0),
        default=0,
        help="tokens shared by consecutive windows (default: 0)",
    )
    count(
        "--max-tokens",
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


def _add_adjust_options(group: Any) -> None:
    group.add_argument(
        "--scale",
        choices=("std", "none"),
        default="std",
        help="advantages: std = GRPO (r - mean) / (std + eps), none = DR.GRPO r - mean "
        "(default: std)",
    )
    group.add_argument(
        "--eps",
        type=_option_type(float, "a finite number >= 0", lambda x: 0 <= x < math.inf),
        default=1e-4,
        help="added to the group std (default: 1e-4)",
    )
    group.add_argument(
        "--min-denominator",
        type=_option_type(float, "a finite number > 0", lambda x: 0 < x < math.inf),
        default=0.1,
        metavar="X",
        help="lower clamp of 1 + SMI (default: 0.1)",
    )
    for flag, choices, what in (  # the default is the first choice
        ("--backend", ("auto", "torch", "triton"), "DRA implementation (default: auto)"),
        (
            "--measure",
            ("graph_cut", "facility_location", "log_det"),
            "the SMI: graph_cut (the paper's sum of cosines), facility_location or log_det "
            "(docs/measures.md; default: graph_cut)",
        ),
    ):
        group.add_argument(flag, choices=choices, default=choices[0], help=what)
    for flag, what in (
        ("--eta", "facility_location / log_det: query magnification"),
        ("--lam", "log_det: ridge added to the similarity matrix"),
    ):
        group.add_argument(flag, type=float, default=1.0, help=f"{what} (default: 1.0)")


def _add_analyze_options(group: Any, *, files: bool) -> None:
    group.add_argument(
        "--alpha",
        type=_option_type(float, "a level in (0, 1)", lambda x: 0 < x < 1),
        default=0.05,
        help="significance level (default: 0.05)",
    )
    if files:
        group.add_argument("--plot", metavar="FILE.png", help="write the p-value histogram")
        group.add_argument(
            "-o",
            "--output",
            metavar="FILE",
            help="write one row per prompt (rho, p-value) as .csv or .jsonl",
        )


_COMMAND_TEXTS = (  # name, its line in the command list, description, epilog
    (
        "adjust",
        "apply DRA to a rollout file and write the adjusted rows",
        "Embed the completions, divide each reward by 1 + SMI (its summed cosine similarity to the "
        "other completions of its group), write every row with its SMI, adjusted reward and GRPO "
        "advantages before and after, and print a per-group summary.",
        _ADJUST_EXAMPLES,
    ),
    (
        "analyze",
        "diversity-quality analysis (Spearman per prompt)",
        "The DRA paper's diversity-quality analysis of a rollout file.",
        _ANALYZE_EXAMPLES,
    ),
    (
        "demo",
        "run adjust and analyze on the bundled sample",
        "Run adjust and analyze on the bundled hand-written sample.",
        _DEMO_EXAMPLES,
    ),
    (  # NOTE: `bench` takes no options; main ignores what follows it
        "bench",
        "how to run the benchmarks (from a clone of the repository)",
        BENCH_HOWTO,
        _BENCH_EXAMPLES,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = CommandParser(
        prog=PROG,
        description="Diversity-aware Reward Adjustment (DRA) for GRPO rollouts: embed "
        "completions, adjust rewards, analyse whether rewards see reasoning diversity.",
        epilog=_MAIN_EXAMPLES,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    adjust, analyze, demo, _ = (
        sub.add_parser(name, help=line, description=text, epilog=epilog, formatter_class=_formatter)
        for name, line, text, epilog in _COMMAND_TEXTS
    )
    for command in (adjust, analyze):
        add_file_options(
            command.add_argument_group("rollout file"),
            "input",
            "rollout file (.jsonl or .csv); '-' reads standard input (with --format), as do pipes "
            "and process substitutions, each read once",
            (
                ("group", "prompt", "field grouping completions: prompt text or an id"),
                ("completion", "completion", "field with the completion text"),
                ("reward", "reward", "field with the numeric reward"),
            ),
            metavar="IN",
        )
    adjust.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (.jsonl or .csv; written atomically)",
    )
    demo.add_argument(
        "-o",
        "--output-dir",
        metavar="DIR",
        help="where to write the outputs, created if missing (default: a new folder "
        "dra-demo-XXXX in the system's temporary directory)",
    )
    for command in (adjust, demo):
        _add_adjust_options(command.add_argument_group("DRA"))
    for command in (analyze, demo):
        _add_analyze_options(command.add_argument_group("analysis"), files=command is analyze)
    for command in (adjust, analyze, demo):
        _add_embed_options(command.add_argument_group("embedding"))
    return parser


# ----------------------------------------------------------------------------- helpers


def _say(message: str = "") -> None:
    try:
        try:
            print(message, flush=True)
        except UnicodeEncodeError:  # a terminal that cannot show some character of a group key
            encoding = sys.stdout.encoding or "ascii"
            print(message.encode(encoding, "backslashreplace").decode(encoding), flush=True)
    except BrokenPipeError:
        # NOTE: the reader of the summary left (`| head`): the summary ends, the work goes on and
        # the output file is written in full. Later writes to stdout go to /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _say_wrapped(message: str) -> None:
    """A paragraph of prose, wrapped to 100 columns."""
    _say(textwrap.fill(message, width=100, break_on_hyphens=False))


def _check_output(path: str | os.PathLike[str], *, what: str) -> None:
    """Fail before the slow work when an output cannot be written (bad input: exit 1), and remove
    the temporary files that runs killed hard left beside it."""
    target = Path(path)
    parent = os.fspath(target.parent)
    if target.is_dir():
        problem = "it is a directory"
    elif not target.parent.is_dir():
        problem = f"no directory {parent!r}"
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = f"no permission to write in {parent!r}"
    else:
        for name in clean_stale_temporaries(parent):
            print(
                f"note: removed {os.path.join(parent, name)}, a temporary file left by an "
                "interrupted run",
                file=sys.stderr,
            )
        return
    raise RolloutError(path, f"cannot write the {what}: {problem}")


# ----------------------------------------------------------------------------- option checks


def _check_options(args: argparse.Namespace) -> None:
    """Check every option of the command before any file is read or model loaded: exit 2."""
    if args.command == "bench":
        return  # it only says where the benchmarks are
    args.dra_step = _dra_step(args)
    for option in ("group_field", "completion_field", "reward_field"):
        name = getattr(args, option, None)
        if name is not None and not name.strip():
            raise _UsageError(f"{_flag(option)} must name a field, got {name!r}")
    if args.command == "adjust":
        _output_format(args.output, args.format)
    if args.command == "analyze" and args.output is not None:
        _output_format(args.output, None)
        if args.plot is not None and Path(args.plot).resolve() == Path(args.output).resolve():
            raise _UsageError(f"--plot and --output name the same file, {args.plot!r}")


def _flag(name: str) -> str:
    """How the command spells option ``name``: ``--min-denominator``."""
    return "--" + name.replace("_", "-")


def _dra_step(args: argparse.Namespace) -> Any:
    """The :class:`~dra_kernels.step.DRAStep` of the command's options, checked by the library's
    rules, every error naming the flag."""
    from dra_kernels.embed import EMBEDDER_OPTIONS
    from dra_kernels.step import STEP_OPTIONS, DRAStep

    names = (*STEP_OPTIONS, *EMBEDDER_OPTIONS)
    options = {name: getattr(args, name, None) for name in names}
    try:
        return DRAStep.from_options(options, spell=_flag, device="cpu")  # NOTE: numpy data
    except (TypeError, ValueError, RuntimeError) as exc:
        message = str(exc)
        if message.startswith("--eps"):
            message += f" (with --scale {args.scale})"
        raise _UsageError(message) from None


def _checked_rewards(index: RolloutIndex, min_denominator: float | None) -> RolloutIndex:
    """``index``, once no reward is so large that the float64 arithmetic could overflow (bad
    input: exit 1). DRA divides by at most ``min_denominator`` (``None``: no division)."""
    import numpy as np

    rewards = np.frombuffer(index.rewards, dtype=np.float64)
    limit = _REWARD_LIMIT * (1.0 if min_denominator is None else min_denominator)
    too_large = np.flatnonzero(np.abs(rewards) > limit)
    if too_large.size:
        row = int(too_large[0])
        how = "" if min_denominator is None else f" ({_REWARD_LIMIT:g} x --min-denominator)"
        raise RolloutError(
            index.path,
            f"reward {float(rewards[row])!r} is too large: this command takes |reward| <= "
            f"{limit:g}{how}, beyond which its float64 arithmetic can overflow",
            line=int(index.lines[row]),
            field=index.fields.reward,
        )
    return index


def _scan(args: argparse.Namespace, min_denominator: float | None) -> RolloutIndex:
    index = scan_rollouts(
        "<stdin>" if args.input == STDIN else args.input,
        group_field=args.group_field,
        completion_field=args.completion_field,
        reward_field=args.reward_field,
        format=args.format,
        data_path=args.input_data,
    )
    return _checked_rewards(index, min_denominator)


# ----------------------------------------------------------------------------- embedding


def _embed(index: RolloutIndex, args: argparse.Namespace) -> np.ndarray:
    """``[N, D]`` float32 embeddings of the completions, read from the file a chunk at a time."""
    import dataclasses
    import warnings

    import numpy as np

    from dra_kernels.embed import EmbedStats, TruncationWarning, WindowError, progress_bar
    from dra_kernels.step import spelled

    progress = args.progress is not False and sys.stderr.isatty()
    try:
        embedder = args.dra_step.embedder.build(progress=progress)
    except WindowError as exc:
        # NOTE: the special tokens per window are known only once the tokenizer has loaded
        raise _UsageError(f"{spelled(exc, _flag)} (found when the model loaded)") from None
    embedder.progress = False  # NOTE: one bar over the whole file below, not one per chunk
    bar = progress_bar(len(index), progress)
    out = np.empty((0, 0), dtype=np.float32)
    totals = np.zeros(len(dataclasses.fields(EmbedStats)), dtype=np.int64)
    try:
        for first, texts in index.completions():
            with warnings.catch_warnings():  # NOTE: the summary line below says the same
                warnings.simplefilter("ignore", TruncationWarning)
                vectors = embedder.encode(texts).numpy()
            if first == 0:
                out = np.empty((len(index), vectors.shape[1]), dtype=np.float32)
            out[first : first + len(texts)] = vectors
            if embedder.last_stats is not None:
                totals += dataclasses.astuple(embedder.last_stats)
            bar.update(len(texts))
    finally:
        bar.close()
    stats = EmbedStats(*totals.tolist())
    line = (
        f"embedded {counted(stats.texts, 'completion')} ({counted(stats.tokens, 'token', spec=',')}"
        f", {counted(stats.windows, 'window', spec=',')} of up to "
        f"{counted(embedder.window_tokens, 'token')}, long text: {args.long_text}); "
        f"{stats.share_read:.1%} of tokens read"
    )
    if stats.cut_texts:
        line += (
            f"; {counted(stats.cut_texts, 'completion')} cut (--long-text {args.long_text}"
            + (f", --max-tokens {args.max_tokens}" if args.max_tokens is not None else "")
            + "): use --long-text windows without --max-tokens to read every token"
        )
    print(("note: " if stats.cut_texts else "") + line, file=sys.stderr)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise RolloutError(
            index.path,
            "the model's embedding of this completion is not finite (NaN or inf; "
            f"{counted(bad.size, 'completion')} in all); try --dtype float32",
            line=int(index.lines[int(bad[0])]),
            field=index.fields.completion,
        )
    return out


# ----------------------------------------------------------------------------- DRA and reports


def _short(text: Any, width: int) -> str:
    flat = " ".join(str(text).split())
    flat = flat if len(flat) <= width else flat[: width - 3] + "..."
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in flat)


def _dra_values(
    index: RolloutIndex, embeddings: np.ndarray, args: argparse.Namespace
) -> dict[str, np.ndarray]:
    """SMI, adjusted rewards and advantages of every row, as the library computes them."""
    import numpy as np

    from dra_kernels.api import group_advantages

    rewards = np.frombuffer(index.rewards, dtype=np.float64)
    ids = np.frombuffer(index.group_codes, dtype=np.int64)
    step = args.dra_step
    # NOTE: float64 rewards: the step computes the SMI from the embeddings in float64.
    result = step(rewards, ids, embeddings=embeddings, num_groups=index.num_groups)
    values = {
        "smi": result.smi.numpy(),
        "reward_adjusted": result.adjusted.numpy(),
        "advantage": np.asarray(group_advantages(rewards, ids, scale=step.scale, eps=step.eps)),
        "advantage_dra": result.advantages.numpy(),
    }
    for name, column in values.items():  # cannot happen with checked rewards and embeddings
        bad = np.flatnonzero(~np.isfinite(column))
        if bad.size:
            raise RolloutError(
                index.path,
                f"{name} is {float(column[bad[0]])!r}, not finite",
                line=int(index.lines[int(bad[0])]),
            )
    return values


def _output_rows(index: RolloutIndex, values: dict) -> Iterator[dict[str, Any]]:
    """Each input row, read again from the file, with the output fields set."""
    for row_index, row in enumerate(index.rows()):
        row.update((name, float(values[name][row_index])) for name in OUTPUT_FIELDS)
        yield row


def _write_adjusted(path: Any, index: RolloutIndex, values: dict, format: str | None) -> int:
    """Every input row with the output fields, which go last (replacing input fields of the same
    names); the number of rows."""
    fieldnames = [*(f for f in index.fieldnames if f not in OUTPUT_FIELDS), *OUTPUT_FIELDS]
    return write_rows(path, _output_rows(index, values), format=format, fieldnames=fieldnames)


SUMMARY_COLUMNS = ("group", "n", "mean reward", "SMI min..max", "mean adjusted")


def _print_summary(index: RolloutIndex, smi: np.ndarray, adjusted: np.ndarray) -> None:
    import numpy as np

    rewards = np.frombuffer(index.rewards, dtype=np.float64)
    codes = np.frombuffer(index.group_codes, dtype=np.int64)
    groups = index.num_groups
    _say(f"{counted(len(index), 'completion')} in {counted(groups, 'group')}")
    _say("{:<34} {:>3} {:>11} {:>13} {:>13}".format(*SUMMARY_COLUMNS))
    for code in range(min(groups, _SUMMARY_ROWS)):  # codes number groups by first appearance
        rows = np.flatnonzero(codes == code)
        s = smi[rows]
        _say(
            f"{_short(index.group_keys[code], 34):<34} {len(rows):>3} "
            f"{rewards[rows].mean():>11.3f} {s.min():>6.2f}..{s.max():<5.2f} "
            f"{adjusted[rows].mean():>13.3f}"
        )
    if groups > _SUMMARY_ROWS:
        _say(f"... {counted(groups - _SUMMARY_ROWS, 'more group')} (all rows are in the output)")
    ratio = np.divide(adjusted, rewards, out=np.full_like(adjusted, np.nan), where=rewards != 0)
    if np.isfinite(ratio).any():
        _say(
            f"mean SMI {smi.mean():.3f}; nonzero rewards scaled by "
            f"{np.nanmin(ratio):.3f} to {np.nanmax(ratio):.3f}"
        )


def _analyze(index: RolloutIndex, embeddings: np.ndarray, alpha: float) -> Any:
    import numpy as np
    import torch

    from dra_kernels.analysis import diversity_quality

    rewards = np.frombuffer(index.rewards, dtype=np.float64)
    report = diversity_quality(rewards, torch.from_numpy(embeddings), index.group_ids, alpha=alpha)
    _say(report.summary())
    return report


# ----------------------------------------------------------------------------- commands


def _cmd_adjust(args: argparse.Namespace) -> int:
    out_format = _output_format(args.output, args.format)
    _check_output(args.output, what="output")
    index = _scan(args, args.min_denominator)
    values = _dra_values(index, _embed(index, args), args)
    _print_summary(index, values["smi"], values["reward_adjusted"])
    count = _write_adjusted(args.output, index, values, out_format)
    _say(f"wrote {counted(count, 'row')} to {args.output}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dra_kernels.analysis import plot_p_values

    for path, what in ((args.plot, "plot"), (args.output, "per-prompt table")):
        if path is not None:
            _check_output(path, what=what)
    index = _scan(args, None)
    report = _analyze(index, _embed(index, args), args.alpha)
    if args.output is not None:
        write_rows(args.output, report.rows())
        _say(f"wrote {counted(len(report.groups), 'prompt')} to {args.output}")
    if args.plot is not None:
        plot_p_values(report, args.plot)
        _say(f"wrote the p-value histogram to {args.plot}")
    return 0


_DEMO_FILES = ("adjusted.jsonl", "analysis.csv", "pvalues.png")
DEMO_PROMPT_ID = "p04"
"""The sample's prompt shown completion by completion (six people shaking hands)."""
DEMO_COLUMNS = ("completion (first words)", "reward", "SMI", "adjusted", "GRPO adv", "DRA adv")
SMI_DEFINITION = (
    "SMI of a completion = the sum of the cosine similarities between its embedding and those of "
    "the other completions of the same prompt (0 for a completion alone, n - 1 for n identical "
    "ones); DRA's adjusted reward = reward / (1 + SMI)."
)
_NORMALISATION = {  # --scale: (the advantage's formula, why only differences in a group matter)
    "std": (
        "(r - mean) / (std + eps)",
        "GRPO subtracts the group's mean and divides by its std, so multiplying every reward of a "
        "group by one number leaves its advantages as they were (up to eps). DRA moves the "
        "advantages only because its factor differs between completions: those most like the "
        "others (higher SMI) lose against the more distinct ones of the same reward.",
    ),
    "none": (
        "r - mean",
        "with --scale none the advantage is r - mean: a common factor scales a group's advantages "
        "but keeps their order and signs; what DRA changes is the spread between completions, "
        "those most like the others (higher SMI) losing against the more distinct ones of the "
        "same reward.",
    ),
}


def _print_one_prompt(index: RolloutIndex, values: dict, args: argparse.Namespace) -> None:
    """One prompt of the sample, completion by completion, and what DRA did to it."""
    import numpy as np

    codes = np.frombuffer(index.group_codes, dtype=np.int64)
    every_row = list(index.rows())  # the bundled sample: 84 rows
    chosen = [i for i, row in enumerate(every_row) if row.get("prompt_id") == DEMO_PROMPT_ID]
    rows = np.asarray(chosen or np.flatnonzero(codes == 0), dtype=np.int64)
    texts = [every_row[row][index.fields.completion] for row in rows.tolist()]
    rewards = np.frombuffer(index.rewards, dtype=np.float64)[rows]
    smi, adjusted, grpo, dra = (values[name][rows] for name in OUTPUT_FIELDS)
    key = index.group_keys[int(codes[rows[0]])]
    _say_wrapped(f"One prompt ({counted(len(rows), 'completion')}): {_short(key, 200)}")
    _say("{:<36} {:>6} {:>6} {:>8} {:>8} {:>8}".format(*DEMO_COLUMNS))
    for i, text in enumerate(texts):
        _say(
            f"{_short(text, 36):<36} {rewards[i]:>6.3g} {smi[i]:>6.3f} {adjusted[i]:>8.3f} "
            f"{grpo[i]:>+8.3f} {dra[i]:>+8.3f}"
        )
    formula, why = _NORMALISATION[args.scale]
    _say_wrapped(
        f"columns: adjusted = reward / (1 + SMI); GRPO adv = advantage of the reward, DRA adv = "
        f"of the adjusted reward, both {formula} within the prompt's group."
    )
    factors = 1.0 / np.maximum(1.0 + smi, args.min_denominator)
    low, high = factors.min(), factors.max()
    _say_wrapped(
        "Why every reward shrinks: "
        + (
            f"every SMI here is positive ({smi.min():.2f} to {smi.max():.2f}: sentence embeddings "
            "of texts on one problem point in similar directions), so each reward is divided by "
            f"1 + SMI and keeps {low:.0%} to {high:.0%} of its value."
            if (smi > 0).all()
            else f"a reward keeps 1 / (1 + SMI) of its value, here {low:.0%} to {high:.0%}; it "
            "shrinks where SMI > 0."
        )
    )
    _say_wrapped(f"Why only differences within a group matter: {why}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from dra_kernels.analysis import plot_p_values
    from dra_kernels.data import sample_path

    # NOTE: by default never inside the current directory, which may be a clone
    out_dir = Path(
        tempfile.mkdtemp(prefix="dra-demo-") if args.output_dir is None else args.output_dir
    )
    if out_dir.exists() and not out_dir.is_dir():
        raise RolloutError(out_dir, "cannot write the demo outputs here: it is a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _DEMO_FILES:
        _check_output(out_dir / name, what="demo output")
    source = sample_path()
    index = _checked_rewards(scan_rollouts(source), args.min_denominator)
    _say_wrapped(
        f"sample: {source} (hand-written: {counted(index.num_groups, 'math problem')}, "
        f"{counted(len(index), 'completion')}; reward 1 when the \\boxed{{}} answer is right, "
        "else 0)"
    )
    embeddings = _embed(index, args)
    values = _dra_values(index, embeddings, args)
    _say("\n== adjust ==")
    _say_wrapped(SMI_DEFINITION)
    _say("")
    _print_one_prompt(index, values, args)
    _say("\nEvery prompt (means over its completions):")
    _print_summary(index, values["smi"], values["reward_adjusted"])
    adjusted_path, table_path, plot_path = (out_dir / name for name in _DEMO_FILES)
    _write_adjusted(adjusted_path, index, values, None)
    _say("\n== analyze ==")
    report = _analyze(index, embeddings, args.alpha)
    write_rows(table_path, report.rows())
    plot_p_values(report, plot_path)
    _say("\noutputs:")
    _say(f"  {adjusted_path}  every completion with smi, reward_adjusted, advantage(_dra)")
    _say(f"  {table_path}  Spearman rho and p-value per prompt")
    _say(f"  {plot_path}  histogram of the p-values")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    print(
        f"{PROG} bench: error: the installed package runs no benchmark\n{BENCH_HOWTO}",
        file=sys.stderr,
    )
    return 2


def _output_format(path: str, input_format: str | None) -> str | None:
    """The output's format: its suffix, else the input's --format."""
    if Path(path).suffix.lower() in (".jsonl", ".ndjson", ".json", ".csv"):
        return None
    if input_format is not None:
        return input_format
    raise _UsageError(f"cannot tell the output format of {path!r}: use a .jsonl or .csv name")


_BAD_INPUT = (RolloutError, ValueError, TypeError, OSError, ImportError, RuntimeError, MemoryError)
"""Exit 1. RuntimeError: what torch raises while loading or running the model (a CUDA device that
fails to start, out of memory on the device)."""
_COMMANDS = {"adjust": _cmd_adjust, "analyze": _cmd_analyze, "demo": _cmd_demo, "bench": _cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 bad input, 2 usage).

    Every failure is reported in one ``dra-kernels <command>: error: ...`` line on stderr, never a
    traceback; a usage error adds ``run 'dra-kernels <command> --help' for usage``.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)  # None: sys.argv[1:]
        if extra and args.command != "bench":
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with contextlib.ExitStack() as stack:
            _check_options(args)
            stack.enter_context(_terminate_as_interrupt())
            if getattr(args, "input", None) is not None:
                args.input_data = stack.enter_context(readable_again(args.input))
            return _COMMANDS[args.command](args)
    except _UsageError as exc:
        print(_usage_error_text(f"{PROG} {args.command}", str(exc)), end="", file=sys.stderr)
        return 2
    except _BAD_INPUT as exc:
        print(f"{PROG} {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except _Terminated as exc:
        print(f"{PROG}: terminated ({signal.Signals(exc.signum).name})", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(
            f"{PROG} {args.command}: error: unexpected {type(exc).__name__}: {_describe(exc)} "
            "(please report this)",
            file=sys.stderr,
        )
        return 1


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that everything cleans up as on
    Ctrl-C (the output's temporary, the copy of a piped input)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_TERMINATING = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, ``timeout``, Slurm, Kubernetes, a closed terminal) handled as
    SIGINT while the command runs; the previous handlers come back after. Only the main thread
    can set handlers: elsewhere (``main()`` called from a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated(signum)

    previous = {signum: signal.signal(signum, handler) for signum in _TERMINATING}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _describe(exc: BaseException) -> str:
    text = "out of memory" if isinstance(exc, MemoryError) else str(exc) or type(exc).__name__
    return textwrap.shorten(text, width=2000, placeholder=" ...")


if __name__ == "__main__":
    raise SystemExit(main())
