"""The embedder (bundled model, offline) and hidden-state pooling."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the hub

from dra_kernels.embed import (
    EMBEDDER_OPTIONS,
    Embedder,
    EmbedderConfig,
    TruncationWarning,
    WindowError,
    default_model_path,
    pool_hidden_states,
)
from dra_kernels.step import DRAStep


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
    assert embedder.window_tokens == 256  # the model's own sequence length
    assert embedder.text_tokens_per_window == 254  # less [CLS] and [SEP]
    assert embedder.long_text == "windows" and embedder.max_tokens is None  # every token read


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
    # A text that fits one window is embedded exactly as sentence-transformers embeds it.
    direct = embedder.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(out, direct.float().cpu(), atol=1e-5, rtol=1e-4)
    assert embedder.last_stats is not None and embedder.last_stats.cut_texts == 0


def _long_text(steps: int, ending: str = "") -> str:
    lines = [
        f"Step {i}: multiply {i} by {i + 3} and add {i * 7 % 11} to the total."
        for i in range(steps)
    ]
    return " ".join(lines) + ending


def test_windows_are_a_token_weighted_mean_of_every_token(embedder: Embedder) -> None:
    """Independent check of the combination rule: for a mean-pooling model, the vector of a text
    read in two windows is the mean of every token's hidden state (each in its window's context,
    special tokens included), normalised."""
    text = _long_text(30)
    ids = embedder.tokenizer(text, add_special_tokens=False)["input_ids"]
    width = embedder.text_tokens_per_window
    assert width < len(ids) <= 2 * width  # two windows, the second one shorter
    cls, sep = embedder.tokenizer.cls_token_id, embedder.tokenizer.sep_token_id
    transformer = embedder.model[0].auto_model
    states = []
    for piece in (ids[:width], ids[width:]):
        window = torch.tensor([[cls, *piece, sep]])
        with torch.no_grad():
            states.append(transformer(input_ids=window).last_hidden_state[0])
    expected = torch.nn.functional.normalize(torch.cat(states).double().mean(0), dim=0)
    out = embedder.encode([text])
    torch.testing.assert_close(out[0].double(), expected, atol=2e-6, rtol=0)
    stats = embedder.last_stats
    assert stats is not None
    assert (stats.windows, stats.tokens, stats.tokens_read) == (2, len(ids), len(ids))
    # The rule the mean replaces (an unweighted mean of the two windows) is measurably different.
    unweighted = torch.nn.functional.normalize(
        sum(torch.nn.functional.normalize(s.double().mean(0), dim=0) for s in states), dim=0
    )
    assert (out[0].double() - unweighted).abs().max() > 1e-3


def test_every_token_counts_by_default(embedder: Embedder) -> None:
    start = _long_text(60)  # about 1,000 tokens: four windows
    texts = [start + " So the answer is 42.", start + " A different ending: the answer is 7 cats."]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TruncationWarning: nothing is cut
        out = embedder.encode(texts)
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # the endings count
    stats = embedder.last_stats
    assert stats is not None and stats.share_read == 1.0 and stats.cut_texts == 0
    assert stats.windows >= 8
    assert embedder.count_truncated(texts) == 0


def test_head_mode_cuts_and_warns() -> None:
    head = Embedder(device="cpu", long_text="head")
    start = _long_text(60)
    texts = [
        start + " So the answer is 42.",
        start + " A different ending: the answer is 7 cats.",
        "x = 5",
    ]
    with pytest.warns(
        TruncationWarning, match=r"2 of 3 texts were cut; (\d+\.\d)% of their tokens"
    ):
        out = head.encode(texts)
    torch.testing.assert_close(out[0], out[1])  # only the shared beginning was read
    stats = head.last_stats
    assert stats is not None and stats.cut_texts == 2 and stats.windows == 3
    assert stats.tokens_read == 2 * 254 + head.token_counts(["x = 5"])[0]
    assert head.count_truncated(texts) == 2
    assert stats.metrics() == {"dra/tokens_read_share": stats.share_read, "dra/texts_cut": 2.0}


def test_head_tail_reads_both_ends() -> None:
    both = Embedder(device="cpu", long_text="head_tail")
    start = _long_text(60)
    texts = [start + " So the answer is 42.", start + " So the answer is 7."]
    with pytest.warns(TruncationWarning, match="2 of 2 texts were cut"):
        out = both.encode(texts)
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # the tail is read
    middle = _long_text(60).replace("Step 30:", "Step thirty, an edit in the middle:")
    with pytest.warns(TruncationWarning):
        plain, edited = both.encode([_long_text(60), middle])
    torch.testing.assert_close(plain, edited)  # the middle is not read
    assert both.last_stats is not None and both.last_stats.tokens_read == 2 * 254


def test_max_tokens_truncates() -> None:
    short = Embedder(device="cpu", max_tokens=8)
    start = "one two three four five six seven eight nine ten"
    texts = [start + " the answer is 5", start + " a totally different ending about cats"]
    assert short.count_truncated(texts) == 2
    with pytest.warns(TruncationWarning, match="max_tokens=8"):
        out = short.encode(texts)
    torch.testing.assert_close(out[0], out[1])  # only the shared beginning was embedded
    assert short.last_stats is not None and short.last_stats.tokens_read == 16
    full = Embedder(device="cpu", normalize=False)
    assert full.count_truncated(texts) == 0
    assert full.token_counts(texts)[0] > 8
    assert not torch.allclose(*full.encode(texts), atol=1e-3)  # the endings count again


def test_window_settings(embedder: Embedder) -> None:
    text = _long_text(30)
    count = embedder.token_counts([text])[0]
    small = Embedder(device="cpu", window_tokens=66, window_overlap=16)  # 64 text tokens a window
    small.encode([text])
    assert small.last_stats is not None
    assert small.last_stats.windows == math.ceil((count - 64) / 48) + 1
    assert small.last_stats.tokens_read == count and small.last_stats.cut_texts == 0


def test_window_options_are_checked_against_the_model_files_before_it_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bundled model's max_seq_length (256) and position limit (512) are read from its files:
    a window beyond the limit, or an overlap that fills the default window, fails before any
    model loads; a model whose files are not at hand is left to the load."""
    import sentence_transformers

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", no_load)
    with pytest.raises(WindowError, match=r"^window_tokens=100000 exceeds the 512-token position"):
        EmbedderConfig(window_tokens=100_000).check_model()
    with pytest.raises(WindowError, match=r"^window_overlap=300 leaves no room for text: .* 256 "):
        EmbedderConfig(window_overlap=300).check_model()
    EmbedderConfig(window_tokens=512, window_overlap=300).check_model()  # fits until loaded
    EmbedderConfig(model="no-such-org/no-such-model", window_tokens=10**6).check_model()
    with pytest.raises(WindowError, match=r"^dra\.window_overlap=300 leaves no room"):
        DRAStep.from_options({"window_overlap": 300}, spell="dra.{}")


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        Embedder(dtype="int8")
    with pytest.raises(ValueError, match="long_text must be one of windows, head, head_tail"):
        Embedder(long_text="tail")
    with pytest.raises(ValueError, match="position limit"):
        Embedder(device="cpu", window_tokens=100_000)
    with pytest.raises(ValueError, match="leaves no room"):
        Embedder(device="cpu", window_tokens=2)
    with pytest.raises(ValueError, match="window_overlap=300 must be smaller"):
        Embedder(window_tokens=256, window_overlap=300)
    with pytest.raises(ValueError, match="only applies to long_text='windows'"):
        Embedder(long_text="head", window_overlap=8)
    with pytest.raises(OSError):
        Embedder(os.path.join(os.path.dirname(default_model_path()), "no-such-model-dir"))


