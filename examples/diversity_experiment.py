"""Does DRA keep more solution strategies alive than plain GRPO? A laptop-sized experiment.

Each prompt of ``examples/data/strategies.json`` has several correct solution strategies, each
written as a few paraphrased completions, plus wrong completions. The policy is tabular: per
prompt, a softmax over that prompt's hand-written completions (uniform at the start). Each step
samples ``G`` completions per prompt, rewards 1 for correct and 0 for wrong, computes advantages
with the library (``dra_kernels.group_advantages`` for GRPO / DR.GRPO,
``dra_kernels.dra_advantages`` for DRA-GRPO / DRA-DR.GRPO, with embeddings of the completions
from the bundled all-MiniLM-L6-v2), and takes one on-policy policy-gradient step on the logits.
After every step it records, exactly from the policy's probabilities, the accuracy (expected
reward) and the number of distinct correct strategies the policy keeps (the exponential of the
entropy of its correct mass grouped by strategy), averaged over prompts.

Run from the repository root (needs ``pip install -e ".[cli]"``; about a minute on 2 cores)::

    python examples/diversity_experiment.py                      # writes out/diversity_experiment/
    python examples/diversity_experiment.py --out docs/experiment/sgd  # the committed run

It writes ``result.json`` (configuration, per-seed curves, summary) and ``diversity.png``.
docs/experiment.md shows the committed result and how to read it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dra_kernels
from dra_kernels import dra_advantages, group_advantages

DATA = Path(__file__).resolve().parent / "data" / "strategies.json"
DEFAULT_OUT = Path("out") / "diversity_experiment"

# method -> (scale of the group normalisation, whether DRA adjusts the rewards first)
METHODS: dict[str, tuple[str, bool]] = {
    "GRPO": ("std", False),
    "DRA-GRPO": ("std", True),
    "DR.GRPO": ("none", False),
    "DRA-DR.GRPO": ("none", True),
}
OPTIMIZERS = ("sgd", "adam")
# Fixed before any method was compared (see docs/experiment.md): plain SGD on the logits with
# lr 1.0; Adam (a robustness check, closer to how GRPO is trained in practice) with lr 0.05.
DEFAULT_LR = {"sgd": 1.0, "adam": 0.05}
DEFAULTS = {"seeds": 5, "steps": 300, "group_size": 8, "optimizer": "sgd"}
KEEP_SHARE = 0.05
"""A strategy counts as kept while it holds at least this share of the policy's correct mass."""
ACCURACY_TARGET = 0.95
MATCHED_ACCURACIES = (0.9, 0.95, 0.99)
"""Accuracies at which the summary compares strategies kept (methods learn at different speeds)."""
METRICS = ("accuracy", "effective_strategies", "strategies_kept", "effective_correct_completions")
CURVE_DIGITS = 4

AdvantageFn = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


# ----------------------------------------------------------------------------- task


@dataclass(frozen=True)
class Task:
    """The completions of every prompt, padded to ``K`` columns.

    ``strategy[p, k]`` is the strategy index of completion ``k`` of prompt ``p`` (0, 1, ...),
    ``-1`` for a wrong completion and ``-2`` for padding; ``embeddings[p, k]`` its unit vector.
    """

    prompt_ids: tuple[str, ...]
    strategy_names: tuple[tuple[str, ...], ...]
    texts: tuple[tuple[str, ...], ...]
    strategy: torch.Tensor  # [P, K] int64
    embeddings: torch.Tensor  # [P, K, D] float32

    @property
    def mask(self) -> torch.Tensor:
        return self.strategy >= -1

    @property
    def correct(self) -> torch.Tensor:
        return self.strategy >= 0

    @property
    def num_prompts(self) -> int:
        return self.strategy.shape[0]

    @property
    def max_strategies(self) -> int:
        return max(len(names) for names in self.strategy_names)


def load_data(path: Path = DATA) -> list[dict[str, Any]]:
    """The prompts of a strategies file, checked: each needs strategies with completions."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    prompts = data["prompts"]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    for p in prompts:
        if not p["strategies"] or any(not s["completions"] for s in p["strategies"]):
            raise ValueError(f"{path}: prompt {p['id']!r} needs strategies with completions")
    return prompts


def completion_texts(prompts: Sequence[dict[str, Any]]) -> list[str]:
    """Every completion, prompt by prompt: each strategy's paraphrases, then the wrong ones."""
    texts = []
    for p in prompts:
        for s in p["strategies"]:
            texts.extend(s["completions"])
        texts.extend(p.get("wrong", []))
    return texts


