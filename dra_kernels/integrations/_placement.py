"""Where a trainer integration's embedder runs: in this process, or in a Ray actor on a GPU share.

verl's driver (the ``TaskRunner`` actor) and OpenRLHF's trainer actor reserve no GPU, so an
embedder built there runs on their CPU (256 texts of ~3,200 tokens took 54-62 s per encode on two
cores with the bundled model). This module decides where the embedder goes and builds it there:

1. :func:`decide_placement`, a pure function of the options and of what this process sees
   (:class:`ClusterView`: CUDA here, Ray initialised, GPUs in the Ray cluster), returns a
   :class:`Placement`: ``"local"`` (this process, on ``device``) or ``"ray"`` (an actor holding
   ``num_gpus`` of a GPU, or a CPU actor when the device asked for is ``"cpu"``).
2. :func:`build_embed_fn` applies it: builds the embedder here, or starts :class:`RayEmbedder`'s
   actor, waits for Ray to schedule it (at most ``placement_timeout`` seconds), then loads the model
   inside it. The actor goes on a GPU share that is free outside placement groups if there is one,
   else into the placement-group bundle with the largest free GPU share (verl and OpenRLHF reserve
   their GPUs in placement groups whose bundles their colocated workers only partly use). When
   nothing can hold it, the error says what to change; it never falls back to the CPU on its own.

Options (same names in every integration, spelled ``dra.x`` in verl and ``--dra.x`` in OpenRLHF):
``placement`` (``auto``, ``local`` or ``ray``), ``num_gpus`` (share of one GPU the actor holds,
default 0.1) and ``placement_timeout`` (seconds to wait for Ray to schedule the actor, default 120).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dra_kernels.step import EmbedFn, as_embed_fn

__all__ = [
    "DEFAULT_NUM_GPUS",
    "DEFAULT_PLACEMENT_TIMEOUT",
    "PLACEMENTS",
    "PLACEMENT_OPTIONS",
    "ClusterView",
    "Placement",
    "PlacementOptions",
    "RayEmbedder",
    "build_embed_fn",
    "check_device",
    "decide_placement",
    "find_gpu_slot",
    "observe_cluster",
]

logger = logging.getLogger(__name__)

PLACEMENTS = ("auto", "local", "ray")
DEFAULT_NUM_GPUS = 0.1
"""GPU share of the embedder's actor: a small encoder (all-MiniLM-L6-v2, 23M parameters;
jina-embeddings-v2-small-en, 33M) needs well under 1 GB of weights and activations per batch."""
DEFAULT_PLACEMENT_TIMEOUT = 120.0

CPU_COST_NOTE = (
    "measured with the bundled model on 2 CPU cores: 54-62 s per encode of 256 texts of "
    "~3,200 tokens, growing linearly with the tokens embedded"
)

_BUNDLE_GPU = re.compile(r"^GPU_group_(\d+)_([0-9a-f]+)$")


@dataclass(frozen=True)
class PlacementOptions:
    """Where the embedder may run (validated on construction; nothing is started).

    Args:
        placement: ``"auto"`` (a GPU this process sees, else a Ray actor on a GPU share when the
            Ray cluster has GPUs, else this process's CPU), ``"local"`` (this process, always) or
            ``"ray"`` (a Ray actor, always).
        num_gpus: share of one GPU the Ray actor holds, in (0, 1].
        placement_timeout: seconds to wait for Ray to schedule the actor before failing.
    """

    placement: str = "auto"
    num_gpus: float = DEFAULT_NUM_GPUS
    placement_timeout: float = DEFAULT_PLACEMENT_TIMEOUT

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"
            )
        if not _is_number(self.num_gpus) or not 0 < self.num_gpus <= 1:
            raise ValueError(f"num_gpus must be a number in (0, 1], got {self.num_gpus!r}")
        if not _is_number(self.placement_timeout) or not self.placement_timeout > 0:
            raise ValueError(
                f"placement_timeout must be a number of seconds > 0, got {self.placement_timeout!r}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, prefix: str = "") -> PlacementOptions:
        """Options from a mapping (``None`` values mean the default); errors name ``prefix+key``."""
        unknown = sorted(set(options) - set(PLACEMENT_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown placement option(s) {[prefix + str(k) for k in unknown]}; valid: "
                + ", ".join(prefix + name for name in PLACEMENT_OPTIONS)
            )
        values = {k: v for k, v in options.items() if v is not None}
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{prefix}{exc}") from None


PLACEMENT_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PlacementOptions))
"""Names of :class:`PlacementOptions`'s options, in order."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_device(device: Any, *, prefix: str = "") -> str | None:
    """The device option, normalised (``"auto"`` -> ``None``), checked for its form only.

    Whether this process sees that device is not checked here: with a Ray placement the embedder
    runs elsewhere. ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are placed by :func:`decide_placement`;
    other torch device types (``"mps"``, ``"xpu"``...) run in this process only.

    Raises:
        TypeError, ValueError: not a device string (the message names ``prefix + "device"``).
    """
    if device is None or device == "auto":
        return None
    if not isinstance(device, str):
        raise TypeError(f"{prefix}device must be a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"{prefix}device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
        ) from None
    return device


@dataclass(frozen=True)
class ClusterView:
    """What the process that builds the embedder sees.

    Attributes:
        local_cuda: this process sees a CUDA device it may use (in a Ray actor: one that Ray
            assigned to it).
        ray_initialized: this process is connected to a Ray cluster.
        cluster_gpus: GPUs of that cluster (``ray.cluster_resources()["GPU"]``), reserved or not.
    """

    local_cuda: bool
    ray_initialized: bool
    cluster_gpus: float


def observe_cluster() -> ClusterView:
    """The :class:`ClusterView` of this process (never imports ray)."""
    local_cuda = torch.cuda.is_available()
    ray = sys.modules.get("ray")  # not imported: not initialised either
    if ray is None or not ray.is_initialized():
        return ClusterView(local_cuda, False, 0.0)
    if local_cuda and ray.get_runtime_context().get_actor_id() is not None:
        # NOTE: an actor that reserved no GPU does not own the GPUs it may see (Ray announces it
        # will stop hiding them from such actors): do not put the embedder on them unreserved.
        local_cuda = bool(ray.get_gpu_ids())
    return ClusterView(local_cuda, True, float(ray.cluster_resources().get("GPU", 0.0)))


@dataclass(frozen=True)
class Placement:
    """Where the embedder runs.

    Attributes:
        where: ``"local"`` (this process) or ``"ray"`` (a Ray actor).
        device: the device the embedder is built with there (``None``: the embedder's own choice,
            CUDA when that process sees it; always ``None`` for a user's own embedder).
        num_gpus: share of a GPU the actor holds (0.0 for ``"local"`` and for a CPU actor).
        on_cpu: the embedder will run on a CPU (``device="cpu"``, or ``None`` with no CUDA here).
    """

    where: str
    device: str | None
    num_gpus: float
    on_cpu: bool

    def describe(self) -> str:
        if self.where == "local":
            return f"in this process ({'CPU' if self.on_cpu else self.device or 'CUDA'})"
        if self.num_gpus:
            return f"in a Ray actor holding {self.num_gpus:g} of a GPU"
        return "in a Ray actor on a CPU"


def decide_placement(
    device: str | None,
    options: PlacementOptions,
    view: ClusterView,
    *,
    custom: bool = False,
    prefix: str = "",
) -> Placement:
    """Where the embedder runs; a pure function (nothing is started or imported).

    Args:
        device: the device option, normalised by :func:`check_device` (``None`` = auto).
        options: the placement options.
        view: what this process sees (:func:`observe_cluster`).
        custom: the embedder is the user's own (built from a factory, which picks its device):
            ``placement="auto"`` keeps it in this process, ``"ray"`` builds it in the actor.
        prefix: how the caller spells option names in messages (``"dra."``, ``"--dra."``).

    Returns:
        The :class:`Placement`. With ``placement="auto"`` the embedder never runs on a CPU while
        this process or the Ray cluster has a GPU, unless ``device="cpu"`` asks for it.

    Raises:
        ValueError: a combination that cannot run: a CUDA device this process does not see with
            ``placement="local"`` (or an explicit index with ``"auto"``), ``placement="ray"``
            without Ray or, for a GPU actor, without a GPU in the cluster, ``device="cuda"`` when
            no GPU exists anywhere, a device index other than 0 for an actor.
    """
    kind = None if device is None else torch.device(device).type
    index = None if device is None else torch.device(device).index
    gpu_in_cluster = view.ray_initialized and view.cluster_gpus > 0
    if options.placement == "ray":
        if not view.ray_initialized:
            raise ValueError(
                f"{prefix}placement=ray: this process is not connected to a Ray cluster "
                f"(ray.init was not called); use {prefix}placement=auto or local"
            )
        if kind == "cpu":
            return Placement("ray", "cpu", 0.0, True)
        if kind not in (None, "cuda") or index not in (None, 0):
            raise ValueError(
                f"{prefix}device={device!r} with {prefix}placement=ray: the actor sees the one GPU "
                f"it holds as 'cuda'; use {prefix}device=cuda, cpu or auto"
            )
        if not gpu_in_cluster:
            raise ValueError(
                f"{prefix}placement=ray: the Ray cluster has no GPU for the embedder's actor; set "
                f"{prefix}device=cpu for an actor on a CPU, or {prefix}placement=local"
            )
        return Placement("ray", None if custom else "cuda", float(options.num_gpus), False)
    if options.placement == "auto" and custom:
        return Placement("local", None, 0.0, not view.local_cuda)
    if kind == "cpu":
        return Placement("local", "cpu", 0.0, True)
    if kind not in (None, "cuda"):
        return Placement("local", device, 0.0, False)  # mps, xpu...: this process's own device
    if kind == "cuda" and not view.local_cuda:
        if options.placement == "auto" and index is None:
            if gpu_in_cluster:
                return Placement("ray", "cuda", float(options.num_gpus), False)
            raise ValueError(
                f"{prefix}device={device!r}: there is no GPU in this process nor in a Ray cluster; "
                f"use {prefix}device=cpu or auto"
            )
        raise ValueError(
            f"{prefix}device={device!r}: this process sees no CUDA device; for a GPU of the Ray "
            f"cluster use {prefix}device=cuda with {prefix}placement=auto or ray, else "
            f"{prefix}device=cpu"
        )
    if kind == "cuda":
        return Placement("local", device, 0.0, False)
    # device None (auto)
    if view.local_cuda:
        return Placement("local", None, 0.0, False)
    if options.placement == "auto" and gpu_in_cluster:
        return Placement("ray", "cuda", float(options.num_gpus), False)
    return Placement("local", None, 0.0, True)


def find_gpu_slot(
    available: Mapping[str, float], num_gpus: float
) -> tuple[str | None, int | None] | None:
    """Where a GPU share of ``num_gpus`` is free now, from ``ray.available_resources()``.

    Returns:
        ``(None, None)`` when ``num_gpus`` is free outside placement groups (preferred: the share
        is on a GPU nobody else reserved); ``(placement group id hex, bundle index)`` of the bundle
        with the largest free GPU share that holds ``num_gpus`` (ties: the lowest id and index);
        ``None`` when no such share exists now.
    """
    eps = 1e-9
    if float(available.get("GPU", 0.0)) + eps >= num_gpus:
        return (None, None)
    best: tuple[float, str, int] | None = None
    for key, value in available.items():
        match = _BUNDLE_GPU.match(key)
        if match is None or float(value) + eps < num_gpus:
            continue
        candidate = (-float(value), match.group(2), int(match.group(1)))
        if best is None or candidate < best:
            best = candidate
    return None if best is None else (best[1], best[2])


# ----------------------------------------------------------------------------- the Ray actor


class _EmbedderServer:
    """The embedder inside a Ray actor. ``__init__`` is empty so that scheduling can be awaited
    apart from the model's loading."""

    def __init__(self) -> None:
        self._embed: EmbedFn | None = None

    def ready(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "gpu_ids": ray.get_gpu_ids(), "pid": os.getpid()}

    def load(self, config: Any, factory: Callable[[], Any] | None, device: str | None) -> str:
        if factory is not None:
            self._embed = as_embed_fn(factory(), f"what the embedder factory {factory!r} returned")
            return f"{getattr(factory, '__name__', factory)!s} (user embedder)"
        config = dataclasses.replace(config, device=device)
        embedder = config.build()
        self._embed = embedder.encode
        return f"{embedder.model_name} on {embedder.model.device}"

    def encode(self, texts: list[str]) -> tuple[Any, Any]:
        from dra_kernels.embed import EmbedStats

        if self._embed is None:
            raise RuntimeError("the embedder actor was not loaded")
        out = self._embed(texts)
        # NOTE: a tensor, not a numpy array: Ray hands numpy arrays back read-only (zero copy).
        out = out.detach() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        out = out.to("cpu")
        owner = getattr(self._embed, "__self__", self._embed)
        stats = getattr(owner, "last_stats", None)
        return out, stats if isinstance(stats, EmbedStats) else None


class RayEmbedder:
    """An embedder served by a Ray actor.

    :meth:`encode` sends the texts and returns the actor's ``[N, D]`` embeddings; :attr:`last_stats`
    then holds the actor's :class:`~dra_kernels.embed.EmbedStats` of that call (``None`` for an
    embedder that keeps none), so ``embed_metrics(self.encode)`` works as for a local
    :class:`~dra_kernels.embed.Embedder`.

    Build it with :func:`build_embed_fn` (or :meth:`start`).
    """

    def __init__(self, actor: Any, placement: Placement, info: dict[str, Any]) -> None:
        self.actor = actor
        self.placement = placement
        self.info = info
        self.last_stats: Any = None

    @classmethod
    def start(
        cls,
        placement: Placement,
        options: PlacementOptions,
        *,
        config: Any = None,
        factory: Callable[[], Any] | None = None,
        prefix: str = "",
        hint: str = "",
    ) -> RayEmbedder:
        """Start the actor, wait until Ray schedules it, then load the embedder in it.

        Raises:
            RuntimeError: no GPU share of ``placement.num_gpus`` showed up free, or Ray did not
                start the actor, within ``options.placement_timeout`` seconds (a started actor is
                killed; the message says what to change).
        """
        import ray
        from ray.util.placement_group import PlacementGroup
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        resources: dict[str, Any] = {"num_cpus": 0 if placement.num_gpus else 1}
        slot = None
        started = time.monotonic()
        deadline = started + options.placement_timeout
        if placement.num_gpus:
            resources["num_gpus"] = placement.num_gpus
            # NOTE: Ray's view of free resources lags behind (a placement group that just became
            # ready, an actor just killed): look again until a slot shows up or time runs out.
            slot = find_gpu_slot(ray.available_resources(), placement.num_gpus)
            while slot is None and time.monotonic() < deadline:
                time.sleep(0.5)
                slot = find_gpu_slot(ray.available_resources(), placement.num_gpus)
            if slot is None:
                raise RuntimeError(
                    _unschedulable(placement, options, ray.available_resources(), prefix, hint)
                )
            if slot[0] is not None:
                # NOTE: a bundle of the trainer's own placement group: its GPU share is free (the
                # colocated workers hold only part of it), and outside the groups none is.
                group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(slot[0])))
                resources["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=slot[1]
                )
        actor = ray.remote(_EmbedderServer).options(**resources).remote()
        try:
            # NOTE: at least 30 s to start the worker process once a slot was found.
            wait = max(deadline - time.monotonic(), min(30.0, options.placement_timeout))
            info = ray.get(actor.ready.remote(), timeout=wait)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor)
            raise RuntimeError(
                _unschedulable(placement, options, ray.available_resources(), prefix, hint)
            ) from None
        info["scheduled_s"] = time.monotonic() - started
        info["placement_group"] = None if slot is None else slot[0]
        info["bundle"] = None if slot is None else slot[1]
        info["embedder"] = ray.get(actor.load.remote(config, factory, placement.device))
        logger.info(
            "DRA: the embedder runs %s (%s; node %s, GPU ids %s, placement group %s bundle %s)",
            placement.describe(),
            info["embedder"],
            info["node"],
            info["gpu_ids"],
            info["placement_group"],
            info["bundle"],
        )
        return cls(actor, placement, info)

    def encode(self, texts: list[str]) -> Any:
        import ray

        out, self.last_stats = ray.get(self.actor.encode.remote(list(texts)))
        return out

    def close(self) -> None:
        """Stop the actor (it also stops with the process that started it)."""
        import ray

        ray.kill(self.actor)


