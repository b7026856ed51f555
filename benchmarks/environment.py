"""What a result was measured on and with: the device, the library versions, the code.

Every results JSON of the benchmarks starts with :func:`environment`. The code is identified by
the commit (``git rev-parse HEAD``) and whether the tree differed from it; where the copy that ran
has no git metadata (a copy of the working tree on a lent machine), by the commit given on the
command line and always by ``source_sha256``, a digest of the package's and the benchmarks'
sources that :func:`source_digest` recomputes in any checkout.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dra_kernels

__all__ = ["REPO", "environment", "git_state", "source_digest"]

REPO = Path(__file__).resolve().parent.parent
_SOURCES = ("dra_kernels", "benchmarks")


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout.strip()


def git_state(commit: str | None = None) -> dict[str, Any]:
    """``commit`` (``git rev-parse HEAD``), ``dirty`` (tracked files differ from it) and the first
    changed paths; without git metadata, the ``commit`` given (``None`` if none) and why."""
    try:
        head = _git("rev-parse", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        reason = getattr(exc, "stderr", None) or f"{type(exc).__name__}: {exc}"
        return {
            "commit": commit,
            "commit_source": "given on the command line" if commit else "unknown",
            "dirty": None,
            "git": f"unavailable ({str(reason).strip()[:200]})",
        }
    state: dict[str, Any] = {"commit": head, "commit_source": "git rev-parse HEAD"}
    state["dirty"] = bool(changed)
    if changed:
        state["changed"] = [line[3:] for line in changed[:20]]
    if commit is not None and not head.startswith(commit):
        state["commit_given"] = commit
    return state


def source_digest() -> str:
    """SHA-256 over the paths and bytes of every ``.py`` file of the package and the benchmarks,
    in sorted order: equal digests mean the same code ran."""
    digest = hashlib.sha256()
    for top in _SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def environment(device: torch.device, *, commit: str | None = None) -> dict[str, Any]:
    """Device name, library versions, the code measured, the date and machine facts."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_type": device.type,
        **git_state(commit),
        "source_sha256": source_digest(),
        "dra_kernels": dra_kernels.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # triton is optional
        info["triton"] = f"unavailable ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["multiprocessors"] = props.multi_processor_count
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        l2 = getattr(props, "L2_cache_size", None)
        if l2:
            info["l2_mib"] = round(l2 / 2**20, 1)
    else:
        info["device_name"] = info["cpu"]
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