def build_task(prompts: Sequence[dict[str, Any]], embeddings: torch.Tensor) -> Task:
    """A :class:`Task` from the prompts and the embeddings of :func:`completion_texts`."""
    rows: list[list[int]] = []
    texts: list[tuple[str, ...]] = []
    for p in prompts:
        labels = [j for j, s in enumerate(p["strategies"]) for _ in s["completions"]]
        labels += [-1] * len(p.get("wrong", []))
        rows.append(labels)
    flat = completion_texts(prompts)
    if embeddings.shape[0] != len(flat):
        raise ValueError(f"{len(flat)} completions but {embeddings.shape[0]} embeddings")
    width = max(len(r) for r in rows)
    strategy = torch.full((len(rows), width), -2, dtype=torch.int64)
    emb = torch.zeros(len(rows), width, embeddings.shape[1], dtype=torch.float32)
    start = 0
    for i, labels in enumerate(rows):
        n = len(labels)
        strategy[i, :n] = torch.tensor(labels)
        emb[i, :n] = embeddings[start : start + n].float()
        texts.append(tuple(flat[start : start + n]))
        start += n
    return Task(
        prompt_ids=tuple(p["id"] for p in prompts),
        strategy_names=tuple(tuple(s["id"] for s in p["strategies"]) for p in prompts),
        texts=tuple(texts),
        strategy=strategy,
        embeddings=emb,
    )


def embed(texts: Sequence[str]) -> tuple[torch.Tensor, str]:
    """Unit embeddings of ``texts`` from the bundled model, on CPU (reproducible numbers)."""
    from dra_kernels.embed import Embedder

    embedder = Embedder(device="cpu")
    return embedder.encode(list(texts)).float(), embedder.model_name


def embedding_cosines(task: Task) -> dict[str, float]:
    """Mean cosine similarity of two completions of one prompt, by how they relate."""
    e = task.embeddings
    sims = torch.einsum("pkd,pjd->pkj", e, e)
    s = task.strategy
    valid = task.mask[:, :, None] & task.mask[:, None, :]
    off_diagonal = ~torch.eye(s.shape[1], dtype=torch.bool)[None]
    both_correct = task.correct[:, :, None] & task.correct[:, None, :]
    same = s[:, :, None] == s[:, None, :]
    one_wrong = valid & (task.correct[:, :, None] ^ task.correct[:, None, :])
    flat = e[task.mask]
    prompt_of = torch.arange(task.num_prompts)[:, None].expand_as(s)[task.mask]
    across = (flat @ flat.T)[prompt_of[:, None] != prompt_of[None, :]]
    return {
        "same_strategy": sims[both_correct & same & off_diagonal].mean().item(),
        "different_strategies": sims[both_correct & ~same].mean().item(),
        "correct_and_wrong": sims[one_wrong].mean().item(),
        "different_prompts": across.mean().item(),
    }


# ----------------------------------------------------------------------------- policy


