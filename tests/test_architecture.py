"""The layers of docs/architecture.md, checked: a module imports only from its own layer or the
layers below it (imports inside functions count too, relative ones resolved), and no two modules
import each other at module level."""
import ast
import itertools
from pathlib import Path

import pytest
from conftest import REPO

# Lowest first: each layer is packages (and the odd module), and every module of harness/ lies in a
# sub-package but harness/testing.py. A module not under one of these fails the test: put it in a
# package of its layer (and name it in docs/architecture.md's where-is-what table).
LAYERS = {
    "foundation": ["harness.core", "harness.tasks"],
    "variants": ["variants"],
    "parts": ["harness.model", "harness.training", "harness.tracking"],
    "runs": ["harness.runs", "harness.analysis", "harness.sweeps"],
    "cli": ["harness.cli", "harness.testing"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS.values()):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} has no layer in tests/test_architecture.py LAYERS")


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a `from ... import` reads from, relative ones (`from ..train import x`) resolved
    against the importing module (a package's __init__ is its own package)."""
    if not node.level:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(package):
        raise AssertionError(f"{module}: relative import beyond the top-level package (level {node.level})")
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path, source: str | None = None) -> list[tuple[str, bool]]:
    """(imported project module, at module level) for every import in the file (or in `source`,
    read as that file's text): absolute or relative, at module level or inside a function."""
    tree = ast.parse(path.read_text() if source is None else source)
    module = module_name(path)
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = absolute(node, module, path.name == "__init__.py")
            names = [base] + [f"{base}.{a.name}" for a in node.names]
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


def test_the_layers_are_packages_and_every_module_lies_in_one():
    """harness/ is sub-packages (one layer each), not flat modules: the only module directly under
    harness/ is testing.py (the test support), and no layer names a module of a package another
    entry already covers."""
    flat = sorted(p.name for p in (REPO / "harness").glob("*.py") if p.name not in ("__init__.py", "testing.py"))
    assert not flat, f"modules directly under harness/: {flat}; put each in the sub-package of its layer"
    entries = [e for prefixes in LAYERS.values() for e in prefixes]
    for entry in entries:
        assert entry in ("variants", "harness.testing") or (REPO / entry.replace(".", "/") / "__init__.py").exists(), \
            f"{entry}: a layer lists packages"
    packages = {module_name(p).split(".")[1] for p in SOURCES if module_name(p).startswith("harness.")}
    assert packages == {e.split(".")[1] for e in entries if e.startswith("harness.")}


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"


def test_the_layout_table_of_docs_architecture_names_every_module():
    """docs/architecture.md's module-by-module table (package, module) covers every module of harness/."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `(harness(?:/[a-z_]+)*)/` \| `([a-z_]+\.py|[a-z_]+/)` \|", text, re.M))
    listed = {f"{package}/{module}" for package, module in rows}
    missing = [str(p.relative_to(REPO)) for p in SOURCES if p.parts[len(REPO.parts)] == "harness"
               and p.name != "__init__.py" and str(p.relative_to(REPO)) not in listed
               and str(p.parent.relative_to(REPO)) + "/" not in listed]  # a folder's row: all of it
    assert not missing, f"not in docs/architecture.md's layout table: {missing}"


def test_sweeps_reach_training_only_through_a_launched_process():
    for path in REPO.glob("harness/sweeps/**/*.py"):
        assert not [n for n, _ in imports(path) if n.startswith(("harness.runs", "harness.model"))], path


def test_the_import_check_resolves_relative_imports_and_sees_imports_inside_functions():
    """What the two rules above read: a relative import is the module it names, wherever it stands."""
    source = ("from .spec import Job\nfrom . import search\n"
              "def run():\n    from ..runs.train import train\n    from .. import model\n    import harness.analysis\n")
    found = imports(REPO / "harness" / "sweeps" / "run.py", source)
    assert set(found) >= {("harness.sweeps.spec", True), ("harness.sweeps.search", True), ("harness.runs.train", False),
                          ("harness.model", False), ("harness.analysis", False)}
    package = imports(REPO / "harness" / "sweeps" / "__init__.py",
                      "from .run import run_sweep\nfrom ..cli import main\n")
    assert {"harness.sweeps.run", "harness.cli"} <= {name for name, _ in package}
    assert layer_of("harness.cli") > layer_of("harness.sweeps")  # the layer rule would refuse that one


def test_no_two_modules_import_each_other_not_even_inside_a_function():
    """A circle hidden in a function (tasks.py once imported handout_tasks.py lazily, which imports
    tasks.py) is a circle too."""
    graph = {module_name(p): {n for n, _ in imports(p)} for p in SOURCES}
    for a, b in itertools.combinations(graph, 2):
        assert not (b in graph[a] and a in graph[b]), f"{a} <-> {b}"


def test_generic_code_names_no_task_of_the_handout():
    """The handout's tasks and their groups live in harness/tasks/handout.py (and the tool that splits the
    bundled Quora file); everything else reads a task's spec or a group."""
    from harness.tasks.handout import HANDOUT_TASKS

    allowed = {REPO / "harness" / "tasks" / "handout.py", REPO / "harness" / "training" / "quora_split.py"}
    for path in SOURCES:
        if path in allowed:
            continue
        strings = [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)]
        named = sorted({t for t in HANDOUT_TASKS for text in strings if text == t or f'"{t}"' in text})
        assert not named, f"{path.relative_to(REPO)} names the handout task(s) {named}"
    imported = [module_name(p) for p in SOURCES if p not in allowed
                and any(n.startswith("harness.tasks.handout") for n, _ in imports(p))]
    assert not imported, f"{imported} import harness.tasks.handout"
