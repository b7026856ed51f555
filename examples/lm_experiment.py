"""Does DRA keep more solution strategies alive when a language model is trained with TRL?

A small causal language model (a 2-layer GPT-2 with a word-level tokenizer, both built here, no
hub) is first warmed up, by plain supervised training, on text that solves 16 arithmetic problems
``a * b + c`` by three of four recognisable routes (each problem leaves one route out), half of the
solutions with a slip. It is then trained with TRL's ``GRPOTrainer`` (GRPO and DR.GRPO, the
baselines) and the library's ``DRAGRPOTrainer`` (DRA-GRPO and DRA-DR.GRPO with the bundled
all-MiniLM-L6-v2; DRA-GRPO also with the policy's own hidden states as the embedder) on a 0/1
reward for the correct final answer. Every 20 steps the script samples 32 completions per problem
and measures the accuracy, the distinct routes among the correct ones (the entropy measure of
docs/experiment.md), the distinct completions, and what the completions look like (well formed,
off the templates, on a route the warm-up left out); and, exactly by teacher forcing, how the
policy's probability of the well-formed correct texts spreads over the routes. It records the
trainer's logged metrics (``dra/...`` included), the wall and CPU time of every step and the
process's memory.

Run from the repository root (needs ``pip install -e ".[trl,cli]"``; about 25 minutes on 2 shared
CPU cores, 15 runs of 200 steps)::

    python examples/lm_experiment.py --out docs/experiment/lm   # the committed run
    python examples/lm_experiment.py --quick                    # a few seconds' check (CI)

It writes ``result.json`` (configuration, machine, versions, per-seed curves, summary) and two
plots, ``lm_experiment.png`` and ``lm_cost.png``. docs/experiment_lm.md reports the committed run.
Each training run is a fresh Python process, so that its peak memory is its own (``--quick`` runs
them in its own process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path("out") / "lm_experiment"
CURVE_DIGITS = 4

# ----------------------------------------------------------------------------- task

STRATEGIES = ("direct", "tens", "round", "swap")
"""The four routes to ``a * b + c`` (``a`` in 12..19, ``b`` in 3..9), each one fixed template:

- ``direct``: ``a * b = P , P + c = R``
- ``tens``: ``a * b = 10 * b + u * b = 10b + ub = P , P + c = R`` (``a = 10 + u``)
- ``round``: ``a * b = 20 * b - v * b = 20b - vb = P , P + c = R`` (``a = 20 - v``)
- ``swap``: ``b * a = P , c + P = R`` (both operations commuted)

