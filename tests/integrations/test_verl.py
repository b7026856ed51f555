"""dra_kernels.integrations.verl against the real verl package (CPU).

Real verl code in these tests: ``import verl`` and its ``verl.plugins`` entry-point loading,
``verl.DataProto``, verl's Hydra configuration (``ppo_trainer.yaml``), and the v1 trainer's own
``PPOTrainer._compute_advantage`` (with verl's GRPO advantage code) on a real TransferQueue running
on a local Ray instance. Only the trainer object is built without its ``__init__`` (which would
start models and workers): it gets a real composed config and a tokenizer.

Run with ``bash .ci/verl.sh`` (a dedicated virtual environment); skipped where verl is missing.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
import uuid
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

verl = pytest.importorskip(
    "verl", reason="verl is not installed here; .ci/verl.sh runs these tests in .venv-verl"
)

from verl import DataProto  # noqa: E402

from dra_kernels import adjust_rewards, smi_scores  # noqa: E402
from dra_kernels.embed import EMBEDDER_OPTIONS, EmbedderConfig, EmbedStats  # noqa: E402
from dra_kernels.integrations import _placement  # noqa: E402
from dra_kernels.integrations import verl as dra_verl  # noqa: E402
from dra_kernels.integrations._placement import (  # noqa: E402
    ClusterView,
    Placement,
    PlacementOptions,
    decide_placement,
    find_gpu_slot,
)
from dra_kernels.step import DRAStep, embed_metrics  # noqa: E402

WORDS = [
    *("x", "equals", "two", "so", "the", "answer", "is", "2", "we", "factor", "square", "root"),
    *("add", "both", "sides", "divide", "by", "three", "hence", "check", "plug", "in", "result"),
    *("four", "wrong", "guess", "maybe", "since", "then", "thus"),
]
GROUP_SIZE = 4


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A word-level tokenizer built here, saved and reloaded through transformers (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )
    path = tmp_path_factory.mktemp("tokenizer")
    wrapped.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


class HashEmbedder:
    """Deterministic bag-of-words embeddings (crc32 buckets); records the texts it sees."""

    dim = 16

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.embed(texts)

    @classmethod
    def embed(cls, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), cls.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                out[row, zlib.crc32(word.encode()) % cls.dim] += 1.0
        return out


class StatsEmbedder:
    """HashEmbedder's vectors from an object that counts what it reads, as ``Embedder`` does
    (``last_stats``): it "reads" at most the first three words of each text."""

    read_words = 3

    def __init__(self):
        self.last_stats = None

    def encode(self, texts: list[str]) -> np.ndarray:
        self.last_stats = self.stats(texts)
        return HashEmbedder.embed(texts)

    @classmethod
    def stats(cls, texts: list[str]) -> EmbedStats:
        words = [len(t.split()) for t in texts]
        return EmbedStats(
            texts=len(texts),
            cut_texts=sum(w > cls.read_words for w in words),
            tokens=sum(words),
            tokens_read=sum(min(w, cls.read_words) for w in words),
            windows=len(texts),
        )


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    """Texts of varied lengths, with near-duplicates inside a group."""
    base = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(base)
        else:
            out.append(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))))
    return out


def make_batch(tokenizer, sizes=(GROUP_SIZE, GROUP_SIZE, 3), seed=0, eos_every=2):
    """A DataProto as verl's trainer holds it after the reward step.

    Left-padded prompts, right-padded responses of varied lengths (some ending with EOS, which
    decoding skips), uid strings per prompt, the score at the last valid response token.
    """
    rng = np.random.default_rng(seed)
    texts, uids = [], []
    for size in sizes:
        uid = str(uuid.UUID(int=int(rng.integers(1 << 62))))
        texts += _texts(rng, size)
        uids += [uid] * size
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids = [[*seq, eos] if i % eos_every == 0 else seq for i, seq in enumerate(ids)]
    n, width, prompt_width = len(ids), max(map(len, ids)) + 3, 5
    responses = torch.full((n, width), pad, dtype=torch.int64)
    response_mask = torch.zeros(n, width, dtype=torch.int64)
    prompts = torch.full((n, prompt_width), pad, dtype=torch.int64)
    prompt_mask = torch.zeros(n, prompt_width, dtype=torch.int64)
    scores = torch.zeros(n, width, dtype=torch.float32)
    rewards = torch.tensor(rng.choice([0.0, 1.0, 0.5, -1.0], size=n), dtype=torch.float32)
    for i, seq in enumerate(ids):
        responses[i, : len(seq)] = torch.tensor(seq)
        response_mask[i, : len(seq)] = 1
        scores[i, len(seq) - 1] = rewards[i]
        plen = int(rng.integers(2, prompt_width + 1))
        prompts[i, prompt_width - plen :] = 7
        prompt_mask[i, prompt_width - plen :] = 1
    kl = torch.rand(n, width, generator=torch.Generator().manual_seed(seed)) * response_mask
    data = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
            "response_mask": response_mask,
            "token_level_scores": scores,
            "token_level_rewards": scores - 0.01 * kl,
            "old_log_probs": torch.randn(n, width, generator=torch.Generator().manual_seed(1)),
        },
        non_tensors={"uid": np.array(uids, dtype=object), "data_source": np.array(["m"] * n)},
    )
    return data, texts, rewards


def _snapshot(data: DataProto) -> dict:
    return {k: v.clone() for k, v in data.batch.items()} | {
        k: v.copy() for k, v in data.non_tensor_batch.items()
    }


def _last_index(data: DataProto) -> torch.Tensor:
    width = data.batch["responses"].shape[1]
    return data.batch["attention_mask"][:, -width:].sum(dim=1) - 1


# ----------------------------------------------------------------------------- the plugin


def test_plugin_is_registered_for_verl():
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert found.get("dra_kernels") == "dra_kernels.integrations.verl"


def _fresh_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_import_verl_loads_the_plugin_and_wraps_the_v1_trainer():
    code = (
        "import sys, verl; "
        "loaded = 'dra_kernels.integrations.verl' in sys.modules; "
        "from verl.trainer.ppo.v1.trainer_base import PPOTrainer; "
        "print(loaded, getattr(PPOTrainer._compute_advantage, '__dra_kernels_wrapped__', False))"
    )
    assert _fresh_python(code) == "True True"
    # verl's own switch for plugins turns it off entirely.
    assert _fresh_python(code, VERL_USE_EXTERNAL_PLUGINS="none") == "False False"


# ----------------------------------------------------------------------------- apply_dra


def test_apply_dra_matches_adjust_rewards_on_decoded_texts(tokenizer):
    data, texts, rewards = make_batch(tokenizer)
    before = _snapshot(data)
    embedder = HashEmbedder()

    with pytest.warns(RuntimeWarning, match="1 of 3 groups"):
        metrics = dra_verl.apply_dra(data, tokenizer, embedder, expected_group_size=GROUP_SIZE)

    assert embedder.calls == [texts]  # decoded with the mask, EOS skipped, padding ignored
    embeddings = torch.from_numpy(HashEmbedder.embed(texts))
    uids = before["uid"]
    expected = adjust_rewards(rewards, embeddings, uids)
    rows, last = torch.arange(len(texts)), _last_index(data)
    scores = data.batch["token_level_scores"]
    assert torch.equal(scores[rows, last], expected)
    # every other position of the score tensor is untouched
    untouched = torch.ones_like(scores, dtype=torch.bool)
    untouched[rows, last] = False
    assert torch.equal(scores[untouched], before["token_level_scores"][untouched])
    # token_level_rewards = scores - KL stays consistent: same change at the same token
    kl_before = before["token_level_rewards"] - before["token_level_scores"]
    kl_after = data.batch["token_level_rewards"] - scores
    torch.testing.assert_close(kl_after, kl_before, rtol=0, atol=1e-6)
    # nothing else changed, and the caller's old tensors were not written to
    for key in ("prompts", "responses", "input_ids", "attention_mask", "response_mask"):
        assert torch.equal(data.batch[key], before[key])
    assert torch.equal(data.batch["old_log_probs"], before["old_log_probs"])
    assert list(data.non_tensor_batch["uid"]) == list(uids)
    assert list(data.non_tensor_batch["data_source"]) == list(before["data_source"])

    smi = smi_scores(embeddings, uids)
    assert metrics["dra/rows"] == len(texts)
    assert metrics["dra/groups"] == 3
    assert metrics["dra/incomplete_groups"] == 1  # the group of 3
    assert metrics["dra/smi/mean"] == pytest.approx(float(smi.double().mean()))
    assert metrics["dra/reward_before/mean"] == pytest.approx(float(rewards.double().mean()))
    assert metrics["dra/reward_after/mean"] == pytest.approx(float(expected.double().mean()))


@pytest.mark.parametrize(
    "options", [{"measure": "facility_location", "eta": 0.5}, {"measure": "log_det", "lam": 0.5}]
)
def test_apply_dra_with_another_measure(tokenizer, options):
    """measure / eta / lam reach the computation: the core's result for that measure, which
    differs from graph-cut's on this batch."""
    data, texts, rewards = make_batch(tokenizer, seed=2)
    metrics = dra_verl.apply_dra(data, tokenizer, HashEmbedder(), **options)
    embeddings = torch.from_numpy(HashEmbedder.embed(texts))
    uids = data.non_tensor_batch["uid"]
    expected = adjust_rewards(rewards, embeddings, uids, **options)
    last = data.batch["token_level_scores"][torch.arange(len(texts)), _last_index(data)]
    assert torch.equal(last, expected)
    assert not torch.allclose(expected, adjust_rewards(rewards, embeddings, uids))
    smi = smi_scores(embeddings, uids, **options)
    assert metrics["dra/smi/mean"] == pytest.approx(float(smi.double().mean()))


