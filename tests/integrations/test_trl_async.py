"""DRAAsyncGRPOTrainer (TRL 1.16's experimental AsyncGRPOTrainer with DRA) with real TRL objects.

Runs in the TRL environment (``bash .ci/trl.sh``); skipped where TRL is not importable.

AsyncGRPOTrainer generates through a vLLM server, which cannot run here (no vLLM, no GPU), and
trains through a FlashAttention-3 kernel that needs a GPU. So these tests run TRL's own rollout
classes, with real objects, and stand in for exactly this:

- generation: ``_AsyncRolloutLoop._generate_one_turn`` (the one HTTP call to vLLM's
  ``/v1/completions``) samples from the same tiny local GPT-2 with ``transformers``' ``generate``
  and returns its token ids and log-probabilities; ``_run_loops`` runs TRL's own generation and
  scoring loops (``_generate_loop``, ``_score_loop``) without opening the aiohttp session that
  only that call uses (:class:`LocalGenerationLoop`). Everything else of the loop is TRL's: the
  chat template and turn loop (``_generate_one``), the groups (``RolloutGroup``) as
  ``_generate_loop`` fills them, ``_score_loop``, ``_score_group``, the samples and the metrics
  queue. The loop stops itself after two scored groups.
- the trainer test (:func:`test_the_trainer_runs_dra_in_its_rollout_worker`), which builds the real
  ``DRAAsyncGRPOTrainer`` and starts its rollout worker's child process (spawned by TRL's
  ``AsyncRolloutWorker.start``) with that loop: the worker's import checks for vLLM and aiohttp
  are patched to pass (neither is installed; nothing of them runs), ``VLLMClient`` (it needs
  ``requests``, and would probe the server) is a stub that is never called, and
  ``get_peak_flops_per_device`` (it asks CUDA for the device's name) returns None. The weight
  transfer is a no-op object passed through TRL's own ``weight_transfer=`` argument. The trainer
  then reads the worker's samples through its own dataloader and collator and logs through its
  own ``log`` (which drains the worker's metrics queue); it does not train (no FlashAttention-3
  on CPU).

The expected values are recomputed independently: the raw rewards by calling the reward functions
on each group's completions, the adjusted rewards with :func:`dra_kernels.adjust_rewards`, and the
advantages with TRL's normalisation written out here (population standard deviation, ``+ 1e-8``,
0 for unscorable rows), which is also checked against what TRL's own ``_score_group`` gives.
The option checks run with ``AsyncGRPOTrainer.__init__`` replaced by a trap, so they show that
nothing is loaded before they fail.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing as mp
import pathlib
import queue
from typing import Any

import numpy as np
import pytest

pytest.importorskip("trl", reason="TRL is not installed here; bash .ci/trl.sh runs these tests")

import torch
from accelerate.state import PartialState
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)
from trl.chat_template_utils import qwen2_5_chat_template
from trl.experimental.async_grpo import (
    AsyncGRPOConfig,
    AsyncGRPOTrainer,
    async_grpo_trainer,
    async_rollout_worker,
)
from trl.experimental.async_grpo.async_rollout_worker import _AsyncRolloutLoop

import dra_kernels
from dra_kernels import api
from dra_kernels.embed import EmbedStats
from dra_kernels.integrations.trl import completion_text
from dra_kernels.integrations.trl_async import (
    DRAAsyncGRPOTrainer,
    DRARolloutLoop,
    DRARolloutWorker,
    async_advantages,
)
from dra_kernels.step import METRICS, DRAStep

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
GROUP = 4  # num_generations
GROUPS = 2  # groups scored before the loop stops
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
READ_SHARE, TEXTS_CUT = "dra/tokens_read_share", "dra/texts_cut"
EMBED_DIM = 16


# ----------------------------------------------------------------------------- tiny, local, offline


def build_model_dir(path: pathlib.Path) -> pathlib.Path:
    """A word-level tokenizer with TRL's Qwen2.5 chat template (so TRL knows how to parse the
    responses) and a randomly initialised 1-layer GPT-2, saved under ``path``."""
    specials = ["<pad>", "<|im_end|>", "<unk>", "<|im_start|>"]
    vocab = {t: i for i, t in enumerate([*specials, "system", "user", "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )  # fmt: skip
    tokenizer.chat_template = qwen2_5_chat_template
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=64, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=vocab["<|im_end|>"], eos_token_id=vocab["<|im_end|>"], pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def embed(texts: list[str]) -> torch.Tensor:
    """Deterministic hashed bag of words (a stand-in for a sentence encoder); column 0 is a
    constant, so every two completions have a positive cosine and DRA is never trivially 1."""
    out = torch.zeros(len(texts), EMBED_DIM)
    out[:, 0] = 1.0
    for i, text in enumerate(texts):
        for word in text.split():
            out[i, sum(map(ord, word)) % (EMBED_DIM - 1) + 1] += 1.0
    return out


class StatsEncoder:
    """:func:`embed` with read statistics, as :class:`dra_kernels.embed.Embedder` keeps them: at
    most 3 words of a text are "read". Passed as a class, it is built where the step runs."""

    def __init__(self) -> None:
        self.last_stats: EmbedStats | None = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        words = [len(text.split()) for text in texts]
        self.last_stats = EmbedStats(
            texts=len(texts), cut_texts=sum(w > 3 for w in words), tokens=sum(words),
            tokens_read=sum(min(w, 3) for w in words), windows=len(texts),
        )  # fmt: skip
        return embed(texts)


def _unscorable_first(values: list[float], skip_first: list[bool]) -> list[float | None]:
    """``None`` (not applicable, TRL's unscorable) for a group's first completion where the
    dataset's ``skip_first`` column says so."""
    pairs = enumerate(zip(values, skip_first, strict=True))
    return [None if skip and i == 0 else v for i, (v, skip) in pairs]


def distinct_words(completions: list[Any], skip_first: list[bool], **kwargs: Any) -> list[Any]:
    values = [len(set(completion_text(c).split())) / 4.0 for c in completions]
    return _unscorable_first(values, skip_first)


def alpha_count(completions: list[Any], skip_first: list[bool], **kwargs: Any) -> list[Any]:
    values = [completion_text(c).split().count("alpha") - 0.5 for c in completions]
    return _unscorable_first(values, skip_first)


REWARD_FUNCS = [distinct_words, alpha_count]


def dataset() -> Dataset:
    """Two conversational prompts; the first one's groups have an unscorable completion."""
    prompts = [
        [{"role": "system", "content": "alpha"}, {"role": "user", "content": "beta gamma"}],
        [{"role": "system", "content": "delta"}, {"role": "user", "content": "eps zeta"}],
    ]
    return Dataset.from_dict({"prompt": prompts, "skip_first": [True, False]})


class LocalGenerationLoop(DRARolloutLoop):
    """:class:`DRARolloutLoop` with vLLM stood in (see the module docstring): generation by the
    local model, no aiohttp session. It generates ``groups`` groups (later turns wait for the
    stop, then end at once, their groups left unscored), records every scored group and, in this
    process, stops once they are scored."""

    groups = GROUPS
    stop_when_scored = True

    def __init__(self, **loop_kwargs: Any) -> None:
        super().__init__(**loop_kwargs)
        self.policy = AutoModelForCausalLM.from_pretrained(self.model_name).eval()
        self.records: list[tuple[Any, list[Any]]] = []
        self.turns = 0

    async def _generate_one_turn(self, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
        self.turns += 1
        if self.turns > self.groups * GROUP:  # NOTE: no more groups than the test reads
            await self._stop_event.wait()
            return [self.eos_token_ids[0]], [0.0]
        with torch.no_grad():
            ids = torch.tensor([prompt_ids])
            out = self.policy.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=self.temperature, max_new_tokens=self.max_tokens,
                eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id,
                output_scores=True, return_dict_in_generate=True,
            )  # fmt: skip
            logprobs = self.policy.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            )[0]
        return out.sequences[0, len(prompt_ids) :].tolist(), logprobs.tolist()

    async def _run_loops(self, stop_event: asyncio.Event) -> None:
        await asyncio.gather(
            self._generate_loop(stop_event=stop_event), self._score_loop(stop_event=stop_event)
        )

    async def _score_group(self, group: Any) -> list[Any]:
        if group.group_id >= self.groups:  # completed by the stop: not the test's
            return []
        samples = await super()._score_group(group)
        self.records.append((group, samples))
        if self.stop_when_scored and len(self.records) == self.groups:
            self._stop_event.set()
        return samples