def test_config_checks_without_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    # A model load would import sentence_transformers: make any import of it fail.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    # the embedder's options as a front end passes them: through the one DRA step
    with pytest.raises(
        ValueError, match=r"unknown DRA option\(s\) \['dra.long_txt'\]; valid: dra.measure"
    ):
        DRAStep.from_options({"long_txt": "head"}, spell="dra.{}")
    with pytest.raises(ValueError, match=r"^--dra.batch_size must be a positive int, got -1"):
        DRAStep.from_options({"batch_size": -1}, spell="--dra.{}")
    with pytest.raises(TypeError, match="dra_trust_remote_code must be True or False"):
        DRAStep.from_options({"trust_remote_code": "yes"}, spell="dra_{}")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            EmbedderConfig(device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        EmbedderConfig(device="gpu0")
    config = DRAStep.from_options({"model": None, "long_text": "head_tail"}).embedder
    assert config == EmbedderConfig(long_text="head_tail")
    assert EMBEDDER_OPTIONS[0] == "model" and "window_overlap" in EMBEDDER_OPTIONS
    with pytest.raises(ImportError):
        config.build()


def test_embed_metrics_reads_the_last_call(embedder: Embedder) -> None:
    from dra_kernels.step import embed_metrics

    assert embed_metrics(lambda texts: torch.zeros(len(texts), 2)) == {}
    embedder.encode(["a b c"])
    assert embed_metrics(embedder.encode) == {"dra/tokens_read_share": 1.0, "dra/texts_cut": 0.0}
    assert embed_metrics(embedder) == embed_metrics(embedder.encode)


def test_encode_rejects_non_text(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        embedder.encode("just one string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embedder.encode(["a", None])  # type: ignore[list-item]
    assert embedder.encode([]).shape == (0, 384)
    for bad, kind in ((b"bytes", TypeError), (3, TypeError)):
        with pytest.raises(kind, match=r"^texts\[1\] must be a string"):
            embedder.encode(["fine", bad])  # type: ignore[list-item]


def test_encode_names_a_text_the_tokenizer_cannot_take(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone surrogate (a bad decode, a JSON escape) has no UTF-8 form: refused before any model
    work, naming the text; any other tokenizer failure names the text it failed on."""
    with pytest.raises(ValueError, match=r"^texts\[1\] cannot be encoded as UTF-8: .*'\\ud800'"):
        embedder.encode(["fine", "bad \ud800 text"])
    original = embedder.tokenizer

    def picky(texts: Any, **kwargs: Any) -> Any:
        if "poison" in (texts if isinstance(texts, str) else " ".join(texts)):
            raise RuntimeError("cannot take it")
        return original(texts, **kwargs)

    monkeypatch.setattr(embedder, "tokenizer", picky)
    with pytest.raises(ValueError, match=r"^texts\[2\]: the tokenizer cannot encode it"):
        embedder.encode(["a", "b", "poison"])


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
    exact = pool_hidden_states(hidden.to(torch.bfloat16).double(), mask)
    torch.testing.assert_close(half, exact.float(), atol=1e-6, rtol=1e-6)
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


def test_pool_hidden_states_half_is_sliced_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import dra_kernels.embed as embed

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 37, 8, generator=gen).to(torch.bfloat16)
    mask = torch.rand(2, 37, generator=gen) > 0.4
    exact = pool_hidden_states(hidden.double(), mask).float()
    monkeypatch.setattr(embed, "_POOL_SLICE_ELEMENTS", 2 * 8 * 5)  # slices of 5 tokens
    torch.testing.assert_close(pool_hidden_states(hidden, mask), exact, atol=1e-6, rtol=1e-6)


def test_chunks_and_progress_do_not_change_the_result(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dra_kernels.embed as embed

    texts = [_long_text(k) for k in (1, 40, 3, 25, 0)]
    whole = embedder.encode(texts)
    stats = embedder.last_stats
    counts: list[int] = []

    class Bar:
        def __init__(self, total: int) -> None:
            assert total == len(texts)

        def update(self, k: int) -> None:
            counts.append(k)

        def close(self) -> None:
            pass

    monkeypatch.setattr(embed, "_TEXTS_PER_CHUNK", 2)
    monkeypatch.setattr(embed, "progress_bar", lambda total, enabled: Bar(total))
    torch.testing.assert_close(embedder.encode(texts), whole, atol=1e-6, rtol=0)
    assert embedder.last_stats == stats
    assert sum(counts) == len(texts)  # every text reported done exactly once
