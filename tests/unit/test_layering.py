"""The storage seams hold: only control/ and the composition root know the storage backends.

``openkvs.store`` (the backend interfaces and their implementations) is imported by ``store/``
itself, ``control/`` and ``app.py``; the storage worker processes open their blob store through
``openkvs.store.factory`` and nothing else. Everything else gets records from ``openkvs.records``
and reaches channels, streams and fragments through ``control/``: nobody outside ``control/``
touches a ``store`` attribute, nor the backends (``blobs``, ``meta``) behind the control plane
or the fragment store.
"""

from __future__ import annotations

import ast
from pathlib import Path

import openkvs

SRC = Path(openkvs.__file__).resolve().parent

# module (relative to src/openkvs, as a path) -> the openkvs.store modules it may import
# ("*": any of them)
STORE_IMPORTERS = {
    "app.py": {"*"},
    "webrtc/workers.py": {"openkvs.store.factory"},
}
OWNERS = {"store", "control"}  # packages whose modules use the backends freely


def _module_name(rel: Path) -> str:
    parts = ["openkvs", *rel.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, rel: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a module, relative ones resolved."""
    package = _module_name(rel).split(".")
    if rel.name != "__init__.py":
        package = package[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            if module == "openkvs":  # ``from .. import store`` names the package by an alias
                out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def store_import_violations(source: str, rel: Path) -> list[str]:
    if rel.parts[0] in OWNERS:
        return []
    allowed = STORE_IMPORTERS.get(rel.as_posix(), set())
    out = []
    for line, module in _imports(ast.parse(source), rel):
        if module != "openkvs.store" and not module.startswith("openkvs.store."):
            continue
        if "*" in allowed or module in allowed:
            continue
        out.append(f"{rel}:{line} imports {module}")
    return out


def backend_attribute_violations(source: str, rel: Path) -> list[str]:
    if rel.parts[0] in OWNERS:
        return []
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        owner_name = (
            owner.attr
            if isinstance(owner, ast.Attribute)
            else owner.id
            if isinstance(owner, ast.Name)
            else ""
        )
        if node.attr == "store" or (
            node.attr in ("blobs", "meta") and owner_name in ("control", "fragments")
        ):
            out.append(f"{rel}:{node.lineno} touches .{node.attr}")
    return out


def _sources() -> list[tuple[Path, str]]:
    return [(p.relative_to(SRC), p.read_text()) for p in sorted(SRC.rglob("*.py"))]


def test_only_control_and_the_composition_root_import_the_store() -> None:
    sources = _sources()
    assert len(sources) > 50
    violations = [v for rel, text in sources for v in store_import_violations(text, rel)]
    assert violations == []


def test_nobody_outside_control_reaches_the_backends() -> None:
    violations = [v for rel, text in _sources() for v in backend_attribute_violations(text, rel)]
    assert violations == []


def test_store_base_holds_interfaces_not_records() -> None:
    tree = ast.parse((SRC / "store" / "base.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"MetadataStore", "BlobStore"} <= names
    assert not names & {"Channel", "Stream", "Fragment"}


def test_the_checks_catch_what_they_are_for() -> None:
    rel = Path("dataplane/getmedia.py")
    assert store_import_violations("from ..store.base import BlobNotFound\n", rel) == [
        "dataplane/getmedia.py:1 imports openkvs.store.base"
    ]
    assert store_import_violations("from .. import store\n", rel) == [
        "dataplane/getmedia.py:1 imports openkvs.store"
    ]
    assert store_import_violations("import openkvs.store.sqlite\n", rel) != []
    assert store_import_violations("from ..records import Stream\n", rel) == []
    assert store_import_violations("from ..store.fs import FsBlobStore\n", Path("app.py")) == []
    workers = Path("webrtc/workers.py")
    assert store_import_violations("from ..store.factory import blob_store\n", workers) == []
    assert store_import_violations("from ..store.fs import FsBlobStore\n", workers) != []
    assert store_import_violations("from ..store.base import X\n", Path("control/x.py")) == []
    assert backend_attribute_violations("plane.control.store.stream_by_id(1)\n", rel) == [
        "dataplane/getmedia.py:1 touches .store"
    ]
    assert backend_attribute_violations("services.control.blobs.keys()\n", rel) != []
    assert backend_attribute_violations("self.fragments.meta\n", rel) != []
    assert backend_attribute_violations("plane.control.stream_by_id(1)\n", rel) == []
    assert backend_attribute_violations("self.store.x\n", Path("control/resources.py")) == []
