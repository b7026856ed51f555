"""The embedder (bundled model, offline) and hidden-state pooling."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the hub

from dra_kernels.embed import Embedder, default_model_path, pool_hidden_states


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(device="cpu", batch_size=4)


def test_import_does_not_load_sentence_transformers() -> None:
    code = (
        "import sys, dra_kernels, dra_kernels.cli, dra_kernels.embed, dra_kernels.rollouts;"
        "bad = [m for m in ('sentence_transformers', 'transformers', 'matplotlib', 'scipy')"
        " if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_model_is_bundled_and_offline(embedder: Embedder) -> None:
    assert os.path.isdir(default_model_path())
    assert embedder.model_name == "all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert embedder.max_tokens == 256


def test_encode_order_shape_norm_and_meaning(embedder: Embedder) -> None:
    texts = [
        "Subtract 7 from both sides, then divide by 3: x = 5.",
        "The weather in Paris is rainy today.",
        "Take 7 away from each side and divide by 3, so x = 5.",
        "",
        "Pair the terms: 50 pairs of 101 make 5050.",
    ]
    out = embedder.encode(texts)
    assert out.shape == (5, 384) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    cos = out @ out.T
    assert cos[0, 2] > cos[0, 1] + 0.3  # a paraphrase is closer than an unrelated sentence
    one_by_one = torch.cat([embedder.encode([t]) for t in texts])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=1e-4)  # batching keeps order


def test_max_tokens_truncates() -> None:
    short = Embedder(device="cpu", max_tokens=8)
    start = "one two three four five six seven eight nine ten"
    texts = [start + " the answer is 5", start + " a totally different ending about cats"]
    assert short.count_truncated(texts) == 2
    out = short.encode(texts)
    torch.testing.assert_close(out[0], out[1])  # only the shared beginning was embedded
    full = Embedder(device="cpu", normalize=False)
    assert full.count_truncated(texts) == 0
    assert full.token_counts(texts)[0] > 8
    assert not torch.allclose(*full.encode(texts), atol=1e-3)  # the endings count again


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        Embedder(dtype="int8")
    with pytest.raises(ValueError, match="position limit"):
        Embedder(device="cpu", max_tokens=100_000)
    with pytest.raises(OSError):
        Embedder(os.path.join(os.path.dirname(default_model_path()), "no-such-model-dir"))


def test_encode_rejects_non_text(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        embedder.encode("just one string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embedder.encode(["a", None])  # type: ignore[list-item]
    assert embedder.encode([]).shape == (0, 384)


def test_bfloat16_weights_give_float32_embeddings() -> None:
    out = Embedder(device="cpu", dtype="bfloat16").encode(["x = 5", "x equals five"])
    assert out.dtype == torch.float32 and out.shape == (2, 384)


def test_pool_hidden_states_masked_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    out = pool_hidden_states(hidden, mask)
    torch.testing.assert_close(out[0], hidden[0, 1:4].mean(0))
    torch.testing.assert_close(out[1], hidden[1].mean(0))
    assert torch.equal(out[2], torch.zeros(4))  # empty response: zero vector, SMI 0
    half = pool_hidden_states(hidden.to(torch.bfloat16), mask.bool())
    assert half.dtype == torch.float32
    assert pool_hidden_states(hidden.double(), mask.float()).dtype == torch.float64


def test_pool_hidden_states_checks() -> None:
    hidden = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="3-D"):
        pool_hidden_states(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\] = \(2, 3\)"):
        pool_hidden_states(hidden, torch.ones(2, 4))
    with pytest.raises(TypeError, match="floating"):
        pool_hidden_states(hidden.long(), torch.ones(2, 3))
    with pytest.raises(TypeError, match="torch tensors"):
        pool_hidden_states(hidden, [[1, 1, 1], [1, 1, 1]])  # type: ignore[arg-type]
