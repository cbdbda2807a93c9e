"""The package's layering, read from its source: which module may import which heavy library, which layer may
import which, and no import cycle. Lazy imports (inside functions) count too, except for the cycle rule, where
only imports at module level make a cycle at import time. docs/design.md has the module map these rules keep."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imgsearch"

# Each heavy library has one owner (a module or a subpackage): the one place that knows its API and its quirks.
OWNERS = {
    "torch": ("clip",),
    "open_clip": ("clip",),
    "transformers": ("clip",),
    "sqlalchemy": ("storage.store", "storage.tables"),
    "faiss": ("storage.vector_index",),
    "onnxruntime": ("inference.onnx",),
    "openvino": ("inference.openvino",),
    "tokenizers": ("inference.tokenizer",),
    "rawpy": ("raw",),
    "pillow_heif": ("images",),
    "watchdog": ("watching",),
    "av": ("video",),
    "fastapi": ("server",),
    "starlette": ("server",),
    "uvicorn": ("server",),
    "ray": ("distributed",),
}

# Lower layers never import the layers above them.
NEVER = {
    "inference": ("clip", "api", "cli", "server", "indexing"),
    "storage": ("api", "cli", "server", "clip", "inference", "search", "indexing", "evaluation"),
    "search": ("api", "cli", "server", "clip", "indexing"),
    "config": ("*",),
    "errors": ("*",),
    "records": ("*",),
    "results": ("*",),
}
# ...except these: results may name the error type and config's frozen classes; records the results' records
# and config's lists of file extensions.
ALLOWED_LEAF_IMPORTS = {
    "config": {"errors"},
    "results": {"errors"},
    "records": {"errors", "results", "config"},
    "errors": set(),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache  # read once: every relative import is resolved against it
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str, top_level_only: bool = False) -> set[str]:
    """Absolute names imported, with package-relative ones written without the ``imgsearch.`` prefix and marked
    by a leading ``.``: ``.storage.store``, ``torch``."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in _flatten(nodes) if top_level_only else nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
                if base == "imgsearch" or base.startswith("imgsearch."):
                    base = "." + base[len("imgsearch.") :] if base != "imgsearch" else "."
                    found.update(_within(base, node))
                else:
                    found.add(base)
                continue
            anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            base = ".".join(anchor + ([node.module] if node.module else []))
            found.update(_within("." + base, node))
    return found


def _within(base: str, node: ast.ImportFrom) -> set[str]:
    """``from .x import y``: ``.x.y`` where y is a module, else ``.x`` (resolved against the real files)."""
    modules = _modules()
    names = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}".replace("..", ".")
        names.add(candidate if candidate.lstrip(".") in modules else base)
    return names


def _flatten(body):
    """Module-level statements, looking inside ``if``/``try`` blocks but not functions, classes' methods, or
    ``if TYPE_CHECKING:`` blocks (which never run)."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            yield from _flatten(node.body)
            yield from _flatten(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                yield from _flatten(handler.body)
            continue
        yield node


def _under(module: str, owner: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def _all_imports() -> dict[str, set[str]]:
    return {name: _imports(path, name) for name, path in _modules().items()}


def test_each_heavy_library_is_imported_by_its_owner_only():
    wrong = []
    for module, imports in _all_imports().items():
        for imported in imports:
            top = imported.split(".")[0]
            if top in OWNERS and not any(_under(module, owner) for owner in OWNERS[top]):
                wrong.append(f"{module} imports {imported} (owned by {', '.join(OWNERS[top])})")
    assert not wrong, "\n".join(wrong)


def test_lower_layers_never_import_the_layers_above():
    wrong = []
    for module, imports in _all_imports().items():
        for layer, forbidden in NEVER.items():
            if not _under(module, layer):
                continue
            for imported in (i.lstrip(".") for i in imports if i.startswith(".")):
                if not imported or _under(imported, layer):
                    continue
                if forbidden == ("*",):
                    if not any(_under(imported, ok) for ok in ALLOWED_LEAF_IMPORTS.get(layer, ())):
                        wrong.append(f"{module} imports {imported}: {layer} imports nothing from the package")
                elif any(_under(imported, above) for above in forbidden):
                    wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_at_import_time():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {
            i.lstrip(".")
            for i in _imports(path, name, top_level_only=True)
            if i.startswith(".") and i.lstrip(".") in modules and i.lstrip(".") != name
        }
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt) :] + [nxt]) if nxt in trail else f"{node}->{nxt}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("rule", ["owners", "layers"])
def test_the_rules_name_real_modules(rule):
    """A rule about a module that was renamed away would pass forever."""
    modules = _modules()
    names = {o for owners in OWNERS.values() for o in owners} if rule == "owners" else set(NEVER)
    missing = [n for n in names if not any(_under(m, n) for m in modules)]
    assert not missing, missing