class WorkerLoop(LocalGenerationLoop):
    """:class:`LocalGenerationLoop` in the worker's child process: it runs until the trainer's
    ``AsyncRolloutWorker.stop`` (TRL's child is stopped by its parent; a child that ended on its
    own would leave the parent's stop event waiting for it). One group more: the trainer's
    dataloader (accelerate's dispatcher) reads one batch ahead of the one it gives."""

    groups = GROUPS + 1
    stop_when_scored = False


def drain(q: Any) -> list[Any]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def run_loop(model_dir: pathlib.Path, step: DRAStep) -> tuple[LocalGenerationLoop, list[dict]]:
    """TRL's loop, in this process, until ``GROUPS`` are scored: the loop and the metrics it
    pushed. The worker's multiprocessing queues are ``queue.Queue`` here (TRL only puts, gets and
    asks their size)."""
    ctx = mp.get_context("spawn")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    metrics: queue.Queue = queue.Queue()
    loop = LocalGenerationLoop(
        model_name=str(model_dir), dataset=dataset(), reward_funcs=REWARD_FUNCS,
        processing_class=tokenizer, eos_token_ids=[tokenizer.eos_token_id],
        rollout_buffer=queue.Queue(), model_version_value=ctx.Value("i", 0),
        heartbeat_value=ctx.Value("d", 0.0), failed_event=ctx.Event(),
        exception_info_queue=queue.Queue(maxsize=1), metrics_queue=metrics,
        num_generations=GROUP, max_inflight_tasks=GROUP, max_tokens=6, dra_step=step,
    )  # fmt: skip
    torch.manual_seed(0)
    loop.run()
    assert len(loop.records) == GROUPS
    return loop, drain(metrics)


