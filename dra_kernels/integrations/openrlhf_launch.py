"""Run ``openrlhf.cli.train_ppo_ray`` with DRA available in its Ray workers.

Usage (every OpenRLHF flag passes through unchanged)::

    python -m dra_kernels.integrations.openrlhf_launch --dra.enable \\
        [--dra.embedder package.module:factory] [--dra.min_denominator 0.1] \\
        [--dra.backend auto] <train_ppo_ray flags>

What it does, in the driver process, before running ``train_ppo_ray`` as ``__main__``:

1. turns the ``--dra.*`` flags into the ``DRA_KERNELS_OPENRLHF*`` environment variables
   (``--dra.enable`` sets ``DRA_KERNELS_OPENRLHF=1``; without it the variable decides, off when
   unset);
2. wraps ``ray.init`` so that the ``runtime_env`` passed by ``train_ppo_ray`` (or by the user)
   gains ``worker_process_setup_hook="dra_kernels.integrations.openrlhf.setup_hook"`` and the
   ``DRA_KERNELS_OPENRLHF*`` variables in ``env_vars``. Each Ray worker then runs the hook, which
   patches the experience maker when (and only if) that worker imports it.

With DRA off the hook does nothing, so the run is OpenRLHF's own.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Callable
from typing import Any

from dra_kernels.integrations.openrlhf import (
    ENV_BACKEND,
    ENV_EMBEDDER,
    ENV_ENABLE,
    ENV_MIN_DENOMINATOR,
    config_from_env,
)

__all__ = [
    "HOOK",
    "TRAIN_MODULE",
    "add_dra_runtime_env",
    "main",
    "parse_dra_args",
    "patch_ray_init",
]

HOOK = "dra_kernels.integrations.openrlhf.setup_hook"
TRAIN_MODULE = "openrlhf.cli.train_ppo_ray"

_VALUE_FLAGS = {
    "--dra.embedder": ENV_EMBEDDER,
    "--dra.min_denominator": ENV_MIN_DENOMINATOR,
    "--dra.backend": ENV_BACKEND,
}
_ENV_NAMES = (ENV_ENABLE, ENV_EMBEDDER, ENV_MIN_DENOMINATOR, ENV_BACKEND)


def parse_dra_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``--dra.*`` flags from the rest.

    Returns:
        (environment variables they set, the remaining arguments in order).

    Example:
        >>> env, rest = parse_dra_args(["--dra.enable", "--dra.backend=torch", "--seed", "8"])
        >>> env
        {'DRA_KERNELS_OPENRLHF': '1', 'DRA_KERNELS_OPENRLHF_BACKEND': 'torch'}
        >>> rest
        ['--seed', '8']
    """
    env: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, sep, value = arg.partition("=")
        if arg == "--dra.enable":
            env[ENV_ENABLE] = "1"
        elif flag in _VALUE_FLAGS:
            if not sep:
                if i + 1 >= len(argv):
                    raise SystemExit(f"{flag} needs a value")
                i += 1
                value = argv[i]
            env[_VALUE_FLAGS[flag]] = value
        elif flag.startswith("--dra."):
            known = ", ".join(["--dra.enable", *_VALUE_FLAGS])
            raise SystemExit(f"unknown option {flag}; known: {known}")
        else:
            rest.append(arg)
        i += 1
    return env, rest


def add_dra_runtime_env(runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``runtime_env`` with the DRA setup hook and the ``DRA_KERNELS_OPENRLHF*`` vars.

    Variables already in ``runtime_env["env_vars"]`` win over the driver's environment.
    """
    out = dict(runtime_env or {})
    hook = out.get("worker_process_setup_hook")
    if hook is not None and hook != HOOK:
        raise ValueError(
            f"runtime_env already has worker_process_setup_hook={hook!r}; call {HOOK}() from it "
            "instead of using this launcher"
        )
    out["worker_process_setup_hook"] = HOOK
    env_vars = {name: os.environ[name] for name in _ENV_NAMES if name in os.environ}
    env_vars.update(out.get("env_vars") or {})
    out["env_vars"] = env_vars
    return out


def patch_ray_init(ray_module: Any) -> Callable[..., Any]:
    """Wrap ``ray_module.init`` so every ``runtime_env`` gets :func:`add_dra_runtime_env`."""
    original = ray_module.init
    if getattr(original, "__dra_original__", None) is not None:
        return original

    def init(*args: Any, **kwargs: Any) -> Any:
        kwargs["runtime_env"] = add_dra_runtime_env(kwargs.get("runtime_env"))
        return original(*args, **kwargs)

    init.__dra_original__ = original  # type: ignore[attr-defined]
    init.__doc__ = original.__doc__
    ray_module.init = init
    return init


def main(argv: list[str] | None = None) -> None:
    env, rest = parse_dra_args(sys.argv[1:] if argv is None else argv)
    os.environ.update(env)
    config = config_from_env()  # fail here, in the driver, on a bad value
    print(
        f"[dra-kernels] DRA for OpenRLHF is {'on' if config else 'off'} "
        f"({ENV_ENABLE}={os.environ.get(ENV_ENABLE, '')!r})",
        file=sys.stderr,
    )
    import ray

    patch_ray_init(ray)
    sys.argv = [TRAIN_MODULE, *rest]
    runpy.run_module(TRAIN_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