def _unschedulable(
    placement: Placement,
    options: PlacementOptions,
    available: Mapping[str, float],
    prefix: str,
    hint: str,
) -> str:
    free = float(available.get("GPU", 0.0))
    bundles = [float(v) for k, v in available.items() if _BUNDLE_GPU.match(k)]
    what = f"num_gpus={placement.num_gpus:g}" if placement.num_gpus else "1 CPU and no GPU"
    return (
        f"DRA: the embedder's Ray actor ({what}) could not be scheduled within "
        f"{options.placement_timeout:g} s. Free now: {free:g} GPU outside placement groups, "
        f"largest free GPU share in a placement-group bundle {max(bundles, default=0.0):g}. "
        f"Set {prefix}num_gpus to a share that fits, free part of a GPU for it, "
        f"{prefix}device=cpu to run it on a CPU (slow: {CPU_COST_NOTE}), or "
        f"{prefix}placement=local to build it in this process; {prefix}placement_timeout waits "
        "longer." + (f" {hint}" if hint else "")
    )


# ----------------------------------------------------------------------------- the entry point


def build_embed_fn(
    *,
    config: Any = None,
    factory: Callable[[], Any] | None = None,
    device: str | None = None,
    options: PlacementOptions | None = None,
    prefix: str = "",
    view: ClusterView | None = None,
    hint: str = "",
) -> EmbedFn:
    """The embedding function an integration uses, built where :func:`decide_placement` says.

    Args:
        config: the :class:`~dra_kernels.embed.EmbedderConfig` of the default embedder (its
            ``device`` is ignored: ``device`` below is placed); ignored when ``factory`` is given.
        factory: zero-argument callable building the user's own embedder (a callable
            ``list[str] -> [N, D]`` or an object with ``encode``), or ``None``.
        device: the device option (:func:`check_device`).
        options: the placement options (default :class:`PlacementOptions`).
        prefix: how the integration spells option names in messages.
        view: what this process sees (default: :func:`observe_cluster`).
        hint: a sentence added to the error when the actor cannot be scheduled.

    Returns:
        ``Embedder.encode`` (local), the factory's function (local), or
        :meth:`RayEmbedder.encode`.
    """
    from dra_kernels.embed import EmbedderConfig

    options = options or PlacementOptions()
    config = EmbedderConfig() if config is None else config
    device = check_device(device, prefix=prefix)
    view = view or observe_cluster()
    placement = decide_placement(device, options, view, custom=factory is not None, prefix=prefix)
    if placement.where == "ray":
        return RayEmbedder.start(
            placement, options, config=config, factory=factory, prefix=prefix, hint=hint
        ).encode
    if placement.on_cpu:
        if view.ray_initialized and view.cluster_gpus > 0:
            logger.warning(
                "DRA: the embedder runs on this process's CPU (%sdevice=%s, %splacement=%s) "
                "although the Ray cluster has %g GPU(s) (%s)",
                prefix,
                device,
                prefix,
                options.placement,
                view.cluster_gpus,
                CPU_COST_NOTE,
            )
        else:
            logger.info(
                "DRA: the embedder runs on this process's CPU, %s (%s)",
                "as asked" if device == "cpu" else "no GPU in this process nor in a Ray cluster",
                CPU_COST_NOTE,
            )
    if factory is not None:
        return as_embed_fn(factory(), f"what the embedder factory {factory!r} returned")
    return dataclasses.replace(config, device=placement.device).build().encode