def test_apply_dra_takes_a_step_or_the_option_keywords(tokenizer):
    options = {"measure": "facility_location", "eta": 0.5, "min_denominator": 0.5}
    by_keywords, by_step = make_batch(tokenizer, seed=2)[0], make_batch(tokenizer, seed=2)[0]
    dra_verl.apply_dra(by_keywords, tokenizer, HashEmbedder(), **options)
    step = DRAStep.from_options(options, embedder=HashEmbedder())
    dra_verl.apply_dra(by_step, tokenizer, step=step)
    scores = "token_level_scores"
    assert torch.equal(by_step.batch[scores], by_keywords.batch[scores])
    with pytest.raises(ValueError, match="either in step= or as keywords, not both"):
        dra_verl.apply_dra(by_step, tokenizer, step=step, eta=0.5)
    with pytest.raises(ValueError, match=r"^min_denominator must be a finite number > 0 and <= 1"):
        dra_verl.apply_dra(by_step, tokenizer, HashEmbedder(), min_denominator=2)


def test_apply_dra_is_independent_of_row_order(tokenizer):
    data, texts, _ = make_batch(tokenizer, seed=3)
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = data.select_idxs(perm.tolist())
    dra_verl.apply_dra(data, tokenizer, HashEmbedder())
    dra_verl.apply_dra(shuffled, tokenizer, HashEmbedder())
    torch.testing.assert_close(
        shuffled.batch["token_level_scores"], data.batch["token_level_scores"][perm]
    )


def test_rows_outside_the_selection_and_empty_responses_are_left_alone(tokenizer):
    data, texts, rewards = make_batch(tokenizer, sizes=(3, 3), seed=5)
    data.batch["attention_mask"][1, -data.batch["responses"].shape[1] :] = 0  # empty response
    before = _snapshot(data)
    embedder = HashEmbedder()
    rows = np.array([True, True, True, True, False, True])

    dra_verl.apply_dra(data, tokenizer, embedder, rows=rows, score_keys=["token_level_scores"])

    kept = [0, 2, 3, 5]
    assert embedder.calls == [[texts[i] for i in kept]]
    scores = data.batch["token_level_scores"]
    for i in (1, 4):
        assert torch.equal(scores[i], before["token_level_scores"][i])
    expected = adjust_rewards(
        rewards[kept],
        torch.from_numpy(HashEmbedder.embed([texts[i] for i in kept])),
        before["uid"][kept],
    )
    assert torch.equal(scores[kept, _last_index(data)[kept]], expected)
    # score_keys limits the rewrite to the keys named
    assert torch.equal(data.batch["token_level_rewards"], before["token_level_rewards"])


def test_missing_uid_is_refused(tokenizer):
    data, _, _ = make_batch(tokenizer)
    data.non_tensor_batch.pop("uid")
    with pytest.raises(KeyError, match="uid"):
        dra_verl.apply_dra(data, tokenizer, HashEmbedder())


def test_a_tokenizer_that_does_not_match_is_refused(tokenizer):
    data, _, _ = make_batch(tokenizer)
    data.batch["responses"][0, 0] = len(tokenizer) + 5
    before = data.batch["token_level_scores"].clone()
    with pytest.raises(ValueError, match="does not match the policy"):
        dra_verl.apply_dra(data, tokenizer, HashEmbedder())
    assert torch.equal(data.batch["token_level_scores"], before)


def test_a_split_group_warns_and_is_adjusted_within_the_rows_present(tokenizer):
    data, texts, rewards = make_batch(tokenizer, sizes=(GROUP_SIZE, GROUP_SIZE), seed=7)
    kept = [0, 1, 4, 5, 6, 7]  # two completions of the first prompt were filtered out
    part = data.select_idxs(kept)
    with pytest.warns(RuntimeWarning, match="do not have 4 completions"):
        metrics = dra_verl.apply_dra(part, tokenizer, HashEmbedder(), expected_group_size=4)
    assert metrics["dra/incomplete_groups"] == 1
    expected = adjust_rewards(
        rewards[kept],
        torch.from_numpy(HashEmbedder.embed([texts[i] for i in kept])),
        data.non_tensor_batch["uid"][kept],
    )
    assert torch.equal(
        part.batch["token_level_scores"][torch.arange(6), _last_index(part)], expected
    )


def test_an_embedder_returning_the_wrong_rows_is_refused(tokenizer):
    data, _, _ = make_batch(tokenizer)
    with pytest.raises(ValueError, match="one row per text"):
        dra_verl.apply_dra(data, tokenizer, lambda texts: np.ones((len(texts) - 1, 4)))


# ----------------------------------------------------------------------------- configuration


def _compose(*overrides: str, folder: str = "trainer/config", name: str = "ppo_trainer"):
    """verl's Hydra configuration ``name`` from ``folder`` (relative to the verl package)."""
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), *folder.split("/"))
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(name, overrides=list(overrides))


EMBEDDER_PATH = f"{__name__}:HashEmbedder"


def test_settings_from_the_real_verl_config(monkeypatch):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    assert dra_verl.settings_from_config(_compose()) is None
    assert dra_verl.settings_from_config(_compose("+dra.enable=false")) is None
    settings = dra_verl.settings_from_config(
        _compose("+dra.enable=true", "+dra.min_denominator=0.2", f"+dra.embedder={EMBEDDER_PATH}")
    )
    assert settings.embedder == EMBEDDER_PATH
    assert settings.step.min_denominator == 0.2
    assert isinstance(settings.build_step().embed_fn(), HashEmbedder)  # a class is instantiated

    monkeypatch.setenv(dra_verl.ENV_VAR, "1")
    assert dra_verl.settings_from_config(_compose()) == dra_verl.DRASettings()
    assert dra_verl.DRASettings().step == DRAStep(embedder=EmbedderConfig())
    monkeypatch.setenv(dra_verl.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=dra_verl.ENV_VAR):
        dra_verl.settings_from_config(None)
    monkeypatch.delenv(dra_verl.ENV_VAR)
    with pytest.raises(ValueError, match="unknown key"):
        dra_verl.settings_from_config(_compose("+dra.enable=true", "+dra.min_denom=0.2"))
    # the measure keys, next to min_denominator and backend
    settings = dra_verl.settings_from_config(
        _compose("+dra.enable=true", "+dra.measure=log_det", "+dra.eta=0.5", "+dra.lam=0.25")
    )
    assert settings.step == DRAStep.from_options({"measure": "log_det", "eta": 0.5, "lam": 0.25})
    assert {"measure", "eta", "lam"} <= set(dra_verl.VALID_KEYS)


# ----------------------------------------------------------------------------- the v1 trainer


# The folder from which this module imports by its name: Ray workers need it to unpickle the test
# embedders (classes of this module) sent to the embedder's actor.
IMPORT_ROOT = Path(__file__).resolve().parents[__name__.count(".")]


