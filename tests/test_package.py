"""The package's shape: public names, lazy subpackages, and the layering rule.

Layers, lowest first, one folder each: ``_validate`` (argument checks) -> ``transforms`` (the
optax layer: masks, penalties, regularizers, proximal, schedules, plateau) -> ``batchnorm``
-> ``nn``, ``nnx`` (its public faces) -> ``models``, ``data`` -> ``train`` -> ``cli`` (with
plots). A module may import only its own layer or lower ones; the library never imports the
CLI; and no module imports itself through a cycle.
"""
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import jaxreg

PACKAGE = Path(jaxreg.__file__).parent

LAYER = {"_validate": 0, "_extras": 0, "transforms": 1, "batchnorm": 2, "nn": 3, "nnx": 3,
         "models": 4, "data": 4, "train": 5, "cli": 6, "__main__": 6}


def layer_of(module: str) -> int:
    """``jaxreg.train.fit`` -> layer of ``train``."""
    return LAYER[module.split(".")[1]]


def module_name(path: Path) -> str:
    """``.../jaxreg/train/fit.py`` -> ``jaxreg.train.fit``; a package is its ``__init__``."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__")


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def jaxreg_imports(path: Path) -> set[str]:
    """The jaxreg modules ``path`` imports, at any depth of its code: ``from a import b`` is
    module ``a.b`` when that is a module, else ``a``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("jaxreg."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxreg"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                names.add(sub if sub in MODULES else node.module)
    return names


def test_the_import_graph_is_acyclic():
    """Importing ``a.b.c`` from outside package ``a.b`` runs ``a.b``'s ``__init__`` first, so
    the edges go to the module and to each package on its path that the importer is not in."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if path.name == "__init__.py":
            parents.add(module)
        graph[module] = set()
        for imported in jaxreg_imports(path):
            parts = imported.split(".")
            graph[module] |= {p for p in (".".join(parts[:i]) for i in range(2, len(parts) + 1))
                              if p not in parents and p != module}
    done: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, "import cycle: " + " -> ".join((*stack, module))
        if module not in done:
            for imported in sorted(graph.get(module, ())):
                visit(imported, (*stack, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert len(done) > 40 and {"jaxreg.nn", "jaxreg.nnx", "jaxreg.batchnorm.tools"} <= done


def test_no_module_imports_a_higher_layer():
    checked = 0
    for module, path in MODULES.items():
        if module == "jaxreg":
            continue
        own = layer_of(module)
        for imported in jaxreg_imports(path):
            assert layer_of(imported) <= own, f"{module} (layer {own}) imports {imported}"
        checked += 1
    assert checked > 20


def test_the_top_level_holds_only_the_layers():
    entries = {
        p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert entries == {"__init__", *LAYER}


def test_every_public_package_declares_all():
    packages = [jaxreg, jaxreg.transforms, jaxreg.nn, jaxreg.nnx, jaxreg.models, jaxreg.data,
                jaxreg.train, jaxreg.cli]
    for package in packages:
        assert package.__all__, package.__name__
        assert len(set(package.__all__)) == len(package.__all__), package.__name__
        for name in package.__all__:  # each name is jaxreg's own, not a re-exported third party's
            value = getattr(package, name)
            home = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            assert home is None or home.startswith("jaxreg"), f"{package.__name__}.{name}: {home}"


def test_old_top_level_names_still_resolve():
    assert jaxreg.masks is jaxreg.transforms.masks
    assert jaxreg.models.SeedMLP is jaxreg.models.linen.SeedMLP
    assert jaxreg.plots.plot_history is jaxreg.cli.plots.plot_history


def test_public_transforms_are_exported():
    for name in ("add_l2", "add_l1", "batch_scaled_l2", "data_scaled_l1", "data_scaled_l2",
                 "proximal_l1", "proximal_elastic_net", "reduce_on_plateau"):
        transform = getattr(jaxreg, name)
        assert transform is getattr(jaxreg.transforms, name), name
        assert transform.__module__.startswith("jaxreg.transforms."), (name, transform.__module__)
    assert jaxreg.nn.BatchNorm.__module__ == "jaxreg.batchnorm.linen"
    assert jaxreg.nnx.BatchNorm.__module__ == "jaxreg.batchnorm.nnx"
    assert jaxreg.train.fit.__module__ == "jaxreg.train.fit"
    assert jaxreg.data.load.__module__ == "jaxreg.data"


def test_importing_jaxreg_does_not_import_the_higher_layers():
    code = ("import sys, jaxreg; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('orbax', 'matplotlib') or "
            "m.startswith(('jaxreg.train', 'jaxreg.cli', 'flax.linen'))];"
            "print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nn_functional_is_the_batchnorm_core_under_both_import_forms():
    import jaxreg.batchnorm.core
    import jaxreg.nn.functional
    from jaxreg.nn import functional

    assert jaxreg.nn.functional is functional is jaxreg.batchnorm.core


def test_each_face_imports_first_in_a_fresh_interpreter():
    """The modules that formed the old cycle (nn -> batch_stats -> nnx -> nn), each first."""
    for module in ("jaxreg.batchnorm.tools", "jaxreg.nnx", "jaxreg.nn.functional",
                   "jaxreg.models.nnx"):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                                text=True)
        assert result.returncode == 0, f"{module}: {result.stderr}"
