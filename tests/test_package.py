"""The package's shape: public names, lazy subpackages, and the layering rule.

Layers, lowest first: transforms (masks, penalties, transforms, proximal, schedules, plateau)
-> nn -> data -> train (with models) -> cli and plots. A module may import only its own layer
or lower ones; the library never imports the CLI.
"""
import ast
import subprocess
import sys
from pathlib import Path

import jaxreg

PACKAGE = Path(jaxreg.__file__).parent

LAYER = {
    "_checks": 0, "_extras": 0, "masks": 0, "penalties": 0, "transforms": 0, "proximal": 0,
    "schedules": 0, "plateau": 0, "nn": 1, "data": 2, "models": 3, "train": 3, "plots": 4,
    "cli": 5, "__main__": 5,
}


def layer_of(module: str) -> int:
    """``jaxreg.train.fit`` -> layer of ``train``."""
    return LAYER[module.split(".")[1]]


def jaxreg_imports(path: Path) -> set[str]:
    names = set()
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