def probabilities(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """``[P, K]`` softmax over each prompt's own completions (0 on padding)."""
    return torch.softmax(logits.masked_fill(~task.mask, -math.inf), dim=1)


def policy_metrics(probs: torch.Tensor, task: Task) -> dict[str, torch.Tensor]:
    """Per-prompt metrics of a policy, exact (no sampling).

    - ``accuracy``: expected reward, the probability of a correct completion;
    - ``effective_strategies``: exp of the entropy of the correct mass grouped by strategy,
      renormalised to sum to 1 (1 = one strategy left, n = n strategies equally likely);
    - ``strategies_kept``: strategies holding at least ``KEEP_SHARE`` of the correct mass;
    - ``effective_correct_completions``: the same entropy measure over single correct completions
      (paraphrases counted apart).
    """
    probs = probs.double()
    correct = task.correct
    accuracy = (probs * correct).sum(1)
    index = task.strategy.clamp(min=0)
    mass = torch.zeros(task.num_prompts, task.max_strategies, dtype=torch.float64)
    mass.scatter_add_(1, index, probs * correct)
    share = mass / accuracy[:, None].clamp(min=1e-300)
    completion_share = probs * correct / accuracy[:, None].clamp(min=1e-300)
    return {
        "accuracy": accuracy,
        "effective_strategies": torch.exp(_entropy(share)),
        "strategies_kept": (share >= KEEP_SHARE).sum(1).double(),
        "effective_correct_completions": torch.exp(_entropy(completion_share)),
    }


def strategy_shares(probs: torch.Tensor, task: Task) -> list[list[float]]:
    """Per prompt, the share of the correct mass on each of its strategies."""
    probs = probs.double()
    mass = torch.zeros(task.num_prompts, task.max_strategies, dtype=torch.float64)
    mass.scatter_add_(1, task.strategy.clamp(min=0), probs * task.correct)
    share = mass / mass.sum(1, keepdim=True).clamp(min=1e-300)
    return [
        [round(v, CURVE_DIGITS) for v in share[p, : len(names)].tolist()]
        for p, names in enumerate(task.strategy_names)
    ]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp(min=1e-300))).sum(1)


def least_similar_policy(task: Task, iterations: int = 20_000) -> torch.Tensor:
    """``[P, K]``: per prompt, the distribution over correct completions that minimises the
    expected cosine similarity of two independent draws, ``pi^T C pi`` (mirror descent).

    Where every group is all correct, DRA's advantage favours the completions least similar to
    the policy's other draws (``1 / (1 + SMI)``), a push towards this distribution; it is the
    reference for reading where DRA-GRPO settles (docs/experiment.md).
    """
    keep = task.correct.double()
    e = task.embeddings.double() * keep[:, :, None]
    sims = e @ e.transpose(1, 2)  # [P, K, K], 0 outside the correct completions
    pi = keep / keep.sum(1, keepdim=True)
    for _ in range(iterations):
        pi = pi * torch.exp(-(sims @ pi[:, :, None]).squeeze(2))
        pi = pi / pi.sum(1, keepdim=True)
    return pi


def library_advantages(
    method: str,
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
) -> torch.Tensor:
    """The advantages of ``method`` for one batch, computed by dra-kernels."""
    scale, dra = METHODS[method]
    if dra:
        return dra_advantages(rewards, embeddings, group_ids, scale=scale, num_groups=num_groups)
    return group_advantages(rewards, group_ids, scale=scale, num_groups=num_groups)