each followed by one of two endings, ``, answer R`` or ``, result R`` (a paraphrase).
"""
ENDINGS = ("answer", "result")
OTHER = "other"
"""A completion that follows none of the templates."""

NUM = r"(\d+)"
_END = rf" , (?:{'|'.join(ENDINGS)}) {NUM}$"
_TEMPLATES = {
    "tens": re.compile(
        rf"^{NUM} \* {NUM} = 10 \* {NUM} \+ {NUM} \* {NUM} = {NUM} \+ {NUM} = {NUM}"
        rf" , {NUM} \+ {NUM} = {NUM}{_END}"
    ),
    "round": re.compile(
        rf"^{NUM} \* {NUM} = 20 \* {NUM} - {NUM} \* {NUM} = {NUM} - {NUM} = {NUM}"
        rf" , {NUM} \+ {NUM} = {NUM}{_END}"
    ),
    "short": re.compile(rf"^{NUM} \* {NUM} = {NUM} , {NUM} \+ {NUM} = {NUM}{_END}"),
}
_FINAL = re.compile(rf"(?:{'|'.join(ENDINGS)}) {NUM}$")


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    c: int
    held_out: str
    """The route the warm-up data does not hold for this problem."""

    @property
    def prompt(self) -> str:
        return f"{self.a} * {self.b} + {self.c} ="

    @property
    def answer(self) -> int:
        return self.a * self.b + self.c


def make_problems(count: int = 16, seed: int = 0) -> list[Problem]:
    """``count`` problems with distinct ``(a, b)``; problem ``i`` leaves out route ``i % 4``."""
    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    out: list[Problem] = []
    while len(out) < count:
        a, b, c = rng.randint(12, 19), rng.randint(3, 9), rng.randint(2, 9)
        if (a, b) not in pairs:
            pairs.add((a, b))
            out.append(Problem(a, b, c, STRATEGIES[len(out) % len(STRATEGIES)]))
    return out


def solution(
    problem: Problem, strategy: str, ending: str, slip: tuple[str, int] | None = None
) -> str:
    """The completion that solves ``problem`` by ``strategy``; ``slip=("product", d)`` gets the
    product (its partial product for tens / round) wrong by ``d``, ``("sum", d)`` the final sum;
    the error is carried on consistently to the answer. Every number is in 0..``MAX_NUMBER`` (the
    tokenizer's), else ``ValueError``."""
    a, b, c = problem.a, problem.b, problem.c
    kind, d = slip or ("", 0)
    product = a * b + (d if kind == "product" else 0)
    total = product + c + (d if kind == "sum" else 0)
    tail = f"{product} + {c} = {total} , {ending} {total}"
    if strategy == "direct":
        text = f"{a} * {b} = {product} , {tail}"
    elif strategy == "swap":
        text = f"{b} * {a} = {product} , {c} + {product} = {total} , {ending} {total}"
    elif strategy == "tens":
        u = a - 10
        part = u * b + (d if kind == "product" else 0)
        text = f"{a} * {b} = 10 * {b} + {u} * {b} = {10 * b} + {part} = {product} , {tail}"
    elif strategy == "round":
        v = 20 - a
        part = v * b - (d if kind == "product" else 0)
        text = f"{a} * {b} = 20 * {b} - {v} * {b} = {20 * b} - {part} = {product} , {tail}"
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    if any(w.lstrip("-").isdigit() and not 0 <= int(w) <= MAX_NUMBER for w in text.split()):
        raise ValueError(f"a number outside 0..{MAX_NUMBER}: {text}")
    return text


def classify(problem: Problem, text: str) -> str:
    """The route a completion follows (by its template only: the numbers may be wrong), or
    ``OTHER``. ``direct`` and ``swap`` share a template; the first operand tells them apart."""
    text = " ".join(text.split())
    for name in ("tens", "round"):
        if _TEMPLATES[name].match(text):
            return name
    match = _TEMPLATES["short"].match(text)
    if match:
        first = int(match.group(1))
        if first == problem.a:
            return "direct"
        if first == problem.b:
            return "swap"
    return OTHER


def final_answer(text: str) -> int | None:
    match = _FINAL.search(" ".join(text.split()))
    return int(match.group(1)) if match else None


def warmup_texts(problems: Sequence[Problem], seed: int = 0) -> list[tuple[int, str, bool]]:
    """``(problem index, completion, correct)``: for every problem, each of its three routes in
    both endings, once correct and once with a random slip (so half the texts are wrong)."""
    rng = random.Random(seed)
    out = []
    for i, problem in enumerate(problems):
        for strategy in STRATEGIES:
            if strategy == problem.held_out:
                continue
            for ending in ENDINGS:
                out.append((i, solution(problem, strategy, ending), True))
                while True:  # a slip that keeps every number in the tokenizer's range
                    kind = rng.choice(("product", "sum"))
                    deltas = (
                        (-10, 10, -problem.b, problem.b) if kind == "product" else (-10, -1, 1, 10)
                    )
                    try:
                        wrong = solution(problem, strategy, ending, (kind, rng.choice(deltas)))
                    except ValueError:
                        continue
                    break
                out.append((i, wrong, False))
    return out


# ----------------------------------------------------------------------------- model

SPECIAL = ("<pad>", "<eos>", "<unk>")
SYMBOLS = ("*", "+", "-", "=", ",", *ENDINGS)
MAX_NUMBER = 200


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_positions: int = 64


def build_tokenizer():
    """A word-level tokenizer: the special tokens, the symbols, the numbers 0..200."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [*SPECIAL, *SYMBOLS, *map(str, range(MAX_NUMBER + 1))]
    backend = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_model(tokenizer, config: ModelConfig, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2)


def _sequences(tokenizer, pairs: Sequence[tuple[str, str]]):
    """Right-padded ``prompt + completion + <eos>`` ids, attention mask, and labels (-100 on the
    prompt and padding)."""
    rows = [
        (tokenizer(p)["input_ids"], tokenizer(c)["input_ids"] + [tokenizer.eos_token_id])
        for p, c in pairs
    ]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(c)
    return ids, mask, labels


@dataclass(frozen=True)
class WarmupConfig:
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


def warm_up(
    problems: Sequence[Problem], model_config: ModelConfig, config: WarmupConfig, path: Path
) -> dict[str, Any]:
    """Supervised warm-up (plain torch, AdamW, cross-entropy on the completion tokens) on
    :func:`warmup_texts`; saves the model and tokenizer under ``path``."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, model_config, seed=config.seed)
    texts = warmup_texts(problems, seed=config.seed)
    ids, mask, labels = _sequences(tokenizer, [(problems[i].prompt, t) for i, t, _ in texts])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in range(config.steps):
        batch = torch.randint(len(texts), (config.batch_size,), generator=generator)
        loss = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), CURVE_DIGITS))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return {
        "texts": len(texts),
        "correct_share": round(sum(ok for *_, ok in texts) / len(texts), CURVE_DIGITS),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss": losses,
        "seconds": round(time.perf_counter() - start, 1),
    }


# ----------------------------------------------------------------------------- evaluation


def _entropy(shares: Sequence[float]) -> float:
    return -sum(p * math.log(p) for p in shares if p > 0)