@pytest.fixture(scope="module")
def ray_cluster():
    """A small local Ray instance with one logical GPU (there is no real one): Ray schedules
    fractional-GPU actors on it; the embedders run there on the CPU."""
    import ray

    # NOTE: logical CPUs: TransferQueue asks one for its controller and one per storage unit; a
    # third lets a CPU actor start beside them.
    ray.init(
        num_cpus=3,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(IMPORT_ROOT)}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def transfer_queue(ray_cluster):
    """A real TransferQueue on the local Ray instance."""
    import transfer_queue as tq
    from omegaconf import OmegaConf

    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()


def _put_rollouts(tq, data: DataProto, padding_rows: int = 1, for_metrics: bool = False, keys=None):
    """Store ``data`` in TransferQueue as the v1 trainer does (nested tensors, uid strings);
    ``for_metrics``: also what verl's KL-in-reward and ``_compute_metrics`` read (prompts, turns,
    old and reference log-probs); ``keys``: the rows' ``{uid}_{session}_{index}`` keys (default:
    one output per session)."""
    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta

    width = data.batch["responses"].shape[1]
    lengths = data.batch["attention_mask"][:, -width:].sum(dim=1).tolist()
    uids = [str(u) for u in data.non_tensor_batch["uid"]]

    def nested(tensor, rows_lengths):
        parts = [tensor[i, :length] for i, length in enumerate(rows_lengths)]
        return torch.nested.as_nested_tensor(parts, layout=torch.jagged)

    responses = [data.batch["responses"][i] for i in range(len(uids))]
    scores = [data.batch["token_level_scores"][i] for i in range(len(uids))]
    log_probs = [data.batch["old_log_probs"][i] for i in range(len(uids))]
    prompt_mask = data.batch["attention_mask"][:, :-width].bool()
    prompts = [data.batch["prompts"][i][prompt_mask[i]] for i in range(len(uids))]
    tags = [{} for _ in uids]
    # verl's synthetic padding rows: one EOS token, a uid of their own, tagged is_padding
    pad_uid = f"pad{uuid.uuid4().hex}"
    for _ in range(padding_rows):
        responses.append(torch.full((width,), 2, dtype=torch.int64))
        scores.append(torch.zeros(width))
        log_probs.append(torch.zeros(width))
        prompts.append(torch.full((1,), 7, dtype=torch.int64))
        lengths.append(1)
        uids.append(pad_uid)
        tags.append({"is_padding": True})
    counters: dict[str, int] = {}
    keys = list(keys or [])
    for uid in uids[len(keys) :]:
        counters[uid] = counters.get(uid, -1) + 1
        keys.append(f"{uid}_{counters[uid]}_0")
    stacked_responses = torch.stack(responses)
    stacked_scores = torch.stack(scores)
    mask = torch.arange(width) < torch.tensor(lengths).unsqueeze(1)
    fields = TensorDict(
        {
            "responses": nested(stacked_responses, lengths),
            "rm_scores": nested(stacked_scores, lengths),
            "response_mask": nested(mask.long(), lengths),
            "uid": uids,
        },
        batch_size=len(uids),
    )
    if for_metrics:
        stacked_log_probs = torch.stack(log_probs)
        fields["old_log_probs"] = nested(stacked_log_probs, lengths)
        fields["ref_log_prob"] = nested(0.9 * stacked_log_probs - 0.05, lengths)
        fields["prompts"] = torch.nested.as_nested_tensor(prompts, layout=torch.jagged)
        fields["num_turns"] = torch.ones(len(uids), dtype=torch.int64)
        for tag in tags:
            tag.update(min_global_steps=0, max_global_steps=0)
    partition = f"train{uuid.uuid4().hex[:8]}"
    tq.kv_batch_put(keys=keys, partition_id=partition, fields=fields)
    return KVBatchMeta(keys=keys, tags=tags, partition_id=partition), stacked_scores, lengths


def _trainer(config, tokenizer):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    trainer = object.__new__(PPOTrainerSync)  # no __init__: it would start models and workers
    trainer.config = config
    trainer.tokenizer = tokenizer
    return trainer


def _grpo_config(*overrides: str, dra: bool = True, **options):
    """verl's configuration of a GRPO step over groups of GROUP_SIZE; with ``dra``, DRA on with
    HashEmbedder and ``options`` as ``dra.*`` keys."""
    keys = [f"+dra.{key}={value}" for key, value in options.items()]
    if dra:
        keys = ["+dra.enable=true", f"+dra.embedder={EMBEDDER_PATH}", *keys]
    grpo = ["algorithm.adv_estimator=grpo", f"actor_rollout_ref.rollout.n={GROUP_SIZE}"]
    return _compose(*grpo, *keys, *overrides)


def _scores_and_advantages(tq, meta, lengths):
    got = tq.kv_batch_get(
        keys=meta.keys, partition_id=meta.partition_id, select_fields=["rm_scores", "advantages"]
    )
    scores = got["rm_scores"].to_padded_tensor(0.0)
    assert scores.shape[1] == max(lengths)
    advantages = got["advantages"].to_padded_tensor(0.0)
    rows = torch.arange(len(lengths))
    last = torch.tensor(lengths) - 1
    return scores, scores[rows, last], advantages[rows, 0]


