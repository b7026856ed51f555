"""One DRA step, the same for every front end: options checked once, one SMI pass, the metrics.

TRL, verl, OpenRLHF, ms-swift and the ``dra-kernels`` command are adapters over :class:`DRAStep`
(built by :meth:`DRAStep.from_options`, called once per batch). See docs/api.md ("One DRA step
for every front end": where the SMI runs, the metrics).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dra_kernels import api, distributed, inputs, measures, reference
from dra_kernels.embed import EMBEDDER_OPTIONS, EmbedderConfig, EmbedStats

__all__ = [
    "METRICS",
    "STEP_OPTIONS",
    "DRAStep",
    "EmbedFn",
    "StepResult",
    "as_embed_fn",
    "embed_metrics",
    "spelled",
]

EmbedFn = Callable[[list[str]], Any]
"""``texts -> [N, D]`` embeddings (torch tensor, numpy array or nested list)."""

STEP_OPTIONS = ("measure", "eta", "lam", "min_denominator", "backend", "scale", "eps")
"""The step's own options; with :data:`dra_kernels.embed.EMBEDDER_OPTIONS` every option a front
end maps onto the step."""

METRICS = (
    "dra/rows",
    "dra/groups",
    "dra/incomplete_groups",
    "dra/flat_groups_share",
    "dra/smi/mean",
    "dra/smi/max",
    "dra/factor/mean",
    "dra/factor/min",
    "dra/reward_before/mean",
    "dra/reward_after/mean",
    "dra/tokens_read_share",
    "dra/texts_cut",
)
"""What every front end logs for a step (the last two only for an embedder that counts what it
reads); their meaning is tabled in docs/api.md."""

_SHARE, _CUT = "dra/tokens_read_share", "dra/texts_cut"


def as_embed_fn(obj: Any, what: str = "embedder") -> EmbedFn:
    """An embedding function from a callable, an object with ``encode(texts)`` (preferred: a
    ``SentenceTransformer`` is callable too, but its ``__call__`` takes token features), or a
    class of either (instantiated with no arguments)."""
    if isinstance(obj, type):
        obj = obj()
    encode = getattr(obj, "encode", None)
    if callable(encode):
        return encode
    if callable(obj):
        return obj
    raise TypeError(
        f"{what} must be a function list[str] -> [N, D] embeddings or an object with an "
        f"encode(texts) method (dra_kernels.embed.Embedder, a SentenceTransformer); "
        f"got {type(obj).__name__}"
    )


def embed_metrics(embed_fn: Any) -> dict[str, float]:
    """The coverage metrics of an embedder's last call (``dra/tokens_read_share``,
    ``dra/texts_cut``), read from ``last_stats`` of the function's owner (a bound
    ``Embedder.encode``) or of the object itself; ``{}`` for an embedder that keeps no statistics
    (a user function, whose coverage is unknown)."""
    for owner in (getattr(embed_fn, "__self__", None), embed_fn):
        stats = getattr(owner, "last_stats", None)
        if isinstance(stats, EmbedStats):
            return stats.metrics()
    return {}


def _speller(spell: str | Callable[[str], str]) -> Callable[[str], str]:
    return spell.format if isinstance(spell, str) else spell


def spelled(exc: Exception, spell: str | Callable[[str], str]) -> Exception:
    """``exc`` (of the same type) with each option of the step or the embedder that leads its
    message, or stands before ``=``, named as a front end spells it (see
    :meth:`DRAStep.from_options`): for errors raised later, e.g. while the embedder loads."""
    return _renamed(exc, _speller(spell))


def _renamed(exc: Exception, spell: Callable[[str], str]) -> Exception:
    text = str(exc)
    pattern = "|".join(sorted((*STEP_OPTIONS, *EMBEDDER_OPTIONS), key=len, reverse=True))
    text = re.sub(rf"^({pattern})\b", lambda m: spell(m.group(1)), text)
    text = re.sub(rf"(?<![\w.-])({pattern})=", lambda m: spell(m.group(1)) + "=", text)
    return type(exc)(text)


@dataclass(frozen=True)
class StepResult:
    """What one :class:`DRAStep` call gives, for the caller's rows, in their order.

    Attributes:
        adjusted: ``[n]`` rewards divided by ``max(1 + SMI, min_denominator)`` (float32, float64
            when rewards or embeddings are float64), on the embeddings' device.
        smi: ``[n]`` SMI of each row with the rest of its group (over every rank's rows).
        advantages: ``[n]`` group advantages of ``adjusted`` when the step has a ``scale``.
        metrics: :data:`METRICS`, over the whole batch (every rank's rows).
    """

    adjusted: torch.Tensor
    smi: torch.Tensor
    advantages: torch.Tensor | None
    metrics: dict[str, float]
    min_denominator: float = field(repr=False)

    def adjust(self, rewards: torch.Tensor) -> torch.Tensor:
        """Other rewards of the same rows (``[n]`` or ``[n, F]``, e.g. one column per reward
        function) divided by this step's ``max(1 + SMI, min_denominator)``, in their dtype."""
        return _adjust(rewards, self.smi, self.min_denominator)


@dataclass(frozen=True)
class DRAStep:
    """The options of one DRA step, checked once, at construction, by the core's rules.

    Args:
        measure, eta, lam: the SMI measure and its parameters
            (:func:`dra_kernels.measures.check_measure`).
        min_denominator: lower clamp of ``1 + SMI``, in (0, 1].
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (one process; across ranks the torch
            sums run, see :mod:`dra_kernels.distributed`).
        scale: ``None`` (no advantages), ``"std"`` (GRPO) or ``"none"`` (DR.GRPO).
        eps: added to the group standard deviation with ``scale="std"``.
        embedder: what embeds ``texts``: an :class:`~dra_kernels.embed.EmbedderConfig` (the
            built-in embedder, loaded on first use), an embedding function or object
            (:func:`as_embed_fn`), or ``None`` (then calls pass embeddings).

    Raises:
        ValueError, TypeError: a bad option, named as in :func:`dra_kernels.adjust_rewards`
            (use :meth:`from_options` to name it as a front end spells it).

    Example:
        >>> step = DRAStep(scale="none")
        >>> rewards = torch.tensor([1.0, 1.0, 1.0])
        >>> embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> result = step(rewards, ["q", "q", "q"], embeddings=embeddings)
        >>> result.adjusted
        tensor([0.5000, 0.5000, 1.0000])
        >>> result.advantages
        tensor([-0.1667, -0.1667,  0.3333])
        >>> result.metrics["dra/smi/max"]
        1.0
    """

    measure: str = "graph_cut"
    eta: float = measures.DEFAULT_ETA
    lam: float = measures.DEFAULT_LAM
    min_denominator: float = reference.DEFAULT_MIN_DENOMINATOR
    backend: str = "auto"
    scale: str | None = None
    eps: float = reference.DEFAULT_EPS
    embedder: EmbedderConfig | Any = None
    _embed: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        inputs.check_backend(self.backend)
        measure, eta, lam = measures.check_measure(self.measure, self.eta, self.lam, self.backend)
        values = {
            "measure": measure,
            "eta": eta,
            "lam": lam,
            "min_denominator": inputs.check_min_denominator(self.min_denominator),
        }
        if self.scale is not None:
            values["scale"] = inputs.check_scale(self.scale)
            values["eps"] = inputs.check_eps(self.eps, self.scale)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        if self.embedder is not None and not isinstance(self.embedder, EmbedderConfig):
            as_embed_fn(self.embedder)  # NOTE: a class is built here, so errors come now

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        spell: str | Callable[[str], str] = "{}",
        embedder: Any = None,
        device: torch.device | str | None = None,
    ) -> DRAStep:
        """A step from a front end's options, every error naming the option as it spells it.

        Args:
            options: option name -> value, for the names in :data:`STEP_OPTIONS` and
                :data:`dra_kernels.embed.EMBEDDER_OPTIONS` (``None``: the default). Embedder
                options configure the built-in embedder.
            spell: how the front end spells an option: a format string (``"dra_{}"``,
                ``"dra.{}"``, ``"--dra.{}"``) or a function (the CLI's ``--min-denominator``).
            embedder: the user's own embedding function or object instead of the built-in
                embedder (then no embedder option may be given).
            device: where the SMI will run, when the front end knows it at start-up: the backend
                is then checked against it (``backend="triton"`` on a CPU is refused).

        Raises:
            ValueError: an unknown option (the message lists the valid ones), a bad value or a
                bad combination; TypeError: a value of the wrong kind.
        """
        speller = _speller(spell)
        unknown = sorted(set(options) - set(STEP_OPTIONS) - set(EMBEDDER_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown DRA option(s) {[speller(str(k)) for k in unknown]}; valid: "
                + ", ".join(speller(k) for k in (*STEP_OPTIONS, *EMBEDDER_OPTIONS))
            )
        given = {k: v for k, v in options.items() if v is not None}
        embed_options = {k: v for k, v in given.items() if k in EMBEDDER_OPTIONS}
        step_options = {k: v for k, v in given.items() if k in STEP_OPTIONS}
        try:
            if embedder is not None:
                if embed_options:
                    raise ValueError(
                        f"the embedder options {', '.join(speller(k) for k in embed_options)} "
                        "configure the built-in embedder and do not apply to your own embedder"
                    )
                step = cls(**step_options, embedder=embedder)
            else:
                config = EmbedderConfig(**embed_options)
                config.check_model()
                step = cls(**step_options, embedder=config)
            if device is not None:
                inputs.resolve_backend(step.backend, torch.device(device))
            return step
        except (TypeError, ValueError, RuntimeError) as exc:
            raise _renamed(exc, speller) from None

    def adjust(self, rewards: torch.Tensor, smi: torch.Tensor) -> torch.Tensor:
        """``rewards`` (``[n]`` or ``[n, F]``, one column per reward function) divided by
        ``max(1 + smi, min_denominator)``, in their dtype: e.g. a trainer's gathered rewards with
        the gathered SMI of a step run on each process's rows."""
        return _adjust(rewards, smi, self.min_denominator)

    def with_embedder(self, embedder: Any) -> DRAStep:
        """This step with another embedder (an embedding function or object, or a config), e.g.
        the built-in embedder placed by a trainer on a Ray actor."""
        return replace(self, embedder=embedder)

    # ------------------------------------------------------------------------- embedding

    def embed_fn(self, *, progress: bool = False) -> EmbedFn:
        """The embedding function; the built-in embedder is loaded on the first call."""
        if self.embedder is None:
            raise ValueError("this DRA step has no embedder: pass embeddings, not texts")
        if not self._embed:
            built = self.embedder
            if isinstance(built, EmbedderConfig):
                built = built.build(progress=progress)
            self._embed.append(as_embed_fn(built))
        return self._embed[0]

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """``([N, D] embeddings, coverage metrics)`` of ``texts`` through the step's embedder."""
        fn = self.embed_fn()
        value = fn(list(texts))
        out = (
            value.detach()
            if isinstance(value, torch.Tensor)
            else torch.as_tensor(np.asarray(value))
        )
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise ValueError(
                f"the embedder returned shape {tuple(out.shape)} for {len(texts)} texts; "
                "expected [N, D], one row per text"
            )
        if not out.is_floating_point():
            out = out.float()
        return out, embed_metrics(fn)

    # ------------------------------------------------------------------------- the step

    def __call__(
        self,
        rewards: Any,
        group_ids: Any,
        *,
        embeddings: Any = None,
        texts: list[str] | None = None,
        num_groups: int | None = None,
        expected_group_size: int | None = None,
        coverage: Mapping[str, float] | None = None,
        process_group: Any = None,
    ) -> StepResult:
        """One step over this process's rows.

        Args:
            rewards: ``[n]`` raw rewards (torch, numpy or list; NaN rows are left out of the
                reward metrics, as TRL's unscorable completions).
            group_ids: ``[n]`` group ids (the core's rule; global ids across ranks).
            embeddings: ``[n, D]`` embeddings, or ``None`` with ``texts``.
            texts: the completions' texts, embedded by the step's embedder.
            num_groups: optional hint for integer ids in ``[0, num_groups)``.
            expected_group_size: groups of another size are counted in
                ``dra/incomplete_groups``.
            coverage: coverage metrics of embeddings computed by the caller (e.g.
                :func:`embed_metrics` of its embedder).
            process_group: a ``torch.distributed`` group whose ranks all call the step with
                their own rows (default: the world when initialised with more than one rank).

        Returns:
            :class:`StepResult`.
        """
        if (embeddings is None) == (texts is None):
            raise ValueError("pass either embeddings or texts (the step embeds them)")
        ranks = dist.is_available() and dist.is_initialized()
        ranks = ranks and dist.get_world_size(process_group) > 1
        if ranks and self.scale is not None:
            raise ValueError(
                "a DRA step with scale= computes advantages in one process; across ranks "
                "use dra_kernels.distributed.dra_advantages"
            )
        coverage = dict(coverage or {})
        if texts is not None:
            embeddings, coverage = self.embed(texts)
        raw = rewards if isinstance(rewards, torch.Tensor) else torch.as_tensor(np.asarray(rewards))
        embeddings = torch.as_tensor(embeddings)
        if raw.ndim != 1 or raw.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"rewards must have one value per row, [{embeddings.shape[0]}], got "
                f"{tuple(raw.shape)}"
            )
        if raw.dtype == torch.float64 and embeddings.is_floating_point():
            # NOTE: as the core: float64 rewards take the float64 SMI (exact upcast of the rows).
            embeddings = embeddings.to(torch.float64)
        device = embeddings.device
        if ranks:
            groups = distributed.global_group_codes(
                group_ids, device=device, num_groups=num_groups, process_group=process_group
            )
            smi_scores = functools.partial(distributed.smi_scores, process_group=process_group)
        else:
            groups = inputs.factorize_group_ids(group_ids, raw.shape[0], device, num_groups)
            smi_scores = functools.partial(api.smi_scores, backend=self.backend)
        codes, k = groups.codes, groups.num_groups
        smi = smi_scores(
            embeddings, codes, num_groups=k, measure=self.measure, eta=self.eta, lam=self.lam
        )
        raw = raw.to(smi.device)
        adjusted = reference.adjust_from_smi(raw, smi, self.min_denominator)
        advantages = None
        if self.scale is not None:
            advantages = api.group_advantages(
                adjusted, codes, scale=self.scale, eps=self.eps, num_groups=k
            )
        metrics = _metrics(
            raw.to(adjusted.dtype),
            adjusted,
            smi,
            codes.to(smi.device),
            k,
            self.min_denominator,
            expected_group_size,
            coverage,
            ranks,
            process_group,
        )
        return StepResult(adjusted, smi, advantages, metrics, self.min_denominator)


def _adjust(rewards: torch.Tensor, smi: torch.Tensor, min_denominator: float) -> torch.Tensor:
    smi = smi.to(rewards.device)
    if rewards.ndim == 2:
        smi = smi.unsqueeze(1)
    return reference.adjust_from_smi(rewards, smi, min_denominator).to(rewards.dtype)


def _metrics(
    raw: torch.Tensor,
    adjusted: torch.Tensor,
    smi: torch.Tensor,
    codes: torch.Tensor,
    k: int,
    min_denominator: float,
    expected_group_size: int | None,
    coverage: Mapping[str, float],
    ranks: bool,
    process_group: Any,
) -> dict[str, float]:
    """:data:`METRICS` over every rank's rows, in float64: one sum and one max all-reduce across
    ranks."""
    dtype, device = torch.float64, smi.device
    smi, raw, adjusted = smi.to(dtype), raw.to(dtype), adjusted.to(dtype)
    factor = 1.0 / torch.clamp(1.0 + smi, min=min_denominator)
    scored = ~torch.isnan(raw)
    known = [float(bool(coverage)), coverage.get(_SHARE, 0.0), coverage.get(_CUT, 0.0)]
    sums = {
        "counts": torch.bincount(codes, minlength=k).to(dtype)[:k],
        "smi": smi.sum(),
        "factor": factor.sum(),
        "raw": torch.where(scored, raw, 0.0).sum(),
        "adjusted": torch.where(scored, adjusted, 0.0).sum(),
        "scored": scored.sum().to(dtype),
        "known": torch.tensor(known, dtype=dtype, device=device),
    }
    none = torch.full((k,), -torch.inf, dtype=dtype, device=device)
    empty = torch.tensor(-torch.inf, dtype=dtype, device=device)
    maxima = {
        "high": none.scatter_reduce(0, codes[scored], raw[scored], "amax"),
        "low": none.scatter_reduce(0, codes[scored], -raw[scored], "amax"),
        "smi": smi.max() if smi.numel() else empty,
        "neg_factor": (-factor).max() if factor.numel() else empty,
    }
    if ranks:
        sums = _all_reduced(sums, dist.ReduceOp.SUM, process_group)
        maxima = _all_reduced(maxima, dist.ReduceOp.MAX, process_group)
    counts, high, low = sums["counts"], maxima["high"], -maxima["low"]
    present = counts > 0
    rows, scored_rows = float(counts.sum()), float(sums["scored"])
    groups = int(present.sum())
    flat = int((present & (high <= low)).sum())  # NOTE: no scored row: -inf <= inf, flat
    incomplete = 0
    if expected_group_size is not None:
        incomplete = int((present & (counts != expected_group_size)).sum())
    nan = float("nan")
    out = {
        "dra/rows": rows,
        "dra/groups": float(groups),
        "dra/incomplete_groups": float(incomplete),
        "dra/flat_groups_share": flat / groups if groups else nan,
        "dra/smi/mean": float(sums["smi"]) / rows if rows else nan,
        "dra/smi/max": float(maxima["smi"]) if rows else nan,
        "dra/factor/mean": float(sums["factor"]) / rows if rows else nan,
        "dra/factor/min": -float(maxima["neg_factor"]) if rows else nan,
        "dra/reward_before/mean": float(sums["raw"]) / scored_rows if scored_rows else nan,
        "dra/reward_after/mean": float(sums["adjusted"]) / scored_rows if scored_rows else nan,
    }
    coverage_rows, share, cut = sums["known"].tolist()
    if coverage_rows:
        out[_SHARE] = share / coverage_rows
        out[_CUT] = cut
    return out


def _all_reduced(
    parts: dict[str, torch.Tensor], op: Any, process_group: Any
) -> dict[str, torch.Tensor]:
    """``parts`` reduced by ``op`` across the ranks of ``process_group`` in one all-reduce of
    their concatenation."""
    flat = torch.cat([part.reshape(-1) for part in parts.values()])
    dist.all_reduce(flat, op=op, group=process_group)
    return dict(zip(parts, flat.split([part.numel() for part in parts.values()]), strict=True))