def exp_entropy(weights: Sequence[float]) -> float | None:
    """``exp`` of the entropy of ``weights`` renormalised (1 = one kind left, n = n kinds equally
    likely); ``None`` when they sum to 0."""
    total = sum(weights)
    return None if total <= 0 else math.exp(_entropy([w / total for w in weights]))


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return None if not kept else sum(kept) / len(kept)


@torch.no_grad()
def exact_metrics(model, tokenizer, problems: Sequence[Problem]) -> dict[str, Any]:
    """By teacher forcing, each problem's probability of each of its 8 correct completions (4
    routes x 2 endings, exactly as written, ``<eos>`` included); averaged over problems:

    - ``correct_mass``: their total (a lower bound on the accuracy: a correct answer reached
      through wrong intermediate numbers, or another template, is not counted);
    - ``effective_strategies``: exp entropy of that mass grouped by route, the measure of
      docs/experiment.md (1 = one route left; at most 4);
    - ``effective_correct_completions``: the same over the 8 completions (paraphrases apart);
    - ``held_out_share``: the share of that mass on the route the warm-up data left out;
    - ``strategy_share``: per route, its share of the correct mass (averaged over problems).
    """
    pairs = [(p.prompt, solution(p, s, e)) for p in problems for s in STRATEGIES for e in ENDINGS]
    ids, mask, labels = _sequences(tokenizer, pairs)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    target = labels[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(2, target.clamp(min=0)[..., None])[..., 0]
    seq = torch.exp((logp * (target >= 0)).sum(1)).view(
        len(problems), len(STRATEGIES), len(ENDINGS)
    )
    by_strategy = seq.sum(2)
    rows = []
    for i, problem in enumerate(problems):
        mass = by_strategy[i].tolist()
        total = sum(mass)
        rows.append(
            {
                "correct_mass": total,
                "effective_strategies": exp_entropy(mass),
                "effective_correct_completions": exp_entropy(seq[i].flatten().tolist()),
                "held_out_share": mass[STRATEGIES.index(problem.held_out)] / total
                if total
                else None,
                "shares": [m / total for m in mass] if total else None,
            }
        )
    shares = [r["shares"] for r in rows if r["shares"] is not None]
    return {
        **{k: _mean([r[k] for r in rows]) for k in rows[0] if k != "shares"},
        "strategy_share": {
            s: sum(row[j] for row in shares) / len(shares) for j, s in enumerate(STRATEGIES)
        },
    }


@torch.no_grad()
def sampled_metrics(
    model,
    tokenizer,
    problems: Sequence[Problem],
    samples: int,
    max_tokens: int,
    seed: int,
    keep_examples: int = 0,
) -> dict[str, Any]:
    """``samples`` completions per problem, sampled as TRL samples them (temperature 1, no top-k or
    top-p), from a fixed seed (the training random stream is left untouched); averaged over
    problems:

    - ``accuracy``: share of completions with the correct final answer (the reward);
    - ``distinct_completions``: distinct completion texts per problem;
    - ``distinct_correct_completions``: the same among the correct ones;
    - ``effective_strategies``: exp entropy of the correct completions that follow a template,
      grouped by route, over problems with one (the measure of docs/experiment.md; at most 4);
    - ``effective_strategies_with_other``: the same over all correct completions, those that
      follow no template counted as one more kind (``other``);
    - ``route_share``: per route and ``other``, its share of the correct completions;
    - ``held_out_share``: share of all completions that follow the held-out route;
    - ``other_share``: share of all completions that follow no template;
    - ``canonical_share``: share of the correct completions that are one of the 8 texts
      :func:`exact_metrics` scores (every number right); the others reach the right answer
      through a wrong intermediate number, or outside the templates;
    - ``well_formed_accuracy``: share of all completions that are one of those 8 texts;
    - ``mean_length``: completion tokens (``<eos>`` not counted).

    ``examples`` (only with ``keep_examples``): the completions of the first ``keep_examples``
    problems.
    """
    prompts = [p.prompt for p in problems for _ in range(samples)]
    batch = tokenizer(prompts, return_tensors="pt")  # every prompt is 6 tokens: no padding
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    completion_ids = out[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    lengths = (
        (completion_ids != tokenizer.pad_token_id) & (completion_ids != tokenizer.eos_token_id)
    ).sum(1)
    rows = []
    for i, problem in enumerate(problems):
        chunk = texts[i * samples : (i + 1) * samples]
        routes = [classify(problem, t) for t in chunk]
        ok = [final_answer(t) == problem.answer for t in chunk]
        correct_routes = Counter(r for r, good in zip(routes, ok, strict=True) if good)
        kinds = (*STRATEGIES, OTHER)
        n_correct = sum(correct_routes.values())
        canonical = {solution(problem, s, e) for s in STRATEGIES for e in ENDINGS}
        good_texts = [" ".join(t.split()) for t, good in zip(chunk, ok, strict=True) if good]
        rows.append(
            {
                "accuracy": sum(ok) / samples,
                "distinct_completions": len(set(chunk)),
                "distinct_correct_completions": len(
                    {t for t, good in zip(chunk, ok, strict=True) if good}
                ),
                "effective_strategies": exp_entropy([correct_routes[s] for s in STRATEGIES]),
                "effective_strategies_with_other": exp_entropy([correct_routes[k] for k in kinds]),
                "route_share": (
                    {k: correct_routes[k] / n_correct for k in kinds} if n_correct else None
                ),
                "held_out_share": routes.count(problem.held_out) / samples,
                "other_share": routes.count(OTHER) / samples,
                "canonical_share": (
                    sum(t in canonical for t in good_texts) / len(good_texts)
                    if good_texts
                    else None
                ),
                "well_formed_accuracy": sum(t in canonical for t in good_texts) / samples,
            }
        )
    result = {k: _mean([r[k] for r in rows]) for k in rows[0] if k != "route_share"}
    shares = [r["route_share"] for r in rows if r["route_share"] is not None]
    result["route_share"] = {k: _mean([share[k] for share in shares]) for k in (*STRATEGIES, OTHER)}
    result["mean_length"] = lengths.double().mean().item()
    if keep_examples:
        result["examples"] = {
            problems[i].prompt: texts[i * samples : (i + 1) * samples] for i in range(keep_examples)
        }
    return result


def evaluate(
    model,
    tokenizer,
    problems: Sequence[Problem],
    samples: int,
    max_tokens: int,
    seed: int,
    keep_examples: int = 0,
) -> dict[str, Any]:
    """:func:`exact_metrics` and :func:`sampled_metrics` of ``model`` in eval mode (restored)."""
    was_training = model.training
    model.eval()
    try:
        exact = exact_metrics(model, tokenizer, problems)
        sampled = sampled_metrics(
            model, tokenizer, problems, samples, max_tokens, seed, keep_examples
        )
    finally:
        model.train(was_training)
    return {"exact": _rounded(exact), "sampled": _rounded(sampled)}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, CURVE_DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ----------------------------------------------------------------------------- methods

# method -> (DRA embedder or None for TRL's plain GRPOTrainer, TRL loss_type, TRL scale_rewards)
METHODS: dict[str, tuple[str | None, str, str]] = {
    "GRPO": (None, "grpo", "group"),
    "DRA-GRPO": ("minilm", "grpo", "group"),
    "DRA-GRPO-policy": ("policy", "grpo", "group"),
    "DR.GRPO": (None, "dr_grpo", "none"),
    "DRA-DR.GRPO": ("minilm", "dr_grpo", "none"),
    "DRA-DR.GRPO-policy": ("policy", "dr_grpo", "none"),
}
DEFAULT_METHODS = ("GRPO", "DRA-GRPO", "DRA-GRPO-policy", "DR.GRPO", "DRA-DR.GRPO")
EMBEDDERS = {"minilm": None, "policy": "policy"}  # -> DRAGRPOTrainer(embedder=...)
LOGGED = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completions/mean_length",
    "entropy",
    "loss",
    "grad_norm",
    "step_time",
)
"""TRL's own logged metrics kept per step, besides every ``dra/...`` metric."""


EXAMPLE_PROBLEMS = 2
"""The first and last evaluations keep the sampled completions of this many problems."""


@dataclass(frozen=True)
class RunConfig:
    """What a training run needs; fixed before the first comparison (docs/experiment_lm.md)."""

    steps: int = 200
    num_generations: int = 8
    prompts_per_step: int = 4
    max_completion_length: int = 40
    lr: float = 3e-4
    eval_every: int = 20
    eval_samples: int = 32
    eval_seed: int = 1234


def correct_answer_reward(problems: Sequence[Problem]) -> Callable[..., list[float]]:
    answers = {p.prompt: p.answer for p in problems}

    def correct_answer(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        """1 for the correct final answer, 0 otherwise."""
        return [
            float(final_answer(c) == answers[p]) for p, c in zip(prompts, completions, strict=True)
        ]

    return correct_answer


def _rss_mb() -> float | None:
    """This process's resident set now (Linux ``/proc/self/statm``), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _max_rss_mb() -> float:
    """Peak resident set of this process so far (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def train_one(
    method: str,
    seed: int,
    model_dir: Path,
    problems: Sequence[Problem],
    config: RunConfig,
    work: Path,
) -> dict[str, Any]:
    """One training run of ``method`` from the warm-up model; its curves and costs."""
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dra_kernels.integrations.trl import DRAGRPOTrainer

    started = time.perf_counter()
    rss_start = _rss_mb()
    embedder, loss_type, scale = METHODS[method]
    base = GRPOTrainer if embedder is None else DRAGRPOTrainer
    tokenizer = build_tokenizer()
    evaluations: list[dict[str, Any]] = []
    step_s: list[float] = []
    step_cpu_s: list[float] = []
    rss: list[float | None] = []
    generate_s: list[float] = []
    rewards_s: list[float] = []

    class Timed(base):  # type: ignore[misc, valid-type]
        """Times TRL's generation and reward computation (DRA's embedding and step included)."""

        def _generate(self, prompts):
            start = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                generate_s.append(time.perf_counter() - start)

        def _calculate_rewards(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._calculate_rewards(*args, **kwargs)
            finally:
                rewards_s.append(time.perf_counter() - start)

    def record(model, step: int) -> None:
        start = time.perf_counter()
        keep = EXAMPLE_PROBLEMS if step in (0, config.steps) else 0
        result = evaluate(
            model,
            tokenizer,
            problems,
            config.eval_samples,
            config.max_completion_length,
            config.eval_seed,
            keep,
        )
        evaluations.append(
            {"step": step, **result, "seconds": round(time.perf_counter() - start, 3)}
        )

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            record(model, 0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step_s.append(time.perf_counter() - self.start)
            step_cpu_s.append(time.process_time() - self.cpu)
            rss.append(_rss_mb())
            step = state.global_step
            if step % config.eval_every == 0 or step == config.steps:
                record(model, step)

    args = GRPOConfig(
        output_dir=str(work / "trainer"),
        seed=seed,
        max_steps=config.steps,
        per_device_train_batch_size=config.prompts_per_step * config.num_generations,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        loss_type=loss_type,
        scale_rewards=scale,
        beta=0.0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        logging_steps=1,
        disable_dropout=True,
        disable_tqdm=True,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    options = {} if embedder is None else {"embedder": EMBEDDERS[embedder]}
    trainer = Timed(
        model=str(model_dir),
        reward_funcs=correct_answer_reward(problems),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [p.prompt for p in problems]}),
        processing_class=tokenizer,
        callbacks=[Recorder()],
        **options,
    )
    for printer in (PrinterCallback, ProgressCallback):  # no per-step log lines on stdout
        trainer.remove_callback(printer)
    setup_s = time.perf_counter() - started
    trainer.train()
    logged: dict[str, list[float | None]] = {}
    entries = [e for e in trainer.state.log_history if "reward" in e]
    keys = sorted({k for e in entries for k in e if k in LOGGED or k.startswith("dra/")})
    for key in keys:
        logged[key] = [_rounded(e.get(key)) for e in entries]
    return {
        "method": method,
        "seed": seed,
        "trainer": type(trainer).__mro__[1].__name__,
        "steps_done": trainer.state.global_step,
        "evaluations": evaluations,
        "logged": logged,
        "step_s": [round(t, 4) for t in step_s],
        "step_cpu_s": [round(t, 4) for t in step_cpu_s],
        "generate_s": [round(t, 4) for t in generate_s],
        "rewards_s": [round(t, 4) for t in rewards_s],
        "rss_mb": [None if r is None else round(r, 1) for r in rss],
        "rss_start_mb": None if rss_start is None else round(rss_start, 1),
        "max_rss_mb": round(_max_rss_mb(), 1),
        "setup_s": round(setup_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
    }


# ----------------------------------------------------------------------------- summary


def _spread(values: Sequence[float | None]) -> dict[str, float] | None:
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept))
    return _rounded({"mean": mean, "std": std, "min": min(kept), "max": max(kept)})


EVAL_SUMMARY = {
    "accuracy": ("sampled", "accuracy"),
    "correct_mass": ("exact", "correct_mass"),
    "effective_strategies": ("sampled", "effective_strategies"),
    "effective_strategies_with_other": ("sampled", "effective_strategies_with_other"),
    "effective_strategies_exact": ("exact", "effective_strategies"),
    "effective_correct_completions": ("exact", "effective_correct_completions"),
    "distinct_completions": ("sampled", "distinct_completions"),
    "distinct_correct_completions": ("sampled", "distinct_correct_completions"),
    "held_out_share": ("exact", "held_out_share"),
    "held_out_share_sampled": ("sampled", "held_out_share"),
    "other_share": ("sampled", "other_share"),
    "canonical_share": ("sampled", "canonical_share"),
    "well_formed_accuracy": ("sampled", "well_formed_accuracy"),
    "mean_length": ("sampled", "mean_length"),
}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per method, across seeds: the last evaluation's metrics, the final route shares, the
    logged ``dra/...`` metrics (mean over steps), and the cost (time per step, peak memory)."""
    out: dict[str, Any] = {}
    for method, seeds in runs.items():
        last = [run["evaluations"][-1] for run in seeds]
        entry: dict[str, Any] = {"final_step": last[0]["step"], "final": {}}
        for name, (kind, key) in EVAL_SUMMARY.items():
            entry["final"][name] = _spread([e[kind][key] for e in last])
        entry["final_route_share"] = {
            k: _spread([e["sampled"]["route_share"][k] for e in last]) for k in (*STRATEGIES, OTHER)
        }
        entry["final_strategy_share_exact"] = {
            s: _spread([e["exact"]["strategy_share"][s] for e in last]) for s in STRATEGIES
        }
        entry["logged_mean_over_steps"] = {
            key: _spread([_mean(run["logged"][key]) for run in seeds])
            for key in seeds[0]["logged"]
            if key.startswith("dra/") or key in ("reward", "frac_reward_zero_std")
        }

        def median(values: Sequence[float]) -> float:
            ordered = sorted(values)
            return ordered[len(ordered) // 2] if ordered else float("nan")

        entry["cost"] = {
            "step_s_median": _spread([median(run["step_s"]) for run in seeds]),
            "step_s_mean": _spread([_mean(run["step_s"]) for run in seeds]),
            "step_cpu_s_median": _spread([median(run["step_cpu_s"]) for run in seeds]),
            "rewards_s_median": _spread([median(run["rewards_s"]) for run in seeds]),
            "generate_s_median": _spread([median(run["generate_s"]) for run in seeds]),
            "max_rss_mb": _spread([run["max_rss_mb"] for run in seeds]),
            "rss_growth_mb": _spread(
                [
                    None
                    if None in (run["rss_mb"][0], run["rss_mb"][-1])
                    else run["rss_mb"][-1] - run["rss_mb"][0]
                    for run in seeds
                ]
            ),
            "run_s": _spread([run["total_s"] for run in seeds]),
        }
        out[method] = entry
    return out


# ----------------------------------------------------------------------------- plots

_STYLE = {
    "GRPO": ("tab:blue", "-"),
    "DRA-GRPO": ("tab:orange", "-"),
    "DRA-GRPO-policy": ("tab:green", "-"),
    "DR.GRPO": ("tab:purple", "--"),
    "DRA-DR.GRPO": ("tab:red", "--"),
    "DRA-DR.GRPO-policy": ("tab:olive", "--"),
}


def _band(ax, x, curves, method: str, smooth: int = 1) -> None:
    """Mean over seeds (line) and the min-max band; ``smooth``: trailing moving average."""
    rows = []
    for curve in curves:
        values = [math.nan if v is None else v for v in curve]
        if smooth > 1:
            values = [
                sum(values[max(0, i - smooth + 1) : i + 1])
                / len(values[max(0, i - smooth + 1) : i + 1])
                for i in range(len(values))
            ]
        rows.append(values)
    t = torch.tensor(rows, dtype=torch.float64)
    color, line = _STYLE.get(method, (None, "-"))
    ax.plot(x, t.mean(0), color=color, linestyle=line, label=method)
    if len(rows) > 1:
        ax.fill_between(x, t.min(0).values, t.max(0).values, color=color, alpha=0.15, lw=0)


def plot(result: dict[str, Any], out: Path) -> list[str]:
    """``lm_experiment.png`` (what the policy does) and ``lm_cost.png`` (the trainer's metrics,
    time and memory); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    cfg = result["config"]["run"]
    title = (
        f"{len(result['task']['problems'])} problems, G = {cfg['num_generations']}, "
        f"{cfg['prompts_per_step']} prompts/step, lr {cfg['lr']}, "
        f"{result['config']['seeds']} seeds (line: mean, band: min-max)"
    )

    n = cfg["eval_samples"]
    panels = [
        ("sampled", "accuracy", f"accuracy ({n} samples per problem)"),
        ("sampled", "well_formed_accuracy", "well-formed accuracy\n(correct, every number right)"),
        ("sampled", "distinct_completions", f"distinct completions per problem (of {n})"),
        ("sampled", "effective_strategies", "distinct routes among correct completions\n"
         "that follow a template (exp entropy)"),
        ("sampled", "effective_strategies_with_other", "the same, completions outside the\n"
         "templates counted as one more route"),
        ("exact", "effective_strategies", "distinct routes among the 8 well-formed\n"
         "correct texts (exp entropy, exact)"),
        ("sampled", "route_share.other", "share of correct completions\nthat follow no template"),
        ("sampled", "held_out_share", "share of completions on the route\nthe warm-up left out"),
        ("sampled", "mean_length", "completion length (tokens)"),
    ]  # fmt: skip

    def value(evaluation: dict[str, Any], kind: str, key: str) -> float | None:
        out = evaluation[kind]
        for part in key.split("."):
            out = None if out is None else out.get(part)
        return out

    fig, axes = plt.subplots(3, 3, figsize=(15, 11.5), constrained_layout=True)
    for ax, (kind, key, label) in zip(axes.flat, panels, strict=True):
        for method, seeds in runs.items():
            x = [e["step"] for e in seeds[0]["evaluations"]]
            curves = [[value(e, kind, key) for e in run["evaluations"]] for run in seeds]
            _band(ax, x, curves, method)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.savefig(out / "lm_experiment.png", dpi=100)
    plt.close(fig)

    cost = [
        ("step_s", "wall time per step (s)"),
        ("step_cpu_s", "CPU time per step (s)"),
        ("rewards_s", "rewards + DRA per step (s, wall)"),
        ("rss_mb", "resident memory (MiB, /proc/self/statm)"),
        ("dra/smi/mean", "dra/smi/mean"),
        ("dra/factor/mean", "dra/factor/mean"),
        ("reward", "reward (TRL, before DRA)"),
        ("dra/reward_after/mean", "dra/reward_after/mean"),
        ("frac_reward_zero_std", "frac_reward_zero_std (TRL)"),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(15, 11.5), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, cost, strict=True):
        for method, seeds in runs.items():
            curves = [run[key] if key in run else run["logged"].get(key) for run in seeds]
            if any(c is None for c in curves):
                continue
            smooth = 1 if key == "rss_mb" else 10
            _band(ax, range(1, len(curves[0]) + 1), curves, method, smooth=smooth)
        ax.set_xlabel("step")
        ax.set_ylabel(label + ("" if key == "rss_mb" else "\n(moving average over 10 steps)"))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right")
    fig.suptitle(
        title + f"; {result['machine']['cpu']}, {result['machine']['cores']} cores", fontsize=10
    )
    fig.savefig(out / "lm_cost.png", dpi=100)
    plt.close(fig)
    return ["lm_experiment.png", "lm_cost.png"]


# ----------------------------------------------------------------------------- machine, versions


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
    }


def versions() -> dict[str, Any]:
    import importlib.metadata as metadata

    import dra_kernels

    out: dict[str, Any] = {"dra_kernels": dra_kernels.__version__}
    for name in ("torch", "transformers", "trl", "sentence-transformers", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    root = Path(dra_kernels.__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    out["dra_kernels_commit"] = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "dra_kernels", "examples")
    out["dra_kernels_tree_modified"] = None if status is None else bool(status)
    return out


# ----------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _methods(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of {', '.join(METHODS)}, got {text!r}"
        )
    return list(dict.fromkeys(names))


QUICK = {
    "seeds": 1,
    "run": {
        "steps": 2,
        "num_generations": 4,
        "prompts_per_step": 2,
        "eval_every": 1,
        "eval_samples": 2,
    },
    "warmup": {"steps": 20},
}
"""``--quick``: the same script at CI size (every method's trainer runs two steps)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python examples/lm_experiment.py",
        description="GRPO vs DRA-GRPO (TRL, DRAGRPOTrainer) on a small language model warmed up "
        "over several solution routes: accuracy, routes kept, distinct completions, cost.",
    )
    add = parser.add_argument
    add(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT}, git-ignored at the repository root)",
    )
    add("--seeds", type=_positive_int, default=3, help="seeds 0..N-1 (default: %(default)s)")
    add(
        "--steps",
        type=_positive_int,
        default=RunConfig.steps,
        help="GRPO steps per run (default: %(default)s)",
    )
    add(
        "--methods",
        type=_methods,
        default=list(DEFAULT_METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} "
        f"(default: {','.join(DEFAULT_METHODS)})",
    )
    add(
        "--quick",
        action="store_true",
        help="CI size: 1 seed, 2 steps, 2 prompts x 4 completions, 20 warm-up steps",
    )
    add(
        "--in-process",
        action="store_true",
        help="run every training run in this process (default: a fresh process each, so that "
        "each run's peak memory is its own; --quick implies it)",
    )
    add("--no-plots", action="store_true", help="write result.json only (no matplotlib needed)")
    add("--quiet", action="store_true", help="no progress lines")
    add("--_run", dest="run_spec", help=argparse.SUPPRESS)  # internal: one run, in a child process
    return parser


def dumps(value: Any, indent: str = "") -> str:
    """JSON with one line per list of numbers (a curve), indented objects otherwise."""
    if (
        isinstance(value, dict)
        and value
        and any(isinstance(v, dict | list) for v in value.values())
    ):
        inner = indent + " "
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def _child(spec_path: str) -> None:
    """``--_run SPEC``: one training run in this (fresh) process; writes its result next to SPEC."""
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    problems = [Problem(**p) for p in spec["problems"]]
    result = train_one(
        spec["method"],
        spec["seed"],
        Path(spec["model_dir"]),
        problems,
        RunConfig(**spec["run"]),
        Path(spec["work"]),
    )
    Path(spec["result"]).write_text(json.dumps(result))


def _run_in_child(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import dra_kernels

    spec_path = work / f"{spec['method']}-{spec['seed']}.json"
    spec["result"] = str(work / f"{spec['method']}-{spec['seed']}.result.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    # the child imports the dra_kernels this process imported, wherever that is
    root = str(Path(dra_kernels.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_run", str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['method']} seed {spec['seed']} failed:\n{done.stderr[-6000:]}")
    return json.loads(Path(spec["result"]).read_text())


def _run_here(spec: dict[str, Any]) -> dict[str, Any]:
    problems = [Problem(**p) for p in spec["problems"]]
    return train_one(
        spec["method"],
        spec["seed"],
        Path(spec["model_dir"]),
        problems,
        RunConfig(**spec["run"]),
        Path(spec["work"]),
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command line; returns the result written to ``--out/result.json``."""
    threads = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(threads)


def _main(argv: Sequence[str] | None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.run_spec:
        _child(args.run_spec)
        return {}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")  # everything is local: the policy, the bundled embedder
    say = (
        (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    )
    torch.set_num_threads(1)
    started = time.perf_counter()
    model_config, warmup_config = ModelConfig(), WarmupConfig()
    run_config = replace(RunConfig(), steps=args.steps)
    seeds = args.seeds
    if args.quick:
        seeds = QUICK["seeds"]
        run_config = replace(run_config, **QUICK["run"])
        warmup_config = replace(warmup_config, **QUICK["warmup"])
    isolate = not (args.quick or args.in_process)
    problems = make_problems()
    result: dict[str, Any] = {
        "config": {
            "command": "python examples/lm_experiment.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "quick": args.quick,
            "seeds": seeds,
            "methods": {
                m: dict(zip(("embedder", "loss_type", "scale_rewards"), METHODS[m], strict=True))
                for m in args.methods
            },
            "model": asdict(model_config),
            "warmup": asdict(warmup_config),
            "run": asdict(run_config),
            "threads_per_run": 1,
            "process_per_run": isolate,
            "memory": (
                "max_rss_mb: getrusage(RUSAGE_SELF).ru_maxrss, the peak resident set of the "
                + (
                    "run's own process (imports and models included)"
                    if isolate
                    else "one process shared by the warm-up and every run so far (--in-process)"
                )
                + "; rss_mb: its resident set after every step (/proc/self/statm)"
            ),
            "time": "step_s: wall time of each trainer step (perf_counter, on_step_begin to "
            "on_step_end: generation, rewards, DRA, loss, backward, optimizer); step_cpu_s: the "
            "process's CPU time over the same span (time.process_time); generate_s / rewards_s: "
            "wall time of TRL's _generate / _calculate_rewards (DRA's embedding and step included)",
        },
        "machine": machine(),
        "versions": versions(),
        "task": {
            "strategies": list(STRATEGIES),
            "endings": list(ENDINGS),
            "problems": [asdict(p) for p in problems],
            "example": {s: solution(problems[0], s, ENDINGS[0]) for s in STRATEGIES},
        },
    }
    with tempfile.TemporaryDirectory(prefix="lm_experiment_") as tmp:
        work = Path(tmp)
        say(f"warm-up: {warmup_config.steps} steps on {len(warmup_texts(problems))} texts")
        result["warmup"] = warm_up(problems, model_config, warmup_config, work / "model")
        say(
            f"warm-up done in {result['warmup']['seconds']} s, final loss "
            f"{result['warmup']['loss'][-1]}"
        )
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
        total = len(args.methods) * seeds
        # NOTE: seed by seed, every method in turn, so that a change in the machine's load over
        # the session falls on every method alike
        for seed in range(seeds):
            for method in args.methods:
                spec = {
                    "method": method,
                    "seed": seed,
                    "model_dir": str(work / "model"),
                    "problems": [asdict(p) for p in problems],
                    "run": asdict(run_config),
                    "work": str(work / f"{method}-{seed}"),
                }
                run = _run_in_child(spec, work) if isolate else _run_here(spec)
                runs[method].append(run)
                last = run["evaluations"][-1]
                say(
                    f"[{sum(map(len, runs.values()))}/{total}] {method} seed {seed}: accuracy "
                    f"{last['sampled']['accuracy']:.3f}, routes "
                    f"{last['sampled']['effective_strategies'] or 0:.2f} (sampled) / "
                    f"{last['exact']['effective_strategies'] or 0:.2f} (exact), "
                    f"{_mean(run['step_s']):.2f} s/step, peak {run['max_rss_mb']:.0f} MiB "
                    f"({run['total_s']:.0f} s)"
                )
    result["runs"] = runs
    result["summary"] = summarize(runs)
    result["machine"]["load_average_end"] = machine()["load_average"]
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    result["files"] = ["result.json"] if args.no_plots else ["result.json", *plot(result, args.out)]
    (args.out / "result.json").write_text(dumps(result) + "\n", encoding="utf-8")
    say(f"wrote {', '.join(result['files'])} to {args.out} in {result['runtime_s']} s")
    return result


if __name__ == "__main__":
    main()
