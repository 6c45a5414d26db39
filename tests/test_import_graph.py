"""Layering (docs/DESIGN.md "Layers"): the import graph of the four top-level packages, read with ``ast``
(imports inside functions count too: they run as soon as the function does).

engine imports neither plugins nor training (plugins reach it through entry points); calibration does not
import training; plugins do not import training or calibration; no cycle between the top-level packages;
the batch job calls the Ray job, never the other way round."""

import ast
from pathlib import Path

from engine.assets import REPO_ROOT

PACKAGES = ("engine", "plugins", "training", "calibration")
FORBIDDEN = {"engine": {"plugins", "training", "calibration"}, "plugins": {"training", "calibration"},
             "calibration": {"training"}}


def module_imports() -> dict[str, set[str]]:
    """module name -> the modules of our packages it imports (absolute names)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_init else parts)
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:  # relative: resolve against this module's package
                        base = name.split(".") if is_init else name.split(".")[:-1]
                        base = base[: len(base) - node.level + 1]
                        module = ".".join(base + ([node.module] if node.module else []))
                    else:
                        module = node.module or ""
                    targets.add(module)
            graph[name] = {t for t in targets if t.split(".")[0] in PACKAGES}
    return graph


def test_forbidden_imports():
    bad = sorted((m, t) for m, targets in module_imports().items() for t in targets
                 if t.split(".")[0] in FORBIDDEN.get(m.split(".")[0], ()))
    assert not bad, "imports against the layering:\n" + "\n".join(f"{m} -> {t}" for m, t in bad)


def test_no_cycle_between_top_level_packages():
    edges = {(m.split(".")[0], t.split(".")[0]) for m, ts in module_imports().items() for t in ts}
    edges = {(a, b) for a, b in edges if a != b}
    order: list[str] = []  # topological sort: a package is placed once everything it imports is
    remaining = set(PACKAGES)
    while remaining:
        ready = [p for p in sorted(remaining) if not any((p, q) in edges for q in remaining if q != p)]
        assert ready, f"import cycle among {sorted(remaining)}: {sorted(e for e in edges if set(e) <= remaining)}"
        order += ready
        remaining -= set(ready)
    assert order[0] == "engine"


def test_batch_job_and_ray_job_import_in_one_direction():
    graph = module_imports()
    assert "engine.batch.ray_job" in graph["engine.batch.job"]
    assert "engine.batch.job" not in graph["engine.batch.ray_job"]