def _grpo(scores: torch.Tensor, uids) -> torch.Tensor:
    """verl's own GRPO outcome advantage of one scalar score per row."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards = torch.zeros(len(scores), 1)
    rewards[:, 0] = scores
    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=rewards,
        response_mask=torch.ones_like(rewards),
        index=np.array(uids, dtype=object),
    )
    return advantages[:, 0]


def test_v1_trainer_with_dra_off_is_unchanged(transfer_queue, tokenizer, monkeypatch):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    data, _, rewards = make_batch(tokenizer, seed=11)
    meta, stored, lengths = _put_rollouts(transfer_queue, data)
    config = _grpo_config(dra=False)
    metrics: dict = {}

    _trainer(config, tokenizer)._compute_advantage(meta, metrics)

    assert not any(key.startswith("dra/") for key in metrics)
    scores, _, advantages = _scores_and_advantages(transfer_queue, meta, lengths)
    assert torch.equal(scores, stored[:, : scores.shape[1]])
    n = len(rewards)
    uids = list(data.non_tensor_batch["uid"])
    torch.testing.assert_close(advantages[:n], _grpo(rewards, uids))


@pytest.mark.parametrize(
    "measure", [{}, {"measure": "log_det", "eta": 0.9, "lam": 0.5}], ids=["graph_cut", "log_det"]
)
def test_v1_trainer_with_dra_on_takes_the_advantages_from_the_adjusted_scores(
    transfer_queue, tokenizer, monkeypatch, measure
):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    data, texts, rewards = make_batch(tokenizer, seed=12)
    meta, stored, lengths = _put_rollouts(transfer_queue, data)
    trainer = _trainer(_grpo_config(**measure), tokenizer)
    metrics: dict = {}

    with pytest.warns(RuntimeWarning, match="do not have 4 completions"):
        trainer._compute_advantage(meta, metrics)

    uids = list(data.non_tensor_batch["uid"])
    n = len(rewards)
    embeddings = torch.from_numpy(HashEmbedder.embed(texts))
    expected = adjust_rewards(rewards, embeddings, uids, **measure)
    if measure:  # the keys reached the computation: graph-cut differs here
        assert not torch.allclose(expected, adjust_rewards(rewards, embeddings, uids))
    scores, _, advantages = _scores_and_advantages(transfer_queue, meta, lengths)
    # rm_scores in TransferQueue are the raw ones again (verl's metrics read them)
    assert torch.equal(scores, stored[:, : scores.shape[1]])
    torch.testing.assert_close(advantages[:n], _grpo(expected, uids))
    assert not torch.allclose(advantages[:n], _grpo(rewards, uids))
    assert metrics["dra/reward_after/mean"] == pytest.approx(float(expected.double().mean()))
    assert metrics["dra/rows"] == n  # not the padding row
    assert metrics["dra/incomplete_groups"] == 1
    assert trainer._dra_kernels_state[1].embed_fn().calls == [texts]  # built once, reused


def test_multi_output_agent_loops_group_each_sessions_final_output(
    transfer_queue, tokenizer, monkeypatch
):
    """verl 0.9.1's multi-output agent loops write several rows per session, keyed
    ``{uid}_{session}_{index}``; its GRPO groups each session's last output by uid and gives the
    session's other outputs that advantage. DRA groups the same rows: the final outputs, 4
    sessions of each prompt, so no group is incomplete."""
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    data, texts, rewards = make_batch(tokenizer, sizes=(6, 6), seed=14)
    uids = list(data.non_tensor_batch["uid"])
    sessions, indices = [0, 0, 1, 2, 2, 3] * 2, [0, 1, 0, 0, 1, 0] * 2
    keys = [f"{u}_{s}_{i}" for u, s, i in zip(uids, sessions, indices, strict=True)]
    final = np.array([False, True, True, False, True, True] * 2)
    assert dra_verl.session_finals([*keys, "pad_0_0"]).tolist() == [*final.tolist(), True]
    meta, stored, lengths = _put_rollouts(transfer_queue, data, keys=keys)
    metrics: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no group is reported incomplete
        _trainer(_grpo_config(), tokenizer)._compute_advantage(meta, metrics)

    embeddings = torch.from_numpy(HashEmbedder.embed(texts))
    finals = [u for u, f in zip(uids, final, strict=True) if f]
    expected = adjust_rewards(rewards[final], embeddings[final], finals)
    scores, _, advantages = _scores_and_advantages(transfer_queue, meta, lengths)
    assert torch.equal(scores, stored[:, : scores.shape[1]])
    want = _grpo(expected, finals)
    torch.testing.assert_close(advantages[: len(uids)][final], want)
    # an intermediate output takes its session's advantage (verl's broadcast)
    torch.testing.assert_close(advantages[[0, 3, 6, 9]], want[[0, 2, 4, 6]])
    assert metrics["dra/rows"] == 8 and metrics["dra/incomplete_groups"] == 0


def test_the_legacy_trainer_refuses_dra_and_is_unchanged_without_it(monkeypatch):
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    assert getattr(RayPPOTrainer.__init__, "__dra_kernels_wrapped__", False)
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    with pytest.raises(RuntimeError, match="legacy trainer"):
        RayPPOTrainer(_compose("+dra.enable=true"))
    monkeypatch.setenv(dra_verl.ENV_VAR, "1")
    with pytest.raises(RuntimeError, match="legacy trainer"):
        RayPPOTrainer(config=_compose())
    # without DRA the call goes straight to verl's own __init__ (which needs more arguments)
    monkeypatch.delenv(dra_verl.ENV_VAR)
    with pytest.raises(TypeError, match="role_worker_mapping"):
        RayPPOTrainer(_compose())


def test_only_trainers_that_take_the_hooked_advantage_step_pass_with_dra(monkeypatch):
    """SeparateRayPPOTrainer's subclasses that keep its _fit_compute_advantage (the async
    recipes' trainers) construct with DRA on; a subclass with an advantage step of its own is
    refused at construction, whether or not its __init__ calls verl's."""
    from verl.experimental.separation.ray_trainer import SeparateRayPPOTrainer

    class KeepsTheStep(SeparateRayPPOTrainer):
        def __init__(self, config):
            self.config = config

    class OwnStep(KeepsTheStep):
        def _fit_compute_advantage(self, batch):
            return batch

    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    on = _compose("+dra.enable=true")
    assert KeepsTheStep(on).config is on
    with pytest.raises(RuntimeError, match="advantage step of its own"):
        OwnStep(on)
    assert OwnStep(_compose()).config is not None  # without DRA, no refusal
    # through SeparateRayPPOTrainer's own __init__, which calls RayPPOTrainer's: let through to
    # verl's (which asserts on the worker roles); with an advantage step of its own, refused there
    arguments = (on, None, {}, None)  # config, tokenizer, role_worker_mapping, resource pools
    with pytest.raises(AssertionError, match="role_worker_mapping"):
        SeparateRayPPOTrainer(*arguments)
    with pytest.raises(RuntimeError, match="advantage step of its own"):
        type("OwnStepVerlInit", (SeparateRayPPOTrainer,), {"_fit_compute_advantage": len})(
            *arguments
        )


def test_v1_trainer_logs_the_coverage_of_an_embedder_served_by_a_ray_actor(
    transfer_queue, ray_cluster, tokenizer, monkeypatch
):
    """+dra.placement=ray: the embedder runs in an actor holding a GPU share of the cluster; its
    EmbedStats come back with the embeddings and are logged with the other dra/* metrics."""
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    data, texts, rewards = make_batch(tokenizer, sizes=(GROUP_SIZE, GROUP_SIZE), seed=13)
    meta, _, lengths = _put_rollouts(transfer_queue, data)
    config = _compose(
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.rollout.n={GROUP_SIZE}",
        "+dra.enable=true",
        f"+dra.embedder={__name__}:StatsEmbedder",
        "+dra.placement=ray",
        "+dra.num_gpus=0.25",
    )
    trainer = _trainer(config, tokenizer)
    metrics: dict = {}

    trainer._compute_advantage(meta, metrics)

    embed = trainer._dra_kernels_state[1].embed_fn()
    server = embed.__self__
    assert isinstance(server, _placement.RayEmbedder)
    assert server.placement == Placement("ray", None, 0.25, False)
    assert server.info["gpu_ids"] == [0]  # the actor holds a share of the (logical) GPU
    expected = StatsEmbedder.stats(texts).metrics()
    assert metrics["dra/tokens_read_share"] == pytest.approx(expected["dra/tokens_read_share"])
    assert metrics["dra/texts_cut"] == expected["dra/texts_cut"] > 0
    uids = list(data.non_tensor_batch["uid"])
    adjusted = adjust_rewards(rewards, torch.from_numpy(HashEmbedder.embed(texts)), uids)
    _, _, advantages = _scores_and_advantages(transfer_queue, meta, lengths)
    torch.testing.assert_close(advantages[: len(texts)], _grpo(adjusted, uids))
    server.close()


@pytest.mark.parametrize("use_kl_in_reward", [False, True], ids=["no_kl", "kl_in_reward"])
def test_verl_own_score_metrics_stay_raw_with_dra_on(
    transfer_queue, tokenizer, monkeypatch, use_kl_in_reward
):
    """verl's own _compute_metrics after the wrapped _compute_advantage: critic/score/* and
    critic/rewards/* (read from rm_scores and token_level_rewards in TransferQueue) are those of
    the same batch without DRA; only the advantages come from the adjusted scores, whose mean is
    logged as dra/reward_after/mean."""
    from verl.trainer.ppo import core_algos

    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    data, texts, rewards = make_batch(tokenizer, sizes=(GROUP_SIZE, GROUP_SIZE), seed=17)
    kl = f"algorithm.use_kl_in_reward={str(use_kl_in_reward).lower()}"
    logged, advantages = {}, {}
    for dra in (False, True):
        meta, _, lengths = _put_rollouts(transfer_queue, data, for_metrics=True)
        config = _grpo_config(kl, dra=dra)
        trainer = _trainer(config, tokenizer)
        trainer.use_critic = False
        trainer._rollout_moe_lb_metrics_accumulator = None
        trainer._get_n_gpus_for_throughput = lambda: 1
        if use_kl_in_reward:
            trainer.kl_ctrl_in_reward = core_algos.get_kl_controller(config.algorithm.kl_ctrl)
        metrics: dict = {}
        trainer._compute_advantage(meta, metrics)
        trainer._compute_metrics(meta, metrics, {"step": 1.0}, global_steps=1, epoch=0)
        logged[dra] = metrics
        advantages[dra] = _scores_and_advantages(transfer_queue, meta, lengths)[2]

    off, on = logged[False], logged[True]
    n = len(texts)
    assert on["critic/score/mean"] == pytest.approx(float(rewards.double().mean()))
    for stat in ("mean", "max", "min"):
        assert on[f"critic/score/{stat}"] == off[f"critic/score/{stat}"]
        assert on[f"critic/rewards/{stat}"] == pytest.approx(
            off[f"critic/rewards/{stat}"], abs=1e-6
        )
    if use_kl_in_reward:  # the KL penalty is there, on the raw scores
        assert on["critic/rewards/mean"] < on["critic/score/mean"]
    assert on["dra/reward_before/mean"] == pytest.approx(on["critic/score/mean"])
    uids = list(data.non_tensor_batch["uid"])
    adjusted = DRAStep()(rewards, uids, embeddings=HashEmbedder.embed(texts)).adjusted
    assert on["dra/reward_after/mean"] == pytest.approx(float(adjusted.double().mean()))
    assert on["dra/reward_after/mean"] != pytest.approx(on["critic/score/mean"])
    if not use_kl_in_reward:  # GRPO on the adjusted scores
        torch.testing.assert_close(advantages[True][:n], _grpo(adjusted, uids))
    assert not torch.allclose(advantages[True][:n], advantages[False][:n])


