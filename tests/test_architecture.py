"""The layers of docs/architecture.md, checked: a module imports only from its own layer or the
layers below it (imports inside functions count too), and no two modules import each other at
module level."""
import ast
import itertools
from pathlib import Path

import pytest
from conftest import REPO

# Lowest first. A module not listed here fails the test: give it a layer (and a line in docs/architecture.md).
LAYERS = {
    "foundation": ["harness.values", "harness.names", "harness.launch_config", "harness.plugins", "harness.metrics",
                   "harness.sampler", "harness.tasks", "harness.handout_tasks", "harness.config"],
    "variants": ["variants"],
    "parts": ["harness.model", "harness.data", "harness.params", "harness.optim", "harness.distributed",
              "harness.checkpoint", "harness.tracking", "harness.evaluation"],
    "runs": ["harness.train", "harness.trained", "harness.compare", "harness.quora_split", "harness.sweeps"],
    "cli": ["harness.cli"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS.values()):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} has no layer in tests/test_architecture.py LAYERS")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            file = REPO / name.replace(".", "/")
            if name.split(".")[0] in ("harness", "variants") and name != "harness" and (
                    file.with_suffix(".py").exists() or (file / "__init__.py").exists()):
                out.append((name, id(node) in top))
    return out


SOURCES = sorted(p for p in [*REPO.glob("harness/**/*.py"), *REPO.glob("variants/**/*.py")]
                 if p != REPO / "harness" / "__init__.py")  # the namespace only


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_imports_only_from_its_own_layer_or_below(path):
    module = module_name(path)
    mine = layer_of(module)
    upward = [name for name, _ in imports(path) if layer_of(name) > mine]
    assert not upward, f"{module} ({list(LAYERS)[mine]}) imports {upward} from a higher layer"


def test_sweeps_reach_training_only_through_a_launched_process():
    for path in REPO.glob("harness/sweeps/**/*.py"):
        assert not [n for n, _ in imports(path) if n.startswith(("harness.train", "harness.model"))], path


def test_no_two_modules_import_each_other_at_module_level():
    graph = {module_name(p): {n for n, top in imports(p) if top} for p in SOURCES}
    for a, b in itertools.combinations(graph, 2):
        assert not (b in graph[a] and a in graph[b]), f"{a} <-> {b}"
