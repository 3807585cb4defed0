"""Write the intersphinx inventories of jax, flax (NNX and linen sites) and optax, read from
their documentation sources, and of numpy, from its public names.

Usage (from a clone, with jax, flax, optax and numpy installed)::

    python docs/_inv/make_inventories.py --jax ~/src/jax --flax ~/src/flax --optax ~/src/optax

Each ``--NAME`` is a checkout of that project. Its API pages (``.rst``) say which page
documents which name: ``autosummary`` with ``:toctree: DIR`` (one page per name under DIR),
``autofunction``/``autoclass``/``autodata``/``automodule`` and flax's ``flax_module`` (an
anchor on the page). Each name is imported from the installed package to know its kind
(class, function, data, module) and a class's public methods. numpy's pages follow one rule
(``reference/generated/numpy.NAME.html``). The files are Sphinx's inventory format (version 2).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import zlib
from pathlib import Path

from sphinx.ext.autosummary import ImportExceptionGroup, import_by_name

HERE = Path(__file__).resolve().parent
# Each inventory: its name, the project's version label, and its API source folders
# (relative to the checkout) with the folder their pages are published from.
SITES = {
    "jax": ("jax", ["docs"], "docs"),
    "flax": ("flax", ["docs_nnx/api_reference"], "docs_nnx"),
    "flax_linen": ("flax", ["docs/api_reference"], "docs"),
    "optax": ("optax", ["docs/api"], "docs"),
}
DIRECTIVE = re.compile(r"^\.\. (auto\w+|currentmodule|module|flax_module)::\s*(\S*)")
OPTION = re.compile(r"^\s+:(\w+):\s*(\S+)")


def resolve(name: str):
    """The installed object named ``name`` (``pkg.mod.attr``), or None."""
    try:
        return import_by_name(name)[1]
    except (ImportError, ImportExceptionGroup):  # a name this installation does not have
        return None


def entries(name: str, uri: str):
    """Inventory lines for ``name`` documented at ``uri`` (a class adds its public methods)."""
    obj = resolve(name)
    if obj is None:
        return []
    if inspect.ismodule(obj):
        return [(name, "py:module", uri.split("#")[0])]
    if inspect.isclass(obj):
        role = "py:exception" if issubclass(obj, BaseException) else "py:class"
        page = uri.split("#")[0]
        methods = [(f"{name}.{m}", "py:method", f"{page}#{name}.{m}") for m, v in vars(obj).items()
                   if not m.startswith("_") and callable(v)]
        return [(name, role, uri), *methods]
    return [(name, "py:function" if callable(obj) else "py:data", uri)]


def scan(page: Path, docname: str):
    """The (name, uri) pairs that one ``.rst`` API page documents."""
    module, lines, found = "", page.read_text(encoding="utf-8").splitlines(), []
    html = f"{docname}.html"
    for i, line in enumerate(lines):
        match = DIRECTIVE.match(line)
        if not match:
            continue
        kind, arg = match.groups()
        options = {}
        for follow in lines[i + 1:]:
            opt = OPTION.match(follow)
            if not opt:
                break
            options[opt.group(1)] = opt.group(2)
        if kind in ("currentmodule", "module", "automodule"):
            module = arg
            found.append((arg, html))
        elif kind == "flax_module":
            full = f"{options['module']}.{options['class']}"
            found.append((full, f"{html}#{full}"))
        elif kind == "autosummary":
            toctree = options.get("toctree")
            for item in lines[i + 1:]:
                if item.strip() and not item.startswith(" "):
                    break
                item = item.strip()
                if not item or item.startswith(":"):
                    continue
                full = item if item.startswith(module + ".") or not module else f"{module}.{item}"
                folder = str(Path(docname).parent / toctree.rstrip("/")) if toctree else ""
                target = f"{folder.lstrip('./')}/{full}.html" if toctree else html
                found.append((full, f"{target}#{full}"))
        elif arg:
            full = arg if "." in arg and arg.split(".")[0] in ("jax", "flax", "optax") else (
                f"{module}.{arg}" if module else arg)
            found.append((full, f"{html}#{full}"))
    return found


def site_entries(checkout: Path, folders: list[str], root: str):
    """Every documented name of one site, with its kind and page."""
    rows: dict = {}
    for folder in folders:
        for page in sorted((checkout / folder).rglob("*.rst")):
            docname = page.relative_to(checkout / root).with_suffix("").as_posix()
            for name, uri in scan(page, docname):
                documented, *methods = entries(name, uri) or [None]
                if documented:  # a name's own entry wins over a method guessed from its class
                    rows[documented[0]] = documented
                    for method in methods:
                        rows.setdefault(method[0], method)
    for name, role, uri in list(rows.values()):  # `optax.X` for `optax.schedules.X`, re-exported
        parts = name.split(".")
        alias = f"{parts[0]}.{parts[-1]}"
        if len(parts) > 2 and alias not in rows and role != "py:method":
            obj = resolve(name)
            if obj is not None and resolve(alias) is obj:
                rows[alias] = (alias, role, uri)
    return sorted(rows.values())


def numpy_entries():
    """numpy's public names: ``reference/generated/numpy.NAME.html`` (scalar types elsewhere)."""
    import numpy as np

    rows = [("numpy", "py:module", "reference/index.html")]
    for name in sorted(n for n in dir(np) if not n.startswith("_")):
        obj, full = getattr(np, name), f"numpy.{name}"
        if inspect.isclass(obj) and issubclass(obj, np.generic):
            rows.append((full, "py:class", f"reference/arrays.scalars.html#{full}"))
        elif inspect.isclass(obj):
            rows.append((full, "py:class", f"reference/generated/{full}.html#{full}"))
        elif callable(obj):
            rows.append((full, "py:function", f"reference/generated/{full}.html#{full}"))
    return rows


def write(path: Path, project: str, version: str, rows) -> None:
    """Sphinx's objects.inv (version 2): a text header, then zlib-compressed lines."""
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n")
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in rows)
    path.write_bytes(header.encode() + zlib.compress(body.encode()))
    print(f"{path.name}: {len(rows)} names")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("jax", "flax", "optax"):
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"a {name} checkout")
    args = parser.parse_args()
    for inv, (package, folders, root) in SITES.items():
        version = importlib.import_module(package).__version__
        write(HERE / f"{inv}.inv", package, version,
              site_entries(getattr(args, package), folders, root))
    import numpy as np

    write(HERE / "numpy.inv", "numpy", np.__version__, numpy_entries())


if __name__ == "__main__":
    main()