def policy_gradient(
    probs: torch.Tensor, samples: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """Gradient of the GRPO surrogate ``(1/G) sum_i A_i log pi(a_i)`` in the logits, per prompt.

    On-policy with one update per batch the clipped ratio equals 1, so the surrogate's gradient
    is ``(1/G) sum_i A_i (onehot(a_i) - pi)``; there is no KL term. Completions are single
    actions here, so GRPO's per-sequence token mean and DR.GRPO's constant token normaliser
    coincide: both methods divide by ``G``.
    """
    weighted = torch.zeros_like(probs).scatter_add_(1, samples, advantages.to(probs.dtype))
    return (weighted - advantages.sum(1, keepdim=True).to(probs.dtype) * probs) / samples.shape[1]


def train(
    task: Task,
    method: str,
    seed: int,
    *,
    steps: int,
    lr: float,
    group_size: int,
    optimizer: str = "sgd",
    advantage_fn: AdvantageFn = library_advantages,
    trace: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """One run: curves of the prompt-averaged metrics at steps 0..steps, the fraction of groups
    with equal rewards at steps 1..steps, and the final ``strategy_shares`` per prompt.

    The sampling generator is seeded with ``seed`` alone, so every method sees the same random
    stream (common random numbers). ``trace``, when given, receives each step's samples, rewards,
    advantages and logits before and after the update.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = torch.zeros(task.strategy.shape, dtype=torch.float64, requires_grad=True)
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD([logits], lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam([logits], lr=lr)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    num_prompts = task.num_prompts
    group_ids = torch.arange(num_prompts).repeat_interleave(group_size)
    rows = group_ids.view(num_prompts, group_size)
    curves: dict[str, Any] = {name: [] for name in METRICS}
    curves["groups_all_equal"] = []

    def record(probs: torch.Tensor) -> None:
        for name, values in policy_metrics(probs, task).items():
            curves[name].append(round(values.mean().item(), CURVE_DIGITS))

    with torch.no_grad():
        record(probabilities(logits, task))
    for _ in range(steps):
        with torch.no_grad():
            probs = probabilities(logits, task)
            samples = torch.multinomial(probs, group_size, replacement=True, generator=generator)
            rewards = task.correct.gather(1, samples).float()  # [P, G]
            embeddings = task.embeddings[rows, samples]  # [P, G, D]
            flat_embeddings = embeddings.reshape(-1, embeddings.shape[-1])
            flat = advantage_fn(
                method, rewards.reshape(-1), flat_embeddings, group_ids, num_prompts
            )
            advantages = flat.reshape(num_prompts, group_size)
            grad = policy_gradient(probs, samples, advantages)
            before = logits.detach().clone()
        opt.zero_grad()
        logits.grad = -grad  # the optimisers minimise; we ascend the surrogate
        opt.step()
        with torch.no_grad():
            probs = probabilities(logits, task)
            record(probs)
            equal = (rewards == rewards[:, :1]).all(1).double().mean().item()
            curves["groups_all_equal"].append(round(equal, CURVE_DIGITS))
        if trace is not None:
            trace.append(
                {
                    "samples": samples,
                    "rewards": rewards,
                    "embeddings": embeddings,
                    "advantages": advantages,
                    "logits_before": before,
                    "logits_after": logits.detach().clone(),
                }
            )
    curves["final_strategy_share"] = strategy_shares(probs, task)
    return curves


# ----------------------------------------------------------------------------- experiment


def _spread(values: Sequence[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {
        "mean": round(t.mean().item(), CURVE_DIGITS),
        "std": round(t.std(correction=0).item(), CURVE_DIGITS),
        "min": round(t.min().item(), CURVE_DIGITS),
        "max": round(t.max().item(), CURVE_DIGITS),
    }


def _first_step(curve: Sequence[float], target: float) -> int | None:
    return next((i for i, v in enumerate(curve) if v >= target), None)


def _deviation_correlation(shares: list[list[float]], reference: list[list[float]]) -> float:
    """Pearson correlation of two policies' strategy shares, each minus the uniform share."""
    a = torch.tensor([v - 1 / len(row) for row in shares for v in row], dtype=torch.float64)
    b = torch.tensor([v - 1 / len(row) for row in reference for v in row], dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    return round((a @ b / (a.norm() * b.norm()).clamp(min=1e-300)).item(), CURVE_DIGITS)


def summarize(
    runs: dict[str, dict[str, list[Any]]], least_similar: list[list[float]] | None = None
) -> dict[str, Any]:
    """Per method: each metric at the last step and averaged over all steps, across seeds; the
    steps to reach the accuracy target; and, given the least-similar policy's strategy shares,
    how closely each seed's final shares follow them (:func:`_deviation_correlation`)."""
    out: dict[str, Any] = {}
    for method, curves in runs.items():
        entry: dict[str, Any] = {"final": {}, "mean_over_steps": {}}
        for name in METRICS:
            entry["final"][name] = _spread([c[-1] for c in curves[name]])
            entry["mean_over_steps"][name] = _spread([sum(c) / len(c) for c in curves[name]])
        reached = [_first_step(c, ACCURACY_TARGET) for c in curves["accuracy"]]
        entry[f"steps_to_accuracy_{ACCURACY_TARGET}"] = reached
        matched = {}
        for target in MATCHED_ACCURACIES:
            values = []
            for acc, kept in zip(curves["accuracy"], curves["effective_strategies"], strict=True):
                step = _first_step(acc, target)
                values.append(None if step is None else kept[step])
            matched[str(target)] = values
        entry["effective_strategies_when_accuracy_reaches"] = matched
        if least_similar is not None:
            entry["final_shares_vs_least_similar"] = [
                _deviation_correlation(shares, least_similar)
                for shares in curves["final_strategy_share"]
            ]
        out[method] = entry
    return out


def run_experiment(
    task: Task,
    *,
    seeds: int,
    steps: int,
    lr: float,
    group_size: int,
    optimizer: str = "sgd",
    methods: Sequence[str] = tuple(METHODS),
    progress: Callable[[str], None] | None = None,
    least_similar: list[list[float]] | None = None,
) -> dict[str, Any]:
    """Every method over seeds ``0..seeds-1``; the result's ``runs`` and ``summary`` parts."""
    runs: dict[str, dict[str, list[Any]]] = {}
    total, done = len(methods) * seeds, 0
    for method in methods:
        per_seed: dict[str, list[Any]] = {}
        for seed in range(seeds):
            start = time.perf_counter()
            curves = train(
                task, method, seed, steps=steps, lr=lr, group_size=group_size, optimizer=optimizer
            )
            for name, curve in curves.items():
                per_seed.setdefault(name, []).append(curve)
            done += 1
            if progress is not None:
                acc, kept = curves["accuracy"][-1], curves["effective_strategies"][-1]
                progress(
                    f"[{done}/{total}] {method} seed {seed}: accuracy {acc:.3f}, "
                    f"strategies {kept:.2f} "
                    f"({time.perf_counter() - start:.1f} s)"
                )
        runs[method] = per_seed
    return {"runs": runs, "summary": summarize(runs, least_similar)}


def reference_policies(task: Task) -> dict[str, dict[str, Any]]:
    """The starting (uniform) policy and :func:`least_similar_policy`: their prompt-averaged
    metrics and per-prompt strategy shares."""
    policies = {
        "uniform": probabilities(torch.zeros(task.strategy.shape, dtype=torch.float64), task),
        "least_similar": least_similar_policy(task),
    }
    out = {}
    for name, probs in policies.items():
        metrics = policy_metrics(probs, task)
        out[name] = {k: round(v.mean().item(), CURVE_DIGITS) for k, v in metrics.items()}
        out[name]["strategy_share"] = strategy_shares(probs, task)
    return out


# ----------------------------------------------------------------------------- plot

_LABELS = {
    "effective_strategies": "distinct correct strategies kept\n(exp entropy over strategies)",
    "accuracy": "accuracy (expected reward)",
}
_STYLE = {
    "GRPO": ("tab:blue", "-"),
    "DRA-GRPO": ("tab:orange", "-"),
    "DR.GRPO": ("tab:green", "--"),
    "DRA-DR.GRPO": ("tab:red", "--"),
}


def plot(result: dict[str, Any], path: Path) -> None:
    """Strategies kept and accuracy over steps (mean over seeds, min-max band), and strategies
    kept against accuracy (seed means), which compares methods that learn at different speeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    start = result["task"]["reference_policies"]["uniform"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
    means = {}
    for ax, metric in zip(axes, ("effective_strategies", "accuracy"), strict=False):
        for method, curves in result["runs"].items():
            t = torch.tensor(curves[metric])
            means[method, metric] = t.mean(0)
            x = range(t.shape[1])
            color, line = _STYLE.get(method, (None, "-"))
            ax.plot(x, t.mean(0), color=color, linestyle=line, label=method)
            ax.fill_between(x, t.min(0).values, t.max(0).values, color=color, alpha=0.15, lw=0)
        ax.axhline(start[metric], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("step")
        ax.set_ylabel(_LABELS[metric])
        ax.grid(alpha=0.3)
    for method in result["runs"]:
        color, line = _STYLE.get(method, (None, "-"))
        axes[2].plot(
            means[method, "accuracy"],
            means[method, "effective_strategies"],
            color=color,
            linestyle=line,
            label=method,
        )
    axes[2].set_xlabel(_LABELS["accuracy"])
    axes[2].set_ylabel(_LABELS["effective_strategies"])
    axes[2].grid(alpha=0.3)
    axes[0].legend(loc="lower left")
    fig.suptitle(
        f"{result['task']['prompts']} prompts, G = {cfg['group_size']}, {cfg['optimizer']} "
        f"lr {cfg['lr']}, {cfg['seeds']} seeds (line: mean over seeds, band: min-max, "
        "dotted: uniform start)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def _positive_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _methods(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of {', '.join(METHODS)}, got {text!r}"
        )
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python examples/diversity_experiment.py",
        description="GRPO vs DRA-GRPO and DR.GRPO vs DRA-DR.GRPO on a tabular policy over "
        "hand-written completions: strategies kept and accuracy over steps.",
    )
    add = parser.add_argument
    add(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT}, git-ignored at the repository root)",
    )
    add(
        "--seeds",
        type=_positive_int(1),
        default=DEFAULTS["seeds"],
        help="number of seeds, 0..N-1 (default: %(default)s)",
    )
    add(
        "--steps",
        type=_positive_int(1),
        default=DEFAULTS["steps"],
        help="policy updates per run (default: %(default)s)",
    )
    add(
        "--group-size",
        type=_positive_int(2),
        default=DEFAULTS["group_size"],
        help="completions sampled per prompt and step, G (default: %(default)s)",
    )
    add(
        "--optimizer",
        choices=OPTIMIZERS,
        default=DEFAULTS["optimizer"],
        help="optimiser of the logits (default: %(default)s)",
    )
    add(
        "--lr",
        type=_learning_rate,
        default=None,
        help="learning rate (default: 1.0 for sgd, 0.05 for adam)",
    )
    add(
        "--methods",
        type=_methods,
        default=list(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    add(
        "--data",
        type=Path,
        default=DATA,
        help="strategies file (default: examples/data/strategies.json)",
    )
    add("--quiet", action="store_true", help="no progress lines")
    return parser


def dumps(value: Any, indent: str = "") -> str:
    """JSON with one line per list of numbers (a curve), indented objects otherwise."""
    if isinstance(value, dict) and value:
        inner = indent + " "
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None, *, embed_fn=embed) -> dict[str, Any]:
    """Run the command line; returns the result written to ``--out/result.json``.

    ``embed_fn(texts) -> (unit embeddings, model name)`` replaces the bundled model (tests).
    """
    threads = torch.get_num_threads()
    try:
        return _main(argv, embed_fn)
    finally:
        torch.set_num_threads(threads)


def _main(argv: Sequence[str] | None, embed_fn: Callable[..., Any]) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    say = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    start = time.perf_counter()
    try:
        prompts = load_data(args.data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"--data: cannot read {args.data}: {exc}")
    texts = completion_texts(prompts)
    say(f"embedding {len(texts)} completions of {len(prompts)} prompts")
    embeddings, model = embed_fn(texts)
    task = build_task(prompts, embeddings)
    embed_s = time.perf_counter() - start
    # The batches are tiny (P x G rows): one thread is several times faster than contended ones.
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "config": {
            "command": "python examples/diversity_experiment.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "seeds": args.seeds,
            "steps": args.steps,
            "group_size": args.group_size,
            "optimizer": args.optimizer,
            "lr": lr,
            "methods": {m: {"scale": METHODS[m][0], "dra": METHODS[m][1]} for m in args.methods},
            "keep_share": KEEP_SHARE,
            "data": _display_path(args.data),
            "embedder": model,
            "dra_kernels": dra_kernels.__version__,
            "torch": torch.__version__,
        },
        "task": {
            "prompts": task.num_prompts,
            "completions": len(texts),
            "strategies_per_prompt": [len(names) for names in task.strategy_names],
            "reference_policies": reference_policies(task),
            "embedding_cosine": {
                k: round(v, CURVE_DIGITS) for k, v in embedding_cosines(task).items()
            },
        },
    }
    least_similar = result["task"]["reference_policies"]["least_similar"]["strategy_share"]
    result |= run_experiment(
        task,
        seeds=args.seeds,
        steps=args.steps,
        lr=lr,
        group_size=args.group_size,
        optimizer=args.optimizer,
        methods=args.methods,
        progress=say,
        least_similar=least_similar,
    )
    result["runtime_s"] = {
        "embedding": round(embed_s, 1),
        "total": round(time.perf_counter() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "result.json", "w", encoding="utf-8") as f:
        f.write(dumps(result) + "\n")
    plot(result, args.out / "diversity.png")
    say(f"wrote {args.out / 'result.json'} and {args.out / 'diversity.png'}")
    for method, entry in result["summary"].items():
        acc, kept = entry["final"]["accuracy"], entry["final"]["effective_strategies"]
        say(
            f"{method:<12} final accuracy {acc['mean']:.3f}, strategies {kept['mean']:.2f} "
            f"(seeds {kept['min']:.2f}-{kept['max']:.2f})"
        )
    return result


if __name__ == "__main__":
    main()
