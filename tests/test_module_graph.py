"""The house rules of the module graph, read from the sources' import statements (deferred imports inside
functions included): no import cycle between our modules, the foundation rooms (datapipe, degrade) import no
other room (but the shared config idiom, ``supirkit.datapipe.config``), and no room but the CLI imports the
CLI."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("datapipe", "degrade", "curation", "captioning", "negatives", "model", "train", "inspection", "metrics",
         "evaluation", "configs", "supirkit")
FOUNDATIONS = ("datapipe", "degrade")
#: what a foundation may use of the other: the one config idiom (schema base, YAML loading, overrides)
SHARED_BY_FOUNDATIONS = ("supirkit.datapipe.config",)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "supirkit":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["supirkit", *parts])


def _graph() -> dict[str, set[str]]:
    modules = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            if "__pycache__" not in path.parts:
                modules[_module_name(path)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # ``from pkg import submodule`` needs the submodule; ``from pkg import name`` needs pkg itself
                targets = subs + ([base] if any(s not in modules for s in subs) else [])
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "supirkit"


def test_no_import_cycle_between_our_modules():
    import graphlib

    graph = _graph()
    assert len(graph) > 100
    # top-level imports only: a deferred import may close a loop at run time without a cycle at import time,
    # but the rooms are meant to be layered either way, so every import counts here
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_foundations_import_no_other_room_and_only_the_cli_imports_the_cli():
    for module, deps in _graph().items():
        room = _room(module)
        for dep in deps:
            if room in FOUNDATIONS:
                assert _room(dep) in (room, "configs") or dep in ("supirkit", *SHARED_BY_FOUNDATIONS), (module, dep)
            if _room(dep) == "supirkit" and dep != "supirkit" and room != "supirkit":
                assert not dep.startswith("supirkit.commands") and dep != "supirkit.cli", (module, dep)