def _count_smi_passes(monkeypatch) -> dict[str, int]:
    """Counts the core's SMI passes on CPU (graph-cut: torch_backend.smi_scores, or the fused
    torch_backend.adjust_rewards; other measures: measures.smi_by_measure) and its
    factorisations of group ids (inputs.factorize_group_ids)."""
    from dra_kernels import inputs, measures, torch_backend

    counts = {"smi": 0, "factorize": 0}

    def counting(module, name, kind):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[kind] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in (
        (torch_backend, "smi_scores"),
        (torch_backend, "adjust_rewards"),
        (measures, "smi_by_measure"),
    ):
        counting(module, name, "smi")
    counting(inputs, "factorize_group_ids", "factorize")
    return counts


@pytest.mark.parametrize(
    "measure", [{}, {"measure": "facility_location", "eta": 0.5}], ids=["graph_cut", "fl"]
)
def test_one_step_runs_one_smi_pass(transfer_queue, tokenizer, monkeypatch, measure):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    data, _, _ = make_batch(tokenizer, seed=19)
    meta, _, _ = _put_rollouts(transfer_queue, data)
    trainer = _trainer(_grpo_config(**measure), tokenizer)
    counts = _count_smi_passes(monkeypatch)

    with pytest.warns(RuntimeWarning, match="do not have 4 completions"):
        trainer._compute_advantage(meta, {})
    assert counts == {"smi": 1, "factorize": 1}

    counts.update(smi=0, factorize=0)
    dra_verl.apply_dra(make_batch(tokenizer, seed=19)[0], tokenizer, HashEmbedder(), **measure)
    assert counts == {"smi": 1, "factorize": 1}


# ----------------------------------------------------------------------------- the async recipes

ASYNC_TRAINERS = ["one_step_off", "fully_async"]


def _async_trainer_class(name: str) -> type:
    """The trainer class of verl's one_step_off_policy / fully_async_policy recipe.
    FullyAsyncTrainer is a Ray actor: the class that runs in its actor process, into which Ray
    copied the methods when the class was defined."""
    if name == "one_step_off":
        from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer

        return OneStepOffRayTrainer
    from verl.experimental.fully_async_policy.fully_async_trainer import FullyAsyncTrainer

    return FullyAsyncTrainer.__ray_metadata__.modified_class


def _recipe_config(name: str, *overrides: str):
    """The recipe's own configuration (its yaml over ppo_trainer), set up as its examples set it
    (no hybrid engine), for a GRPO step on a CPU: no workers, a small batch."""
    recipe = {"one_step_off": "one_step_off_policy", "fully_async": "fully_async_policy"}[name]
    return _compose(
        "hydra.searchpath=[pkg://verl.trainer.config]",  # the recipe's yaml names a cwd path
        "actor_rollout_ref.hybrid_engine=false",
        "trainer.logger=[console]",
        "data.train_batch_size=2",
        "data.dataloader_num_workers=0",
        "algorithm.adv_estimator=grpo",
        "critic.enable=false",
        f"actor_rollout_ref.rollout.n={GROUP_SIZE}",
        *overrides,
        folder=f"experimental/{recipe}/config",
        name=f"{name}_ppo_trainer",
    )


def _legacy_batch(tokenizer, sizes=(GROUP_SIZE, GROUP_SIZE), seed=0):
    """make_batch's DataProto as the legacy layout holds it at the advantage step: the reward
    step's ``rm_scores`` and the reference log-probs (KL in reward), not yet the score tensors
    that the advantage step writes."""
    data, texts, rewards = make_batch(tokenizer, sizes=sizes, seed=seed)
    data.batch["rm_scores"] = data.batch.pop("token_level_scores")
    data.batch.pop("token_level_rewards")
    data.batch["ref_log_prob"] = 0.9 * data.batch["old_log_probs"] - 0.05
    return data, texts, rewards


def _separate_trainer(name: str, config, tokenizer, batch: DataProto):
    """A recipe trainer without its __init__ (it would start workers), with the state its
    fit_step sets, after verl's own reward step (_fit_compute_reward sets reward_tensor)."""
    from verl.trainer.ppo import core_algos

    trainer = object.__new__(_async_trainer_class(name))
    trainer.config = config
    trainer.tokenizer = tokenizer
    trainer.use_rm = False
    trainer.metrics = {"training/global_step": 1, "training/epoch": 0}
    trainer.timing_raw = {}
    if config.algorithm.use_kl_in_reward:
        trainer.kl_ctrl_in_reward = core_algos.get_kl_controller(config.algorithm.kl_ctrl)
    return trainer, trainer._fit_compute_reward(batch)


def _with_last_scores(data: DataProto, scores: torch.Tensor) -> torch.Tensor:
    """``rm_scores`` with each row's last valid token set to ``scores``."""
    out = data.batch["rm_scores"].clone()
    out[torch.arange(len(scores)), _last_index(data)] = scores
    return out


@pytest.mark.parametrize("use_kl_in_reward", [False, True], ids=["no_kl", "kl_in_reward"])
@pytest.mark.parametrize("name", ASYNC_TRAINERS)
def test_async_trainers_take_the_advantages_from_the_adjusted_scores(
    tokenizer, monkeypatch, name, use_kl_in_reward
):
    """verl's own SeparateRayPPOTrainer._fit_compute_advantage, DRA on: advantages and returns
    are verl's of the adjusted scores; the batch's token_level_scores / token_level_rewards are
    the raw ones again (raw - KL with KL in reward), so verl's compute_data_metrics reports the
    critic/score/* and critic/rewards/* of the run without DRA; dra/* metrics are logged."""
    from verl.trainer.ppo.metric_utils import compute_data_metrics

    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    kl = f"algorithm.use_kl_in_reward={str(use_kl_in_reward).lower()}"
    runs = {}
    for dra in (False, True):
        data, texts, rewards = _legacy_batch(tokenizer, seed=23)
        trainer, batch = _separate_trainer(name, _grpo_config(kl, dra=dra), tokenizer, data)
        raw = batch.batch["rm_scores"].clone()
        out = trainer._fit_compute_advantage(batch)
        runs[dra] = trainer, out, compute_data_metrics(out, use_critic=False)

    uids = list(data.non_tensor_batch["uid"])
    expected = adjust_rewards(rewards, torch.from_numpy(HashEmbedder.embed(texts)), uids)
    # verl's step, DRA off, handed the adjusted scores: the advantages DRA must give
    data = _legacy_batch(tokenizer, seed=23)[0]
    reference, batch = _separate_trainer(name, _grpo_config(kl, dra=False), tokenizer, data)
    reference.reward_tensor = _with_last_scores(data, expected)
    want = reference._fit_compute_advantage(batch)

    (_, off, off_logged), (trainer, on, on_logged) = runs[False], runs[True]
    for key in ("advantages", "returns"):
        torch.testing.assert_close(on.batch[key], want.batch[key])
    if not use_kl_in_reward:
        torch.testing.assert_close(on.batch["advantages"][:, 0], _grpo(expected, uids))
    assert not torch.allclose(on.batch["advantages"], off.batch["advantages"])
    # the raw scores are back where verl's metrics and dumps read them
    assert torch.equal(on.batch["token_level_scores"], raw)
    assert torch.equal(trainer.reward_tensor, raw)
    torch.testing.assert_close(
        on.batch["token_level_rewards"], off.batch["token_level_rewards"], rtol=0, atol=1e-6
    )
    assert set(on.batch.keys()) == set(off.batch.keys())  # nothing of DRA's left in the batch
    for stat in ("mean", "max", "min"):
        assert on_logged[f"critic/score/{stat}"] == off_logged[f"critic/score/{stat}"]
        assert on_logged[f"critic/rewards/{stat}"] == pytest.approx(
            off_logged[f"critic/rewards/{stat}"], abs=1e-6
        )
    metrics = trainer.metrics
    assert metrics["training/global_step"] == 1 and "adv" in trainer.timing_raw
    assert ("actor/reward_kl_penalty" in metrics) == use_kl_in_reward  # verl's, logged too
    assert metrics["dra/rows"] == len(texts) and metrics["dra/incomplete_groups"] == 0
    assert metrics["dra/reward_before/mean"] == pytest.approx(on_logged["critic/score/mean"])
    assert metrics["dra/reward_after/mean"] == pytest.approx(float(expected.double().mean()))
    assert trainer._dra_kernels_state[1].embed_fn().calls == [texts]


