"""The folders are the layers: a test that reads every import (``ast``).

    server.cli   may import  proc, ipc, core, errors
    server.proc  may import  ipc, core, errors
    server.ipc   may import  core, errors
    server.core  may import  errors, and nothing of the operating system
                 (os, socket, signal, selectors, subprocess, sysv_ipc)

and nothing imports ``server.cli`` but ``server.cli`` and ``server/__main__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "server"
ALLOWED = {
    "core": {"core", "errors"},
    "ipc": {"ipc", "core", "errors"},
    "proc": {"proc", "ipc", "core", "errors"},
    "cli": {"cli", "proc", "ipc", "core", "errors"},
}
OS_MODULES = {"os", "socket", "signal", "selectors", "subprocess", "sysv_ipc"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (or in
    ``text``, read as if it stood at ``path``)."""
    package = ["server", *path.relative_to(PACKAGE).parent.parts]
    found: list[tuple[int, str]] = []
    source = path.read_text() if text is None else text
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from . import client`` imports a module too
            found += [(node.lineno, name)]
            if not node.module:
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "server":
        return None
    return parts[1] if len(parts) > 1 else ""


def violations(path: Path, text: str | None = None) -> list[str]:
    layer = path.relative_to(PACKAGE).parts[0] if path.parent != PACKAGE else None
    out = []
    for line, module in imports(path, text):
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        target = layer_of(module)
        if layer == "core" and module.split(".")[0] in OS_MODULES:
            out.append(f"{where}: core must not touch the operating system")
        if target is None or target == "":
            continue
        if layer in ALLOWED and target not in ALLOWED[layer]:
            out.append(f"{where}: {layer} may import only {sorted(ALLOWED[layer])}")
        if target == "cli" and layer != "cli" and path.name != "__main__.py":
            out.append(f"{where}: nothing imports the command line")
    return out


def test_every_layer_imports_only_the_layers_below_it() -> None:
    found = [v for path in modules() for v in violations(path)]
    assert found == []


@pytest.mark.parametrize(
    ("where", "text", "complaint"),
    [
        ("core/ring.py", "import os\n", "must not touch the operating system"),
        ("core/ring.py", "from socket import socket\n", "must not touch the operating system"),
        ("core/ring.py", "from ..ipc import shm\n", "core may import only"),
        ("core/ring.py", "import server.proc.connect\n", "core may import only"),
        ("ipc/shm.py", "from ..proc.common import TICK\n", "ipc may import only"),
        ("proc/logic.py", "from ..cli import main\n", "nothing imports the command line"),
        ("proc/logic.py", "from server.cli.inspect import describe\n", "proc may import only"),
    ],
)
def test_the_rule_sees_a_violation(where: str, text: str, complaint: str) -> None:
    # The checker can fail: the same file with one forbidden import added.
    path = PACKAGE / where
    assert violations(path) == []
    found = violations(path, path.read_text() + text)
    assert any(complaint in line for line in found), found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    limit = 259 if path == PACKAGE / "proc" / "connect.py" else 400  # connect: under 260
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{path.name} has {lines} lines; split it (at most {limit})"
