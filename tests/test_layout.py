"""The test tree mirrors the package: ``tests/<package>/test_<module>.py`` for each
``jaxreg/<package>/``, repo-wide checks at the top, shared helpers in ``tests/helpers.py``.
Test modules never import each other (a helper two tests share belongs in ``helpers.py``)."""
import ast
from pathlib import Path

import jaxreg

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(jaxreg.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth; ``from a import b`` gives ``a.b``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another():
    offenders = {
        f"{path.relative_to(TESTS)}: {name}"
        for path in TESTS.rglob("test_*.py")
        for name in imported_modules(path)
        if name.split(".")[-1].startswith("test_") or name.split(".")[0] in ("conftest",)
    }
    assert not offenders, sorted(offenders)


def test_every_test_folder_mirrors_a_package_folder():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders - {"programs"} <= packages, sorted(folders - packages)
    assert {"transforms", "batchnorm", "train", "cli", "data"} <= folders
