"""Where verl's and OpenRLHF's embedder runs: in this process, or in a Ray actor on a GPU share
(:func:`decide_placement` says where, :func:`build_embed_fn` builds it there; never a CPU fallback
on its own). The rules: "Where the embedder runs" in docs/integrations/verl.md.
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

from dra_kernels.embed import EmbedderConfig, EmbedStats
from dra_kernels.step import DRAStep, EmbedFn, as_embed_fn

logger = logging.getLogger(__name__)

PLACEMENTS = ("auto", "local", "ray")
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
    num_gpus: float = 0.1  # NOTE: a small encoder (23-33M parameters) needs well under 1 GB
    placement_timeout: float = 120.0

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
    """The device option, normalised (``"auto"`` -> ``None``), checked for its form only (with a
    Ray placement the embedder runs elsewhere); devices other than CPU and CUDA stay local.

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
    """What the process that builds the embedder sees: a CUDA device it may use (in a Ray actor:
    one Ray assigned to it), a connection to a Ray cluster, and the cluster's GPUs (reserved or
    not)."""

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
    """Where the embedder runs: ``where`` ``"local"`` (this process) or ``"ray"`` (an actor
    holding ``num_gpus`` of a GPU, 0 on a CPU), built with ``device`` there (``None``: its own
    choice); ``on_cpu``: it will run on a CPU."""

    where: str
    device: str | None
    num_gpus: float
    on_cpu: bool


def decide_placement(
    device: str | None,
    options: PlacementOptions,
    view: ClusterView,
    *,
    custom: bool = False,
    prefix: str = "",
) -> Placement:
    """Where the embedder runs; a pure function (nothing is started or imported).

    ``device`` is the option normalised by :func:`check_device` (``None``: auto); ``custom``: the
    user's own embedder, which picks its device (``"auto"`` keeps it here); ``prefix``: how the
    caller spells the options in messages. With ``placement="auto"`` the embedder never runs on a
    CPU while this process or the Ray cluster has a GPU, unless ``device="cpu"`` asks for it.

    Raises:
        ValueError: a combination that cannot run (the message says what to change).
    """
    kind = None if device is None else torch.device(device).type
    index = None if device is None else torch.device(device).index
    gpu_in_cluster = view.ray_initialized and view.cluster_gpus > 0
    actor = Placement("ray", "cuda", float(options.num_gpus), False)
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
        return dataclasses.replace(actor, device=None) if custom else actor
    if options.placement == "auto" and custom:
        return Placement("local", None, 0.0, not view.local_cuda)
    if kind == "cpu":
        return Placement("local", "cpu", 0.0, True)
    if kind not in (None, "cuda"):
        return Placement("local", device, 0.0, False)  # mps, xpu...: this process's own device
    if kind == "cuda" and not view.local_cuda:
        if options.placement == "auto" and index is None:
            if gpu_in_cluster:
                return actor
            raise ValueError(
                f"{prefix}device={device!r}: there is no GPU in this process nor in a Ray cluster; "
                f"use {prefix}device=cpu or auto"
            )
        raise ValueError(
            f"{prefix}device={device!r}: this process sees no CUDA device; for a GPU of the Ray "
            f"cluster use {prefix}device=cuda with {prefix}placement=auto or ray, else "
            f"{prefix}device=cpu"
        )
    if view.local_cuda:  # device cuda (seen here) or auto
        return Placement("local", device, 0.0, False)
    if options.placement == "auto" and gpu_in_cluster:
        return actor
    return Placement("local", None, 0.0, True)


def find_gpu_slot(
    available: Mapping[str, float], num_gpus: float
) -> tuple[str | None, int | None] | None:
    """Where a GPU share of ``num_gpus`` is free now, from ``ray.available_resources()``:
    ``(None, None)`` outside placement groups (preferred), else ``(placement group id hex, bundle
    index)`` of the bundle with the largest free share (ties: the lowest id, then index), else
    ``None``."""
    eps = 1e-9
    if float(available.get("GPU", 0.0)) + eps >= num_gpus:
        return (None, None)
    bundles = [
        (-float(value), match.group(2), int(match.group(1)))
        for key, value in available.items()
        if (match := _BUNDLE_GPU.match(key)) and float(value) + eps >= num_gpus
    ]
    return min(bundles)[1:] if bundles else None


class _EmbedderServer:
    """The embedder inside a Ray actor, loaded by :meth:`load` once Ray scheduled it."""

    def ready(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "gpu_ids": ray.get_gpu_ids(), "pid": os.getpid()}

    def load(self, config: Any, factory: Callable[[], Any] | None, device: str | None) -> str:
        self._embed = _build(config, factory, device)
        if factory is not None:
            return f"{factory!r} (user embedder)"
        return f"{self._embed.__self__.model_name} on {self._embed.__self__.model.device}"

    def encode(self, texts: list[str]) -> tuple[Any, Any]:
        out = self._embed(texts)
        # NOTE: a tensor, not a numpy array: Ray hands numpy arrays back read-only (zero copy).
        out = out.detach() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        out = out.cpu()
        owner = getattr(self._embed, "__self__", self._embed)
        stats = getattr(owner, "last_stats", None)
        return out, stats if isinstance(stats, EmbedStats) else None