@pytest.mark.parametrize("name", ASYNC_TRAINERS)
def test_async_trainers_with_dra_off_are_unchanged(tokenizer, monkeypatch, name):
    from verl.experimental.separation.ray_trainer import SeparateRayPPOTrainer

    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    original = SeparateRayPPOTrainer._fit_compute_advantage.__wrapped__

    def run(step):
        data, _, _ = _legacy_batch(tokenizer, seed=24)
        trainer, batch = _separate_trainer(name, _grpo_config(dra=False), tokenizer, data)
        return trainer, step(trainer, batch)

    hooked, got = run(lambda trainer, batch: trainer._fit_compute_advantage(batch))
    plain, want = run(original)  # verl's own method, not wrapped
    keys = set(want.batch.keys())
    assert set(got.batch.keys()) == keys
    for key in keys:
        assert torch.equal(got.batch[key], want.batch[key]), key
    assert hooked.metrics == plain.metrics
    assert "_dra_kernels_state" not in hooked.__dict__


def test_raw_scores_stay_with_their_rows_when_verl_resamples_the_batch(tokenizer, monkeypatch):
    """With GAE and algorithm.use_pf_ppo, verl's advantage step resamples the rows (by their
    scores, here the adjusted ones); the raw scores put back are each row's own."""
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    data, _, _ = _legacy_batch(tokenizer, seed=25)
    data.batch["values"] = torch.zeros_like(data.batch["rm_scores"])
    config = _compose(
        "algorithm.adv_estimator=gae",
        "algorithm.use_pf_ppo=true",
        f"actor_rollout_ref.rollout.n={GROUP_SIZE}",
        "+dra.enable=true",
        f"+dra.embedder={EMBEDDER_PATH}",
    )
    trainer, batch = _separate_trainer("one_step_off", config, tokenizer, data)
    raw = batch.batch["rm_scores"].clone()
    torch.manual_seed(0)
    out = trainer._fit_compute_advantage(batch)

    # the row each output row was drawn from, found by its (distinct) old_log_probs
    same = out.batch["old_log_probs"][:, None, :] == data.batch["old_log_probs"][None, :, :]
    source = same.all(dim=-1).int().argmax(dim=1)
    assert not torch.equal(source, torch.arange(len(source)))  # verl did resample
    assert torch.equal(out.batch["token_level_scores"], raw[source])
    assert torch.equal(out.batch["token_level_rewards"], raw[source])


@pytest.mark.parametrize("name", ASYNC_TRAINERS)
def test_async_trainers_construct_with_dra_on_and_build_the_embedder_once(
    tokenizer, monkeypatch, name
):
    """verl's own __init__ of each recipe's trainer, with the recipe's configuration: DRA on, it
    constructs (no embedder yet); the embedder is built at the first advantage step, once; a bad
    key fails at construction, before verl's __init__ runs."""
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    prompts = [{"prompt": i} for i in range(4)]

    def build(*overrides, **arguments):
        if name == "one_step_off":
            arguments.update(train_dataset=prompts, val_dataset=prompts, collate_fn=list)
        config = _recipe_config(name, *overrides)
        return _async_trainer_class(name)(config, tokenizer, {}, None, **arguments)

    CountingFactory.built = 0
    trainer = build("+dra.enable=true", f"+dra.embedder={__name__}:CountingFactory")
    assert CountingFactory.built == 0 and "_dra_kernels_state" not in trainer.__dict__
    for seed in (26, 27):  # two steps, one embedder
        trainer.metrics = {}
        batch = trainer._fit_compute_reward(_legacy_batch(tokenizer, seed=seed)[0])
        trainer._fit_compute_advantage(batch)
        assert trainer.metrics["dra/rows"] == 2 * GROUP_SIZE
    assert CountingFactory.built == 1

    for override, messages in STARTUP_REFUSALS:
        with pytest.raises(ValueError, match=re.escape(messages[0])):
            build("+dra.enable=true", override, bad_argument=None)  # verl's __init__ never ran


def test_the_fully_async_trainer_runs_dra_in_its_ray_actor(ray_cluster, tokenizer, monkeypatch):
    """FullyAsyncTrainer is a Ray actor: Ray sends its class to the actor's process by value,
    with the methods it copied when the class was defined. There too the keys are checked at
    construction and verl's _fit_compute_advantage runs DRA."""
    from verl.experimental.fully_async_policy.fully_async_trainer import FullyAsyncTrainer

    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    ray = ray_cluster
    data, texts, rewards = _legacy_batch(tokenizer, seed=28)

    def advantage_step(trainer, batch):
        out = trainer._fit_compute_advantage(trainer._fit_compute_reward(batch))
        return out.batch["advantages"][:, 0], out.batch["token_level_scores"], trainer.metrics

    config = _recipe_config("fully_async", "+dra.enable=true", f"+dra.embedder={EMBEDDER_PATH}")
    actor = FullyAsyncTrainer.options(num_cpus=0).remote(config, tokenizer, {}, None)
    try:
        advantages, scores, metrics = ray.get(actor.__ray_call__.remote(advantage_step, data))
    finally:
        ray.kill(actor)
    uids = list(data.non_tensor_batch["uid"])
    expected = adjust_rewards(rewards, torch.from_numpy(HashEmbedder.embed(texts)), uids)
    torch.testing.assert_close(advantages, _grpo(expected, uids))
    assert torch.equal(scores, data.batch["rm_scores"])
    assert metrics["dra/reward_after/mean"] == pytest.approx(float(expected.double().mean()))

    bad = _recipe_config("fully_async", "+dra.enable=true", STARTUP_REFUSALS[0][0])
    actor = FullyAsyncTrainer.options(num_cpus=0).remote(bad, tokenizer, {}, None)
    with pytest.raises(ray.exceptions.RayActorError, match=re.escape(STARTUP_REFUSALS[0][1][0])):
        ray.get(actor.__ray_ready__.remote())


# ----------------------------------------------------------------------------- options, at start-up


ALL_OPTIONS = {
    "model": "jinaai/jina-embeddings-v2-small-en",
    "trust_remote_code": True,
    "long_text": "head_tail",
    "window_tokens": 512,
    "window_overlap": 0,
    "max_tokens": 1024,
    "batch_size": 8,
    "device": "cpu",
    "dtype": "bfloat16",
}


def _override(key: str, value) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
    return f"+dra.{key}={text}"


def test_every_embedder_option_is_a_dra_key(monkeypatch):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    assert set(ALL_OPTIONS) == set(EMBEDDER_OPTIONS)
    overrides = [_override(k, v) for k, v in ALL_OPTIONS.items()]
    placement = ["+dra.placement=local", "+dra.num_gpus=0.25", "+dra.placement_timeout=30"]
    settings = dra_verl.settings_from_config(_compose("+dra.enable=true", *overrides, *placement))
    assert settings.step.embedder == EmbedderConfig(**{**ALL_OPTIONS, "device": None})
    assert settings.device == "cpu"
    assert settings.placement == PlacementOptions("local", 0.25, 30.0)
    assert "sentence_transformers" not in sys.modules  # checked, nothing loaded

    # The paper's embedder is one line of overrides.
    paper = dra_verl.settings_from_config(
        _compose(
            "+dra.enable=true",
            "+dra.model=jinaai/jina-embeddings-v2-small-en",
            "+dra.trust_remote_code=true",
        )
    )
    assert paper.step.embedder == EmbedderConfig(
        model="jinaai/jina-embeddings-v2-small-en", trust_remote_code=True
    )


