"""What the docs and messages tell users to install works: the package is not published on any
index, so every install line installs from a clone, in the same words everywhere.

Scanned: README.md, docs/, examples/ and the package's own sources (docstrings, error messages,
bundled text), every line that says ``pip install``.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "examples").rglob("*.py")),
    *sorted(p for p in (ROOT / "dra_kernels").rglob("*") if p.suffix in {".py", ".md", ".txt"}),
]

# `pip install [options] dra-kernels...` (quoted or not, extras or not): the package from an index
FROM_INDEX = re.compile(r"""pip3?\s+install\s+(?:-[-\w]*(?:=\S+)?\s+)*["']?dra[-_]kernels\b""")
# the one spelling of an install from the clone: `pip install -e ".[extra,...]"`
EDITABLE = re.compile(r"""pip3?\s+install\s+(?:-[-\w]*\s+)*-e\s+(\S+)""")
CLONE_TARGET = re.compile(r'''^"\.\[[a-z0-9_-]+(?:,[a-z0-9_-]+)*\]"''')


def install_lines() -> list[tuple[str, str]]:
    found = []
    for path in SCANNED:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"pip3?\s+install", line):
                found.append((f"{path.relative_to(ROOT)}:{number}", line.strip()))
    return found


def test_the_scan_sees_the_install_lines() -> None:
    where = {place.split(":")[0] for place, _ in install_lines()}
    assert {"README.md", "docs/integrations/trl.md", "dra_kernels/embed.py"} <= where, where


def test_nothing_says_to_install_the_package_from_an_index() -> None:
    wrong = [f"{place}: {line}" for place, line in install_lines() if FROM_INDEX.search(line)]
    assert not wrong, (
        'dra-kernels is not published on any index; say `pip install -e ".[extra]"` from a clone '
        "of the repository instead:\n" + "\n".join(wrong)
    )


def test_installs_from_the_clone_are_spelled_one_way() -> None:
    wrong = [
        f"{place}: {line}"
        for place, line in install_lines()
        for target in EDITABLE.findall(line)
        if not CLONE_TARGET.match(target)
    ]
    assert not wrong, 'spell installs from the clone `pip install -e ".[extra]"`:\n' + "\n".join(
        wrong
    )


@pytest.mark.parametrize(
    ("line", "wrong"),
    [
        ("pip install 'dra-kernels[cli]'", True),
        ('pip install "dra-kernels[verl,embed]"', True),
        ("python -m pip install -U dra-kernels", True),
        ("needs `pip install dra_kernels[embed]` in the environment", True),
        ('pip install -e ".[trl]" from a clone of the dra-kernels repository', False),
        ("pip install 'trl>=1.16,<1.17'", False),
    ],
)
def test_the_index_pattern(line: str, wrong: bool) -> None:
    assert bool(FROM_INDEX.search(line)) is wrong


@pytest.mark.parametrize(
    ("line", "right"),
    [
        ('pip install -e ".[trl,embed]"', True),
        ("pip install -e '.[trl]'", False),
        ("pip install -e .[cli]", False),
    ],
)
def test_the_clone_pattern(line: str, right: bool) -> None:
    assert all(CLONE_TARGET.match(t) for t in EDITABLE.findall(line)) is right
