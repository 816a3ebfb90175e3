"""The harness, in sub-packages by layer (docs/architecture.md).

The modules that moved into the sub-packages keep their old import paths as aliases of the new
ones (`import harness.config` is `harness.core.config`, `from harness import names` is
`harness.core.names`), for code written against them; `harness.model`, `harness.tracking` and
`harness.tasks` are packages that re-export their main module's names.
"""
import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "harness.config": "harness.core.config", "harness.values": "harness.core.values",
    "harness.names": "harness.core.names", "harness.launch_config": "harness.core.launch_config",
    "harness.plugins": "harness.core.plugins", "harness.handout_tasks": "harness.tasks.handout",
    "harness.metrics": "harness.tasks.metrics", "harness.sampler": "harness.tasks.sampler",
    "harness.params": "harness.model.params", "harness.data": "harness.training.data",
    "harness.optim": "harness.training.optim", "harness.distributed": "harness.training.distributed",
    "harness.checkpoint": "harness.training.checkpoint", "harness.evaluation": "harness.training.evaluation",
    "harness.quora_split": "harness.training.quora_split", "harness.power": "harness.analysis.power",
    "harness.train": "harness.runs.train", "harness.trained": "harness.runs.trained",
    "harness.export": "harness.runs.export", "harness.mlflow_model": "harness.runs.mlflow_model",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and gives the module it moved to (one module object, two names)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())  # before path finders: an old file left behind is not used