def test_a_typo_fails_and_lists_every_valid_key(monkeypatch):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=r"\['dra.modle'\]") as caught:
        dra_verl.settings_from_config(_compose("+dra.enable=true", "+dra.modle=x"))
    message = str(caught.value)
    for key in dra_verl.VALID_KEYS:
        assert f"dra.{key}" in message
    assert set(EMBEDDER_OPTIONS) <= set(dra_verl.VALID_KEYS)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("long_text", "tail"),
        ("window_tokens", 0),
        ("window_overlap", -1),
        ("max_tokens", "many"),
        ("batch_size", 0),
        ("trust_remote_code", "maybe"),
        ("dtype", "fp8"),
        ("device", "gpu"),
        ("model", 3),
        ("placement", "cluster"),
        ("num_gpus", 2),
        ("placement_timeout", 0),
        ("min_denominator", 0),
        ("backend", "cuda"),
        ("embedder", 7),
        ("measure", "cosine"),
        ("eta", 0.5),  # graph_cut has no eta
        ("lam", 2.0),  # nor lam
    ],
)
def test_a_bad_value_names_its_key(monkeypatch, key, value):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    with pytest.raises((ValueError, TypeError), match=re.escape(f"dra.{key}")):
        dra_verl.settings_from_config(_compose("+dra.enable=true", _override(key, value)))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["+dra.measure=log_det", "+dra.eta=1.5"], r"^dra\.eta must be > 0 and <= 1"),
        (["+dra.measure=log_det", "+dra.lam=0"], r"^dra\.lam must be a finite number >= 1e-06"),
        (["+dra.measure=facility_location", "+dra.lam=2"], r"^dra\.lam is used only by"),
        (["+dra.measure=facility_location", "+dra.eta=-1"], r"^dra\.eta must be a finite"),
        (["+dra.measure=log_det", "+dra.eta=abc"], r"^dra\.eta must be a number"),
        (["+dra.measure=log_det", "+dra.backend=triton"], r"^dra\.measure='log_det' has no Triton"),
    ],
)
def test_measure_keys_are_checked_by_the_core_rule(monkeypatch, overrides, match):
    """The core's rule (dra_kernels.measures.check_measure), the message naming the key; at
    start-up (validate_config / the trainer's construction), before any model loads."""
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    with pytest.raises((ValueError, TypeError), match=match):
        dra_verl.settings_from_config(_compose("+dra.enable=true", *overrides))
    assert "sentence_transformers" not in sys.modules


def test_embedder_options_do_not_apply_to_a_user_embedder(monkeypatch):
    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=r"dra\.max_tokens configure the built-in embedder"):
        dra_verl.settings_from_config(
            _compose("+dra.enable=true", f"+dra.embedder={EMBEDDER_PATH}", "+dra.max_tokens=64")
        )


STARTUP_REFUSALS = [
    ("+dra.modle=x", ["unknown key(s) ['dra.modle']", "dra.model, dra.trust_remote_code"]),
    # the core's rule (above 1 the clamp would shrink rewards with SMI = 0), not only > 0
    ("+dra.min_denominator=2", ["dra.min_denominator must be a finite number > 0 and <= 1, got 2"]),
]


