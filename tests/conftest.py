"""Shared test set-up.

Without a CUDA device, Triton kernels run through Triton's CPU interpreter: TRITON_INTERPRET must be
set before triton is first imported, which is why it happens here, at collection time.
"""

from __future__ import annotations

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

# Hypothesis profiles (``ci`` by default, ``HYPOTHESIS_PROFILE=local`` for >= 2,000 examples).
import _hypothesis_profiles  # noqa: E402, F401
