"""Hypothesis profiles for the fuzz and reliability tests, chosen by ``HYPOTHESIS_PROFILE``.

- ``ci`` (the default): a few dozen examples per property, no deadline (the Triton interpreter and
  a shared CI machine make timings meaningless), derandomised so CI runs are reproducible.
- ``local``: 2,500 examples per property, randomised, for a long run before a release::

      HYPOTHESIS_PROFILE=local python -m pytest tests/test_fuzz.py

Importing this module registers both profiles and loads the selected one; importing it twice is
harmless.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SHARED = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}

settings.register_profile("ci", max_examples=40, derandomize=True, **_SHARED)
settings.register_profile("local", max_examples=2500, **_SHARED)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE in ("ci", "local"):  # another name is left to whoever registered it
    settings.load_profile(PROFILE)
