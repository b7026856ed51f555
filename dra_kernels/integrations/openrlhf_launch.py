"""Run ``openrlhf.cli.train_ppo_ray`` with DRA available in its Ray workers:
``python -m dra_kernels.integrations.openrlhf_launch --dra.enable [--dra.<option> VALUE ...]
<train_ppo_ray flags>``. The ``--dra.*`` flags (:data:`FLAGS`) become the checked
``DRA_KERNELS_OPENRLHF*`` variables before Ray starts, and ``ray.init`` is wrapped so that every
worker gets them and the setup hook. See docs/integrations/openrlhf.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import sys
from collections.abc import Callable
from typing import Any

from dra_kernels.embed import EmbedderConfig
from dra_kernels.integrations._common import read_flag
from dra_kernels.integrations._placement import PlacementOptions
from dra_kernels.integrations.openrlhf import (
    ENV_EMBEDDER,
    ENV_ENABLE,
    ENV_OPTIONS,
    OPTIONS,
    PREFIX,
    STEP_VARIABLES,
    config_from_env,
)

__all__ = [
    "FLAGS",
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
    f"{PREFIX}embedder": ENV_EMBEDDER,
    **{PREFIX + name: variable for name, variable in STEP_VARIABLES.items()},
}
_ENV_NAMES = (ENV_ENABLE, ENV_OPTIONS, *_VALUE_FLAGS.values())
_TYPES = {
    f.name: str(f.type)
    for cls in (EmbedderConfig, PlacementOptions)
    for f in dataclasses.fields(cls)
}
"""Annotation of each option (``"int | None"``...), which says how its flag's text is read."""

FLAGS: tuple[str, ...] = (
    f"{PREFIX}enable",
    f"{PREFIX}embedder",
    *(PREFIX + name for name in (*OPTIONS, *STEP_VARIABLES)),
)
"""Every ``--dra.*`` flag the launcher takes."""


def _typed(name: str, text: str) -> Any:
    """The value of flag ``--dra.<name>`` read from its text by the option's type; text that does
    not read as that type is kept as it is, so that the check names the flag and the value."""
    annotation = _TYPES[name]
    if "None" in annotation and text.strip().lower() in ("none", "null"):
        return None
    if annotation == "bool":
        flag = read_flag(text)
        return text if flag is None else flag
    kind = next((k for k in (int, float) if k.__name__ in annotation), str)
    try:
        return kind(text)
    except ValueError:
        return text


def parse_dra_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``--dra.*`` flags from the rest.

    A boolean option (``--dra.trust_remote_code``) may stand alone (true) or take a value
    (``true/false/1/0/yes/no/on/off``). ``none``/``null`` sets an optional option to its default.

    Returns:
        (environment variables they set, the remaining arguments in order).

    Raises:
        SystemExit: an unknown ``--dra.*`` flag (the message lists the valid ones) or a flag
            without its value.

    Example:
        >>> env, rest = parse_dra_args(["--dra.enable", "--dra.backend=torch", "--seed", "8"])
        >>> env
        {'DRA_KERNELS_OPENRLHF': '1', 'DRA_KERNELS_OPENRLHF_BACKEND': 'torch'}
        >>> rest
        ['--seed', '8']
        >>> env, _ = parse_dra_args(["--dra.trust_remote_code", "--dra.max_tokens", "512"])
        >>> env
        {'DRA_KERNELS_OPENRLHF_OPTIONS': '{"trust_remote_code": true, "max_tokens": 512}'}
    """
    env: dict[str, str] = {}
    options: dict[str, Any] = {}
    rest: list[str] = []
    pending = argv[::-1]  # the next argument last
    while pending:
        arg = pending.pop()
        flag, sep, value = arg.partition("=")
        name = flag[len(PREFIX) :]
        if arg == f"{PREFIX}enable":
            env[ENV_ENABLE] = "1"
        elif flag in _VALUE_FLAGS or (flag.startswith(PREFIX) and name in OPTIONS):
            if not sep:
                if _TYPES.get(name) == "bool" and read_flag(pending[-1] if pending else "") is None:
                    value = "true"
                elif not pending:
                    raise SystemExit(f"{flag} needs a value")
                else:
                    value = pending.pop()
            if flag in _VALUE_FLAGS:
                env[_VALUE_FLAGS[flag]] = value
            else:
                options[name] = _typed(name, value)
        elif flag.startswith(PREFIX):
            raise SystemExit(f"unknown option {flag}; valid: {', '.join(FLAGS)}")
        else:
            rest.append(arg)
    if options:
        env[ENV_OPTIONS] = json.dumps(options)
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
    try:
        config = config_from_env()  # fail here, in the driver, before Ray or a model starts
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"[dra-kernels] {exc}") from None
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
