"""The package's shape: public names, lazy subpackages, and the layering rule.

Layers, lowest first, one folder each: ``_validate`` (argument checks) -> ``transforms`` (the
optax layer: masks, penalties, regularizers, proximal, schedules, plateau) -> ``nn`` -> ``data``
-> ``train`` (with models) -> ``cli`` (with plots). A module may import only its own layer or
lower ones; the library never imports the CLI.
"""
import ast
import subprocess
import sys
from pathlib import Path

import jaxreg

PACKAGE = Path(jaxreg.__file__).parent

LAYER = {"_validate": 0, "_extras": 0, "transforms": 1, "nn": 2, "nnx": 2, "data": 3, "train": 4,
         "cli": 5, "__main__": 5}


def layer_of(module: str) -> int:
    """``jaxreg.train.fit`` -> layer of ``train``."""
    return LAYER[module.split(".")[1]]


def jaxreg_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("jaxreg."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxreg"):
            if node.module == "jaxreg":  # from jaxreg import masks
                names.update(f"jaxreg.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return names


def test_no_module_imports_a_higher_layer():
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        if module in ("jaxreg.__init__",):
            continue
        own = layer_of(module.removesuffix(".__init__"))
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
    packages = [jaxreg, jaxreg.transforms, jaxreg.nn, jaxreg.data, jaxreg.train, jaxreg.cli]
    for package in packages:
        assert package.__all__, package.__name__
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"


def test_old_top_level_names_still_resolve():
    assert jaxreg.masks is jaxreg.transforms.masks
    assert jaxreg.models.SeedMLP is jaxreg.train.models.SeedMLP
    assert jaxreg.plots.plot_history is jaxreg.cli.plots.plot_history


def test_public_transforms_are_exported():
    for name in ("add_l2", "add_l1", "batch_scaled_l2", "data_scaled_l1", "data_scaled_l2",
                 "proximal_l1", "proximal_elastic_net", "reduce_on_plateau"):
        assert callable(getattr(jaxreg, name)), name
    assert jaxreg.nn.BatchNorm.__module__ == "jaxreg.nn.normalization"
    assert callable(jaxreg.train.fit) and callable(jaxreg.data.load)


def test_importing_jaxreg_does_not_import_the_higher_layers():
    code = ("import sys, jaxreg; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('orbax', 'matplotlib') or "
            "m.startswith(('jaxreg.train', 'jaxreg.cli', 'flax.linen'))];"
            "print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