def raw_rewards(group: Any) -> tuple[np.ndarray, np.ndarray]:
    """``([n] summed rewards, NaN where unscorable; [funcs, n] columns)`` from the reward functions
    called again on the group's completions."""
    kwargs = {"completions": group.completions, "prompts": group.prompts, **group.reward_kwargs}
    columns = np.array(
        [[math.nan if v is None else v for v in f(**kwargs)] for f in REWARD_FUNCS], dtype=float
    )
    summed = np.where(np.isnan(columns).all(axis=0), math.nan, np.nansum(columns, axis=0))
    return summed, columns


def trl_normalisation(rewards: np.ndarray) -> np.ndarray:
    """TRL 1.16 AsyncGRPO's advantages, written out: population std, + 1e-8, 0 where NaN."""
    scored = ~np.isnan(rewards)
    out = np.zeros_like(rewards)
    values = rewards[scored]
    out[scored] = (values - values.mean()) / (values.std() + 1e-8)
    return out


def conversation_rows(group: Any) -> list[int]:
    return [i for i, sequences in enumerate(group.completions_sequences) for _ in sequences]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_model_dir(tmp_path_factory.mktemp("async") / "model")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    PartialState()  # NOTE: TRL's worker logs through accelerate, which needs it (as TRL's tests)


# ----------------------------------------------------------------------------- the rollout loop