def _driver_refuses_before_ray_starts(cwd, driver: str, *overrides: str, messages) -> None:
    """``python -m driver +dra.enable=true *overrides`` stops with ``messages`` before ray.init
    (which verl's run_ppo prints as 'ray init kwargs')."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", driver, "+dra.enable=true", *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    for message in messages:
        assert message in result.stderr
    assert "ray init kwargs" not in result.stdout
    assert elapsed < 60


@pytest.mark.parametrize(("override", "messages"), STARTUP_REFUSALS, ids=["typo", "min_den"])
def test_the_driver_refuses_a_bad_key_before_ray_starts(tmp_path, override, messages):
    """verl's own entry point: main_ppo's driver checks the keys in validate_config."""
    _driver_refuses_before_ray_starts(
        tmp_path, "verl.trainer.main_ppo", override, messages=messages
    )


@pytest.mark.parametrize(
    "driver",
    [
        "verl.experimental.one_step_off_policy.main_ppo",
        "verl.experimental.fully_async_policy.fully_async_main",
    ],
    ids=["one_step_off", "fully_async"],
)
def test_the_async_recipe_drivers_refuse_a_bad_key_before_ray_starts(tmp_path, driver):
    """The recipes' drivers call no validate_config before ray.init (one_step_off_policy calls
    it later, in its TaskRunner; fully_async_policy not at all): the keys are checked in verl's
    run_ppo, which both call first."""
    override, messages = STARTUP_REFUSALS[0]
    # NOTE: one_step_off_policy's yaml finds verl's ppo_trainer.yaml by a path relative to the cwd
    search = "hydra.searchpath=[pkg://verl.trainer.config]"
    _driver_refuses_before_ray_starts(tmp_path, driver, search, override, messages=messages)


@pytest.mark.parametrize(("override", "messages"), STARTUP_REFUSALS, ids=["typo", "min_den"])
def test_the_trainer_checks_the_keys_when_constructed(monkeypatch, override, messages):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=re.escape(messages[0])):
        PPOTrainerSync(_compose("+dra.enable=true", override))


class _Stop(Exception):
    pass


class CountingFactory:
    """A class named by +dra.embedder: counts how often it is built."""

    built = 0

    def __init__(self):
        type(self).built += 1

    def __call__(self, texts):
        return HashEmbedder.embed(texts)


def test_fit_builds_the_embedder_before_verl_starts_training(tokenizer, monkeypatch):
    import verl.trainer.ppo.v1.trainer_base as trainer_base

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.delenv(dra_verl.ENV_VAR, raising=False)
    monkeypatch.setattr(trainer_base.SkipManager, "init", stop)  # the first thing fit does
    CountingFactory.built = 0
    config = _compose("+dra.enable=true", f"+dra.embedder={__name__}:CountingFactory")
    trainer = _trainer(config, tokenizer)
    with pytest.raises(_Stop):
        trainer.fit(None)
    assert CountingFactory.built == 1
    assert isinstance(trainer._dra_kernels_state[1].embed_fn(), CountingFactory)
    # without DRA, fit goes straight to verl's
    trainer = _trainer(_compose(), tokenizer)
    with pytest.raises(_Stop):
        trainer.fit(None)
    assert CountingFactory.built == 1
    assert "_dra_kernels_state" not in trainer.__dict__


# ----------------------------------------------------------------------------- metrics


def test_apply_dra_logs_what_the_embedder_read(tokenizer):
    data, texts, _ = make_batch(tokenizer, seed=21)
    embedder = StatsEmbedder()
    metrics = dra_verl.apply_dra(data, tokenizer, embedder)
    expected = StatsEmbedder.stats(texts).metrics()
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert expected["dra/texts_cut"] > 0 and expected["dra/tokens_read_share"] < 1
    # an embedder that keeps no statistics: no coverage metrics (unknown, not 1.0)
    plain = dra_verl.apply_dra(make_batch(tokenizer, seed=21)[0], tokenizer, HashEmbedder())
    assert "dra/tokens_read_share" not in plain and "dra/texts_cut" not in plain


# ----------------------------------------------------------------------------- placement

NO_GPU = ClusterView(local_cuda=False, ray_initialized=False, cluster_gpus=0.0)
GPU_HERE = ClusterView(local_cuda=True, ray_initialized=False, cluster_gpus=0.0)
CLUSTER_GPUS = ClusterView(local_cuda=False, ray_initialized=True, cluster_gpus=8.0)
RAY_NO_GPU = ClusterView(local_cuda=False, ray_initialized=True, cluster_gpus=0.0)
SHARE = PlacementOptions(num_gpus=0.2).num_gpus


@pytest.mark.parametrize(
    ("device", "placement", "view", "custom", "expected"),
    [
        # auto: a GPU here, else a GPU share of the cluster, else this CPU
        (None, "auto", GPU_HERE, False, Placement("local", None, 0.0, False)),
        (None, "auto", CLUSTER_GPUS, False, Placement("ray", "cuda", SHARE, False)),
        (None, "auto", RAY_NO_GPU, False, Placement("local", None, 0.0, True)),
        (None, "auto", NO_GPU, False, Placement("local", None, 0.0, True)),
        ("cuda", "auto", CLUSTER_GPUS, False, Placement("ray", "cuda", SHARE, False)),
        ("cuda:1", "auto", GPU_HERE, False, Placement("local", "cuda:1", 0.0, False)),
        ("cpu", "auto", CLUSTER_GPUS, False, Placement("local", "cpu", 0.0, True)),
        (None, "auto", CLUSTER_GPUS, True, Placement("local", None, 0.0, True)),
        ("mps", "auto", NO_GPU, False, Placement("local", "mps", 0.0, False)),
        # local: always this process
        (None, "local", CLUSTER_GPUS, False, Placement("local", None, 0.0, True)),
        ("cuda", "local", GPU_HERE, False, Placement("local", "cuda", 0.0, False)),
        # ray: always an actor, on a GPU share unless the device asked for is the CPU
        (None, "ray", CLUSTER_GPUS, False, Placement("ray", "cuda", SHARE, False)),
        ("cuda:0", "ray", CLUSTER_GPUS, False, Placement("ray", "cuda", SHARE, False)),
        ("cpu", "ray", RAY_NO_GPU, False, Placement("ray", "cpu", 0.0, True)),
        (None, "ray", CLUSTER_GPUS, True, Placement("ray", None, SHARE, False)),
    ],
)
def test_placement_decisions(device, placement, view, custom, expected):
    options = PlacementOptions(placement=placement, num_gpus=0.2)
    assert decide_placement(device, options, view, custom=custom) == expected


@pytest.mark.parametrize(
    ("device", "placement", "view", "match"),
    [
        ("cuda", "auto", NO_GPU, "no GPU in this process nor in a Ray cluster"),
        ("cuda", "auto", RAY_NO_GPU, "no GPU in this process nor in a Ray cluster"),
        ("cuda:1", "auto", CLUSTER_GPUS, "this process sees no CUDA device"),
        ("cuda", "local", CLUSTER_GPUS, "this process sees no CUDA device"),
        (None, "ray", NO_GPU, "not connected to a Ray cluster"),
        (None, "ray", RAY_NO_GPU, "has no GPU for the embedder's actor"),
        ("cuda:1", "ray", CLUSTER_GPUS, "sees the one GPU it holds as 'cuda'"),
        ("mps", "ray", CLUSTER_GPUS, "sees the one GPU it holds as 'cuda'"),
    ],
)
def test_placements_that_cannot_run_are_refused_with_the_fix(device, placement, view, match):
    options = PlacementOptions(placement=placement)
    with pytest.raises(ValueError, match=match) as caught:
        decide_placement(device, options, view, prefix="dra.")
    assert "dra." in str(caught.value)  # names the keys to change, as the user spells them


VIEWS = [
    ClusterView(local, ray, gpus)
    for local, ray, gpus in itertools.product((False, True), (False, True), (0.0, 1.0, 4.0))
]
DEVICES = [None, "cpu", "cuda", "cuda:0", "cuda:1", "mps"]


@pytest.mark.parametrize("view", VIEWS, ids=str)
def test_placement_never_uses_a_cpu_silently_when_a_gpu_exists(view):
    """Every combination: the decision is a Placement or a ValueError, a Ray placement needs Ray,
    an actor holds a GPU share exactly when it does not run on the CPU, and with placement=auto
    the embedder lands on a CPU while a GPU exists only when device=cpu asked for it."""
    gpu_somewhere = view.local_cuda or (view.ray_initialized and view.cluster_gpus > 0)
    for device, placement, custom in itertools.product(DEVICES, _placement.PLACEMENTS, (0, 1)):
        options = PlacementOptions(placement=placement, num_gpus=0.3)
        try:
            got = decide_placement(device, options, view, custom=bool(custom))
        except ValueError:
            assert device not in (None, "cpu") or placement == "ray"
            continue
        assert got.where in ("local", "ray")
        if got.where == "ray":
            assert view.ray_initialized and placement in ("auto", "ray")
            assert (got.num_gpus == 0.3) == (not got.on_cpu)
            assert got.num_gpus == 0 or view.cluster_gpus > 0
        else:
            assert got.num_gpus == 0 and placement != "ray"
        if placement == "auto" and not custom and gpu_somewhere and got.on_cpu:
            assert device == "cpu"
        if device is None and not custom:
            assert got.on_cpu == (not gpu_somewhere) or placement != "auto"


def test_find_gpu_slot_prefers_a_free_gpu_then_the_roomiest_bundle():
    pg_a, pg_b = "aa" * 18, "bb" * 18
    bundles = {
        f"GPU_group_0_{pg_a}": 0.4,
        f"GPU_group_1_{pg_a}": 0.8,
        f"GPU_group_{pg_a}": 1.2,  # the group's total, not a bundle
        f"GPU_group_0_{pg_b}": 0.8,
        f"CPU_group_1_{pg_a}": 3.0,
        "CPU": 4.0,
    }
    assert find_gpu_slot({"GPU": 0.5, **bundles}, 0.5) == (None, None)
    assert find_gpu_slot(bundles, 0.3) == (pg_a, 1)  # the most room, not the first that fits
    assert find_gpu_slot(bundles, 0.5) == (pg_a, 1)  # ties broken by group id, then bundle
    assert find_gpu_slot(bundles, 0.8) == (pg_a, 1)
    assert find_gpu_slot(bundles, 0.9) is None
    assert find_gpu_slot({"GPU": 0.05}, 0.1) is None
    assert find_gpu_slot({}, 0.1) is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"placement": "gpu"}, "dra.placement"),
        ({"num_gpus": 0}, "dra.num_gpus"),
        ({"num_gpus": 1.5}, "dra.num_gpus"),
        ({"num_gpus": True}, "dra.num_gpus"),
        ({"placement_timeout": -1}, "dra.placement_timeout"),
        ({"num_gpu": 0.1}, r"valid: dra.placement, dra.num_gpus, dra.placement_timeout"),
    ],
)
def test_placement_options_are_checked(options, match):
    with pytest.raises(ValueError, match=match):
        PlacementOptions.from_options(options, prefix="dra.")


def test_check_device_normalises_auto_and_refuses_junk():
    assert _placement.check_device("auto") is None
    assert _placement.check_device("cuda:3") == "cuda:3"  # not checked against this process
    with pytest.raises(ValueError, match=r"dra\.device"):
        _placement.check_device("gpu", prefix="dra.")
    with pytest.raises(TypeError, match=r"dra\.device"):
        _placement.check_device(0, prefix="dra.")


def test_a_cpu_fallback_is_logged_with_its_cost(caplog):
    with caplog.at_level("INFO", logger=_placement.__name__):
        embed = _placement.build_embed_fn(factory=HashEmbedder, view=NO_GPU)
    assert isinstance(embed, HashEmbedder)
    assert "runs on this process's CPU" in caplog.text
    assert "54-62 s per encode of 256 texts" in caplog.text


# ----------------------------------------------------------------------------- the Ray actor


def test_the_actor_holds_its_gpu_share_and_sends_back_its_stats(ray_cluster):
    ray = ray_cluster
    texts = ["x equals two", "so the answer is 2 we check", "", "four"]
    embed = _placement.build_embed_fn(
        factory=StatsEmbedder, options=PlacementOptions(placement="ray", num_gpus=0.3)
    )
    server = embed.__self__
    try:
        assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.7)
        out = embed(texts)
        np.testing.assert_array_equal(np.asarray(out), HashEmbedder.embed(texts))
        assert server.last_stats == StatsEmbedder.stats(texts)
        assert embed_metrics(embed) == StatsEmbedder.stats(texts).metrics()
        assert server.info["gpu_ids"] == [0] and server.info["placement_group"] is None
    finally:
        server.close()


def test_the_actor_takes_room_in_a_placement_group_when_no_gpu_is_free(ray_cluster):
    """As in verl and OpenRLHF: every GPU reserved by a placement group whose bundles the
    framework's workers only partly use. The actor goes into the bundle."""
    ray = ray_cluster
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"GPU": 1.0}])
    ray.get(group.ready(), timeout=60)
    try:
        assert ray.available_resources().get("GPU", 0.0) == 0.0
        embed = _placement.build_embed_fn(
            factory=StatsEmbedder, options=PlacementOptions(placement="ray", num_gpus=0.2)
        )
        server = embed.__self__
        assert server.info["placement_group"] == group.id.hex()
        assert server.info["bundle"] == 0
        assert np.asarray(embed(["two"])).shape == (1, HashEmbedder.dim)
        server.close()
    finally:
        remove_placement_group(group)


def test_an_actor_that_cannot_be_scheduled_fails_and_says_what_to_change(ray_cluster):
    ray = ray_cluster
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"GPU": 0.6}])  # 0.4 free outside, 0.6 in the bundle
    ray.get(group.ready(), timeout=60)
    try:
        options = PlacementOptions(placement="ray", num_gpus=0.7, placement_timeout=3)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="could not be scheduled") as caught:
            _placement.build_embed_fn(factory=StatsEmbedder, options=options, prefix="dra.")
        assert time.monotonic() - started < 30
        message = str(caught.value)
        for advice in ("dra.num_gpus", "dra.device=cpu", "dra.placement=local", "0.4 GPU"):
            assert advice in message
        # the pending actor was killed: its GPU share is not taken later
        time.sleep(1)
        assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.4)
    finally:
        remove_placement_group(group)
