"""Fidelity of the default embedder on long R1-style traces (issue 12, item 6), bundled model.

The texts are ``tests/data/long_traces.json``, written by ``tests/data/make_long_traces.py``:

- a *prefix* group: 8 completions sharing a 435-token opening, then reasoning in 8 different ways
  (540 to 760 more tokens each);
- a *copies* group: 8 near-copies of one 870-token trace (three small edits each);
- two *last-fifth* pairs: a trace of 1,650 to 1,900 tokens and the same trace with its last fifth
  (19-22% of the tokens) rewritten, with another final answer.

With the default ``long_text="windows"`` every token is read: each prefix-sharing completion must
come out less redundant (lower SMI) than every near-copy, and a changed last fifth must move the
embedding. The same checks are run in ``head`` mode (the first 254 tokens only), where they fail
as the issue measured: the prefix group's vectors are identical (SMI = G - 1 = 7) and the two
texts of a pair get cosine 1. Thresholds come from measurements on this data (2026-12-01, CPU),
quoted next to each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the hub

from dra_kernels import adjust_rewards, smi_scores
from dra_kernels.embed import Embedder, TruncationWarning

DATA = Path(__file__).parent / "data"
GROUP = 8

# Measured 2026-12-01 (windows mode): prefix-group SMI 4.98-5.89, copies-group SMI 6.93-6.96, so
# the gap between the most redundant prefix completion and the least redundant copy is 1.04.
# Asked for: at least half of that.
MIN_SMI_GAP = 0.5
# Measured: cosine 0.9919 and 0.9922 between a trace and the same trace with its last fifth
# rewritten (1 - cos = 0.0078-0.0081); re-encoding one text in another batch gives 1 - cos = 0.
# Asked for: 1 - cos at least half the measured value. In absolute terms this change is small:
# near-copies with three word-level edits have cosines 0.987-0.9999 with each other.
MAX_LAST_FIFTH_COSINE = 0.996


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_long_traces", DATA / "make_long_traces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def traces() -> dict:
    return json.loads((DATA / "long_traces.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(device="cpu")


def _group_texts(traces: dict) -> tuple[list[str], torch.Tensor]:
    prefix = [c["text"] for c in traces["prefix_group"]["completions"]]
    copies = [c["text"] for c in traces["copies_group"]["completions"]]
    assert len(prefix) == len(copies) == GROUP
    return prefix + copies, torch.tensor([0] * GROUP + [1] * GROUP)


def _token_ids(embedder: Embedder, texts: list[str]) -> list[list[int]]:
    """The model's tokens of each text, special tokens left out (what the windows are cut from)."""
    return embedder.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _pair_cosines(embedder: Embedder, traces: dict) -> list[float]:
    texts = [t for p in traces["last_fifth_pairs"] for t in (p["original"], p["rewritten"])]
    vectors = embedder.encode(texts)
    return [float(vectors[i] @ vectors[i + 1]) for i in range(0, len(texts), 2)]


def test_data_file_is_what_the_script_writes() -> None:
    generator = _load_generator()
    assert (DATA / "long_traces.json").read_bytes() == generator.render().encode("utf-8"), (
        "tests/data/long_traces.json is stale: run python tests/data/make_long_traces.py"
    )


def test_data_has_the_lengths_the_tests_rely_on(embedder: Embedder, traces: dict) -> None:
    # Shared opening: at least 300 tokens, and a token-for-token prefix of every completion.
    group = traces["prefix_group"]
    opening = _token_ids(embedder, [group["opening"]])[0]
    assert len(opening) >= 300
    ids = _token_ids(embedder, [c["text"] for c in group["completions"]])
    for completion, tokens in zip(group["completions"], ids, strict=True):
        assert tokens[: len(opening)] == opening, completion["strategy"]
        assert len(tokens) - len(opening) >= 300, completion["strategy"]  # several hundred more
    assert len({c["strategy"] for c in group["completions"]}) == GROUP
    assert len({c["answer"] for c in group["completions"]}) > 1  # some reach another answer
    # Near-copies of a similar total length, all different from each other.
    copies = [c["text"] for c in traces["copies_group"]["completions"]]
    assert len(set(copies)) == GROUP
    lengths = embedder.token_counts(copies)
    assert 0.6 * len(ids[0]) <= min(lengths) and max(lengths) <= 1.4 * len(ids[0])
    # Last-fifth pairs: long, and only the last 18-25% of the tokens differ.
    for pair in traces["last_fifth_pairs"]:
        original, rewritten = _token_ids(embedder, [pair["original"], pair["rewritten"]])
        assert len(original) >= 1500 and len(rewritten) >= 1500, pair["name"]
        pairs = zip(original, rewritten, strict=False)
        shared = next((i for i, (a, b) in enumerate(pairs) if a != b), len(original))
        changed = 1 - shared / len(original)
        assert 0.18 <= changed <= 0.25, (pair["name"], changed)


def test_windows_prefix_group_is_less_redundant_than_near_copies(
    embedder: Embedder, traces: dict
) -> None:
    texts, group_ids = _group_texts(traces)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)  # windows mode reads every token
        vectors = embedder.encode(texts)
    assert embedder.last_stats.share_read == 1.0
    smi = smi_scores(vectors, group_ids)
    prefix, copies = smi[:GROUP], smi[GROUP:]
    gap = float(copies.min() - prefix.max())
    print(
        f"windows: prefix SMI {float(prefix.min()):.3f}-{float(prefix.max()):.3f}, copies SMI "
        f"{float(copies.min()):.3f}-{float(copies.max()):.3f}, gap {gap:.3f}"
    )
    assert gap >= MIN_SMI_GAP, (prefix.tolist(), copies.tolist())
    # In DRA's terms: with equal rewards every prefix completion keeps more than every copy.
    adjusted = adjust_rewards(torch.ones(2 * GROUP), vectors, group_ids)
    assert adjusted[:GROUP].min() > adjusted[GROUP:].max()


def test_windows_last_fifth_change_moves_the_embedding(embedder: Embedder, traces: dict) -> None:
    cosines = _pair_cosines(embedder, traces)
    print(f"windows: last-fifth pair cosines {[round(c, 4) for c in cosines]}")
    assert max(cosines) < MAX_LAST_FIFTH_COSINE, cosines


def test_head_mode_fails_both_checks(traces: dict) -> None:
    """What the default fixes: reading only the first window, the texts' shared openings decide."""
    head = Embedder(device="cpu", long_text="head")
    texts, group_ids = _group_texts(traces)
    with pytest.warns(TruncationWarning, match="16 of 16 texts were cut"):
        vectors = head.encode(texts)
    smi = smi_scores(vectors, group_ids)
    prefix, copies = smi[:GROUP], smi[GROUP:]
    # Identical first windows: identical vectors, SMI = G - 1, more redundant than the copies.
    torch.testing.assert_close(prefix, torch.full((GROUP,), GROUP - 1.0), atol=1e-4, rtol=0)
    assert float(prefix.min()) > float(copies.max())  # measured: copies 6.966-6.985
    with pytest.warns(TruncationWarning):
        cosines = _pair_cosines(head, traces)
    assert min(cosines) > 0.99999, cosines
