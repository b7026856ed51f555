"""The package's layout rule: a module uses another module's public names only.

An underscore name is its module's own. Every module of ``dra_kernels`` is read with ``ast`` (its
imports and the attributes it reads from other modules of the package); importing a private
module or subpackage as a unit (``from dra_kernels import _triton``) is allowed, reaching for
``module._name`` or ``from module import _name`` across modules is not. Dunder names are allowed.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dra_kernels"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imported_from(node: ast.ImportFrom, module: str, path: pathlib.Path) -> str | None:
    """The absolute name of the module that ``from ... import`` reads from (None: not ours)."""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    return base if base in MODULES else None


def private_uses(module: str, source: str, path: pathlib.Path) -> list[tuple[int, str]]:
    """``(line, owner.name)`` for each private name of another package module that ``module``
    (whose ``source`` sits at ``path``) uses."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> package module it is bound to
    found = []

    def use(owner: str, name: str, line: int) -> None:
        if owner != module and is_private(name):
            found.append((line, f"{owner}.{name}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dra_kernels" and alias.asname:
                    aliases[alias.asname] = alias.name
                elif alias.name.split(".")[0] == "dra_kernels":
                    aliases["dra_kernels"] = "dra_kernels"
        elif isinstance(node, ast.ImportFrom):
            base = imported_from(node, module, path)
            if base is None:
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # a module imported as a unit
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
                else:
                    use(base, alias.name, node.lineno)

    def resolve(node: ast.expr) -> str | None:
        """The package module an expression names (``api``, ``dra_kernels.api``), or None."""
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = resolve(node.value)
            if owner is not None and f"{owner}.{node.attr}" in MODULES:
                return f"{owner}.{node.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = resolve(node.value)
            if owner is not None and f"{owner}.{node.attr}" not in MODULES:
                use(owner, node.attr, node.lineno)
    return found


def test_the_scan_finds_each_kind_of_use() -> None:
    assert {"dra_kernels", "dra_kernels.api", "dra_kernels._triton.ops"} <= set(MODULES)
    # A module of the package reaching for others' private names in each way the rule forbids,
    # beside the allowed uses (a private subpackage as a unit, its public names, dunders).
    source = (
        "from dra_kernels import api, _triton\n"
        "from dra_kernels.api import _prepare\n"
        "from . import reference\n"
        "import dra_kernels.measures as m\n"
        "api._prepare, reference._helper, m._cosines, _triton.MAX_D, api.__name__\n"
    )
    found = private_uses("dra_kernels.probe", source, PACKAGE / "probe.py")
    assert sorted(name for _, name in found) == [
        "dra_kernels.api._prepare",
        "dra_kernels.api._prepare",
        "dra_kernels.measures._cosines",
        "dra_kernels.reference._helper",
    ], found


def test_no_module_uses_another_modules_private_names() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for module, path in MODULES.items()
        for line, name in private_uses(module, path.read_text(encoding="utf-8"), path)
    ]
    assert not found, (
        "a module uses another module's public names only (an underscore name is that module's "
        "own: make it public, with a docstring, or keep it where it is used):\n" + "\n".join(found)
    )