class RayEmbedder:
    """An embedder served by a Ray actor (built by :func:`build_embed_fn`): :meth:`encode` returns
    the actor's ``[N, D]`` embeddings and keeps its :class:`~dra_kernels.embed.EmbedStats` in
    :attr:`last_stats`, so ``embed_metrics(self.encode)`` works as for a local embedder."""

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
            RuntimeError: no GPU share showed up free, or Ray did not start the actor, within
                ``options.placement_timeout`` seconds (the message says what to change).
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
            while (slot := find_gpu_slot(ray.available_resources(), placement.num_gpus)) is None:
                if time.monotonic() >= deadline:
                    raise RuntimeError(_unschedulable(placement, options, prefix, hint))
                time.sleep(0.5)
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
            raise RuntimeError(_unschedulable(placement, options, prefix, hint)) from None
        info["scheduled_s"] = time.monotonic() - started
        info["placement_group"], info["bundle"] = slot or (None, None)
        info["embedder"] = ray.get(actor.load.remote(config, factory, placement.device))
        logger.info("DRA: the embedder runs in a Ray actor (%s; %s)", placement, info)
        return cls(actor, placement, info)

    def encode(self, texts: list[str]) -> Any:
        import ray

        out, self.last_stats = ray.get(self.actor.encode.remote(list(texts)))
        return out

    def close(self) -> None:
        """Stop the actor (it also stops with the process that started it)."""
        import ray

        ray.kill(self.actor)


def _unschedulable(placement: Placement, options: PlacementOptions, prefix: str, hint: str) -> str:
    import ray

    available = ray.available_resources()
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


def _build(config: Any, factory: Callable[[], Any] | None, device: str | None) -> EmbedFn:
    if factory is not None:
        return as_embed_fn(factory(), f"what the embedder factory {factory!r} returned")
    return dataclasses.replace(config, device=device).build().encode


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
    """The embedding function an integration uses, built where :func:`decide_placement` says
    (``device``, ``options``, ``view``: default :func:`observe_cluster`): from ``config`` (the
    built-in embedder's, default the default one; its ``device`` is ignored) or ``factory`` (a
    zero-argument callable building the user's own), here or in a :class:`RayEmbedder`. ``prefix``
    spells the options in messages; ``hint`` is added when the actor cannot be scheduled."""
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
        gpus = view.cluster_gpus if view.ray_initialized else 0.0
        logger.log(
            logging.WARNING if gpus else logging.INFO,
            "DRA: the embedder runs on this process's CPU (%sdevice=%s, %splacement=%s; %g GPU(s) "
            "in a Ray cluster): %s",
            *(prefix, device, prefix, options.placement, gpus, CPU_COST_NOTE),
        )
    return _build(config, factory, placement.device)


@dataclass(frozen=True)
class Deferred:
    """Stands for the user's own embedder, named by ``spec``, in a step configured in a driver:
    :meth:`DRAStep.from_options <dra_kernels.step.DRAStep.from_options>` then refuses the built-in
    embedder's options, and nothing is imported or built there; :func:`place_step` builds it."""

    spec: str

    def __call__(self, texts: list[str]) -> Any:
        raise RuntimeError(f"the DRA embedder {self.spec!r} is built by place_step, not here")


def read_step(
    options: dict[str, Any], *, spec: str | None, spell: Any, prefix: str
) -> tuple[DRAStep, str | None, PlacementOptions]:
    """``(step, device, placement options)`` from a trainer's options, the user's own embedder
    named by ``spec`` (a :class:`Deferred`) or ``None``. The device is placed for the built-in
    embedder, not given to its config (which would check it against this process); the user's
    own embedder refuses it as any embedder option."""
    placement = {k: options.pop(k, None) for k in PLACEMENT_OPTIONS}
    placement = PlacementOptions.from_options(placement, prefix=prefix)
    custom = None if spec is None else Deferred(spec)
    device = check_device(options.pop("device", None), prefix=prefix) if custom is None else None
    step = DRAStep.from_options(options, spell=spell, embedder=custom)
    return step, device, placement


def place_step(settings: Any, factory: Callable[[], Any] | None, prefix: str, hint: str) -> DRAStep:
    """``settings.step`` with its embedder built where ``settings.device`` and
    ``settings.placement`` say (:func:`build_embed_fn`): the user's own from ``factory``, else the
    step's built-in one. A user's embedder already in the step (not :class:`Deferred`) is used as
    it is."""
    step, config = settings.step, settings.step.embedder
    if factory is None and not isinstance(config, (EmbedderConfig, type(None))):
        return step
    embed = build_embed_fn(
        config=config if isinstance(config, EmbedderConfig) else None,
        factory=factory,
        device=settings.device,
        options=settings.placement,
        prefix=prefix,
        hint=hint,
    )
    return step.with_embedder(embed)
