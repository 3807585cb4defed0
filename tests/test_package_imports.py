"""No module of jaxreg imports another module's private (``_name``) names: parsed with
``ast``, every ``import`` and every attribute of an imported jaxreg module is checked. A private
module (``jaxreg.train._inputs``) may be imported inside the package that holds it."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import jaxreg

ROOT = Path(jaxreg.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_use(importer: str, module: str, name: str | None) -> str | None:
    """What is private about using ``module`` (``.name``) from ``importer``, or ``None``."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            package = ".".join(parts[:i])  # the private module's package
            if not (importer == package or importer.startswith(package + ".")):
                return f"private module {'.'.join(parts[:i + 1])}"
    if name is not None and name.startswith("_") and not name.startswith("__"):
        return f"private name {module}.{name}"
    return None


def private_imports(path: Path) -> list[str]:
    """``"file:line: what"`` for each use of another module's private name in ``path``."""
    importer = _module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        uses: list[tuple[str, str | None]] = []
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.split(".")[0] == "jaxreg":
                uses = [(base, a.name) for a in node.names]
                aliases.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names})
        else:
            uses = [(a.name, None) for a in node.names if a.name.split(".")[0] == "jaxreg"]
            aliases.update({a.asname: a.name for a in node.names if a.asname})
        for module, name in uses:
            if (why := _private_use(importer, module, name)) is not None:
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {why}")
    for node in ast.walk(tree):  # jaxreg_module._name
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: private name "
                         f"{aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [line for path in sorted(ROOT.rglob("*.py")) for line in private_imports(path)]
    assert found == []


def test_the_check_finds_private_names(tmp_path, monkeypatch):
    """The check itself: a private name, a private module of another package, an attribute."""
    package = tmp_path / "jaxreg" / "cli"
    package.mkdir(parents=True)
    source = ("from jaxreg.train.fit import _split_data\n"
              "from jaxreg.train._inputs import check_fit_inputs\n"
              "from jaxreg.cli._common import read_config\n"
              "from jaxreg.train import optimizer\n"
              "optimizer._plateau_scale\n")
    (package / "mod.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / "jaxreg")
    assert [line.split(": ", 1)[1] for line in private_imports(package / "mod.py")] == [
        "private name jaxreg.train.fit._split_data",
        "private module jaxreg.train._inputs",
        "private name jaxreg.train.optimizer._plateau_scale",
    ]
