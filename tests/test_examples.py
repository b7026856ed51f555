"""The examples run as shipped."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_prints_rewards_before_and_after(capsys, monkeypatch):
    pytest.importorskip("sentence_transformers", reason="the embed extra is not installed")
    monkeypatch.setitem(os.environ, "HF_HUB_OFFLINE", "1")
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "What is the last digit of 7^2023?"
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 7
    # correct answers are down-weighted (SMI > 0), wrong ones stay at 0
    for row in rows:
        reward, smi, adjusted = (float(x) for x in row[-5:-2])
        assert smi > 0
        assert adjusted == pytest.approx(reward / (1 + smi), abs=2e-3)
