"""The bundled sample: hand-written math rollouts and the answer checker that scored them.

``math_sample.jsonl`` holds 12 math problems with 7 completions each, written by hand for this
package (not sampled from a model): for every problem, distinct correct methods, near-paraphrases
of one method, and wrong answers. Rewards come from :func:`dra_kernels.data.checker.check`.
See ``README.md`` next to it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["SAMPLE_NAME", "sample_path"]

SAMPLE_NAME = "math_sample.jsonl"


def sample_path() -> Path:
    """Path of the bundled sample rollout file (JSONL)."""
    return Path(str(resources.files(__name__).joinpath(SAMPLE_NAME)))
