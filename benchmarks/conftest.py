"""Benchmark-suite options: tests marked ``slow`` (the N = 262,144 CPU measurement of target 7)
run only with ``--run-slow``, so the default ``pytest benchmarks`` stays quick."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the slow benchmark measurements (target 7, about a minute)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow measurement: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