def test_each_group_gets_the_core_adjustment_with_one_smi_pass(
    model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per group: one SMI pass; the advantages are TRL's normalisation of
    ``dra_kernels.adjust_rewards`` of the raw rewards; the step's metrics are pushed once."""
    calls: list[int] = []
    smi_scores = api.smi_scores

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return smi_scores(*args, **kwargs)

    monkeypatch.setattr(api, "smi_scores", counting)
    loop, metrics = run_loop(model_dir, DRAStep(embedder=embed))
    assert len(calls) == GROUPS  # one SMI pass per group
    pushed = [m for m in metrics if "dra/smi/mean" in m]
    assert len(pushed) == GROUPS
    unscorable = 0
    for (group, samples), metrics in zip(loop.records, pushed, strict=True):
        texts = [completion_text(c) for c in group.completions]
        assert len(texts) == GROUP and all(len(s) == 1 for s in group.completions_sequences)
        raw, _ = raw_rewards(group)
        unscorable += int(np.isnan(raw).sum())
        ids = np.zeros(GROUP, dtype=np.int64)
        adjusted = dra_kernels.adjust_rewards(raw, embed(texts).numpy(), ids, backend="torch")
        want = trl_normalisation(adjusted)
        found = np.array([s.advantage for s in samples])
        np.testing.assert_allclose(found, want[conversation_rows(group)], rtol=1e-6, atol=1e-9)
        # the check has teeth: without DRA TRL would have given other advantages
        assert np.abs(trl_normalisation(raw) - want).max() > 1e-3, (raw, adjusted)
        smi = dra_kernels.smi_scores(embed(texts).numpy(), ids, backend="torch")
        assert metrics["dra/smi/mean"] == pytest.approx(float(smi.mean()), rel=1e-6)
        assert metrics["dra/reward_before/mean"] == pytest.approx(float(np.nanmean(raw)))
        assert metrics["dra/reward_after/mean"] == pytest.approx(float(np.nanmean(adjusted)))
        assert (metrics["dra/rows"], metrics["dra/groups"]) == (GROUP, 1)
        assert metrics["dra/incomplete_groups"] == 0
        assert set(METRICS) - {READ_SHARE, TEXTS_CUT} <= set(metrics)
    assert unscorable == 1, "the first prompt's unscorable completion was not seen"


def test_trl_reward_metrics_stay_raw(model_dir: pathlib.Path) -> None:
    """Each sample's ``reward``, ``reward_std`` and ``rewards/<name>`` (what AsyncGRPOTrainer logs
    as its reward metrics, and what ``log_completions`` prints) are those of the raw rewards."""
    loop, _ = run_loop(model_dir, DRAStep(embedder=embed))
    for group, samples in loop.records:
        raw, columns = raw_rewards(group)
        scored = raw[~np.isnan(raw)]
        for sample, i in zip(samples, conversation_rows(group), strict=True):
            m = sample.metrics
            np.testing.assert_equal(m["reward"], raw[i])
            assert m["reward_std"] == pytest.approx(float(scored.std()), rel=1e-12)
            for f, column in zip(REWARD_FUNCS, columns, strict=True):
                np.testing.assert_equal(m[f"rewards/{f.__name__}"], column[i])
            assert not any(key.startswith("dra/") for key in m)


def test_the_advantage_rule_is_trls(model_dir: pathlib.Path) -> None:
    """TRL's own ``_score_group`` (no DRA) on the very groups gives :func:`async_advantages` of
    the raw rewards, unscorable rows included: the rule DRA applies to the adjusted rewards."""
    loop, _ = run_loop(model_dir, DRAStep(embedder=embed))
    for group, _ in loop.records:
        raw, _ = raw_rewards(group)
        samples = asyncio.run(_AsyncRolloutLoop._score_group(loop, group))
        trl_advantages = np.array([s.advantage for s in samples])
        np.testing.assert_array_equal(
            trl_advantages, async_advantages(raw)[conversation_rows(group)]
        )
        np.testing.assert_array_equal(async_advantages(raw), trl_normalisation(raw))


# ----------------------------------------------------------------------------- the trainer


class NoWeightTransfer:
    """TRL's ``WeightTransferProtocol``, doing nothing (there is no vLLM server to update)."""

    def init_weight_transfer(self) -> None: ...
    def pause(self) -> None: ...
    def send_weights(self, iterator: Any) -> None: ...
    def resume(self) -> None: ...
    def destroy(self) -> None: ...


class UnusedVLLMClient:
    """Stands in for TRL's ``VLLMClient``: built by the trainer, never called here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the test has no vLLM server: VLLMClient.{name} was called")


def test_the_trainer_runs_dra_in_its_rollout_worker(
    model_dir: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real trainer builds a DRARolloutWorker with TRL's own worker keywords and the step;
    the worker's spawned child builds the embedder and scores groups with DRA; the trainer's own
    ``reward`` metric (its collator's mean of the samples' rewards) stays raw, and the step's
    metrics reach the trainer's log through the worker's metrics queue."""
    monkeypatch.setattr(async_rollout_worker, "is_vllm_available", lambda: True)
    monkeypatch.setattr(async_rollout_worker, "is_aiohttp_available", lambda: True)
    monkeypatch.setattr(async_grpo_trainer, "VLLMClient", UnusedVLLMClient)
    monkeypatch.setattr(async_grpo_trainer, "get_peak_flops_per_device", lambda *args: None)
    args = AsyncGRPOConfig(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, bf16=False,
        num_generations=GROUP, per_device_train_batch_size=GROUP, max_completion_length=6,
        token_budget=0, max_inflight_tasks=GROUP, heartbeat_stale_after_s=120, max_steps=1,
    )  # fmt: skip
    trainer = DRAAsyncGRPOTrainer(
        model=str(model_dir), reward_funcs=REWARD_FUNCS, args=args, train_dataset=dataset(),
        weight_transfer=NoWeightTransfer(), embedder=StatsEncoder, dra_min_denominator=0.5,
    )  # fmt: skip
    worker = trainer.rollout_worker
    assert isinstance(worker, DRARolloutWorker)
    assert trainer.rollout_queue is worker.rollout_buffer
    kwargs = worker._loop_kwargs
    assert kwargs["dra_step"] is trainer.dra_step and trainer.dra_step.min_denominator == 0.5
    assert kwargs["reward_funcs"] == REWARD_FUNCS and kwargs["num_generations"] == GROUP
    assert kwargs["max_inflight_tasks"] == GROUP and kwargs["max_tokens"] == 6
    assert not trainer.dra_step._embed, "the embedder was built in the trainer's process"

    monkeypatch.setattr(worker, "_loop_cls", WorkerLoop)  # generation stood in
    worker.start()  # TRL's: checks pickling, spawns the child, waits for it to be ready
    try:
        batches = list(itertools.islice(iter(trainer.get_train_dataloader()), GROUPS))
    finally:
        worker.stop()
    assert len(batches) == GROUPS
    trainer.model.train()
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert set(METRICS) <= set(logged), sorted(logged)
    # TRL's own reward metric is the raw rewards' mean: each batch is one group, as each push
    assert logged["reward"] == pytest.approx(logged["dra/reward_before/mean"], rel=1e-9)
    assert abs(logged["dra/reward_after/mean"] - logged["reward"]) > 1e-3
    assert {"reward_std", "rewards/distinct_words", "rewards/alpha_count"} <= set(logged)
    assert 0.0 < logged[READ_SHARE] <= 1.0  # the encoder built in the child counted its reads
    assert logged["dra/groups"] == 1.0 and logged["dra/rows"] == GROUP


# ----------------------------------------------------------------------------- options


def test_options_are_refused_before_anything_loads(
    model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trap(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("AsyncGRPOTrainer.__init__ ran: the options were not checked first")

    monkeypatch.setattr(AsyncGRPOTrainer, "__init__", trap)
    model = str(model_dir)

    def build(**kwargs: Any) -> None:
        DRAAsyncGRPOTrainer(model, distinct_words, **{"embedder": embed, **kwargs})

    with pytest.raises(AssertionError, match="__init__ ran"):  # valid options reach the trap
        build(dra_min_denominator=0.5)
    for bad in (0.0, 1.5, 2):
        with pytest.raises(ValueError, match=r"^dra_min_denominator must be a finite number"):
            build(dra_min_denominator=bad)
    for owned, value in (("dra_scale", "none"), ("dra_eps", 1e-6)):
        with pytest.raises(ValueError, match=rf"^{owned}: AsyncGRPOTrainer computes the advant"):
            build(**{owned: value})
    with pytest.raises(ValueError, match=r"unknown DRA option\(s\) \['dra_long_txt'\]"):
        build(dra_long_txt="head")
    with pytest.raises(ValueError, match=r"^dra_eta is not used by dra_measure='graph_cut'"):
        build(dra_eta=0.5)
    with pytest.raises(ValueError, match=r"^embedder='policy' is not available"):
        build(embedder="policy")
    with pytest.raises(ValueError, match=r"^dra_device='cuda': AsyncGRPOTrainer's rollout worker"):
        build(embedder=None, dra_device="cuda")
    with pytest.raises(RuntimeError, match=r"^dra_backend='triton' cannot run here"):
        build(dra_backend="triton")
    with pytest.raises(TypeError, match=r"^embedder must be picklable"):
        build(embedder=lambda texts: embed(texts))
    with pytest.raises(TypeError, match=r"^embedder must be a function"):
        build(embedder=3)
    with pytest.raises(ValueError, match=r"builds its own rollout worker"):
        build(rollout_worker=object())
    with pytest.raises(ValueError, match=r"dra_long_text configure the built-in embedder"):
        build(dra_long_text="head")
