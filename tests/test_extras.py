"""``pip install .[gpu]`` can run the torch backend: every third-party module the backend imports at
module level (following our own modules it imports) belongs to a distribution listed in the base
dependencies or the ``gpu`` extra of pyproject.toml."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from engine.assets import REPO_ROOT

OURS = ("engine", "plugins", "training", "calibration")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _module_path(module: str):
    base = REPO_ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def third_party_imports(root: str) -> set[str]:
    """Top-level names of the non-stdlib, non-project modules ``root`` imports at module level, transitively
    through the project modules it imports (function-level imports are optional paths, not followed)."""
    seen, todo, found = set(), [root], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(_module_path(module).read_text())
        for node in tree.body:
            for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
                names = ([a.name for a in sub.names] if isinstance(sub, ast.Import)
                         else [sub.module] if isinstance(sub, ast.ImportFrom) and sub.module and not sub.level else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in OURS:
                        # a package's __init__ runs first, then the module itself
                        parts = name.split(".")
                        todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_path(".".join(parts[:i])).is_file()]
                    elif top not in sys.stdlib_module_names and top != "__future__":
                        found.add(top)
    return found


def test_gpu_extra_covers_the_torch_backend():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    allowed = _requirement_names(project["dependencies"]) | _requirement_names(project["optional-dependencies"]["gpu"])
    dists = packages_distributions()
    imports = third_party_imports("plugins.landmarks.backends.torch_backend")
    assert {"torch", "timm", "safetensors"} <= imports
    missing = {name: dists.get(name, [name]) for name in imports
               if not any(_normalise(d) in allowed for d in dists.get(name, [name]))}
    assert not missing, f"the torch backend imports {missing}, not in the dependencies or the gpu extra"
