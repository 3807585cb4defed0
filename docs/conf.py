"""Sphinx configuration: ``python -m sphinx -n -W -b html docs docs/_build/html`` (and
``-b doctest``). Offline: MathJax is served with the site and the intersphinx inventories are
the files in ``docs/_inv/`` (``docs/_inv/README.md`` says where each comes from)."""
import ast
import base64
import dataclasses
import functools
import importlib.util
import inspect
import json
import os
import re
import textwrap
from pathlib import Path

import flax.linen
from docutils import nodes
from flax import nnx
from sphinx.ext import intersphinx
from sphinx.ext.autodoc.preserve_defaults import update_defvalue
from sphinx.ext.autosummary import ImportExceptionGroup, import_by_name
from sphinx.util.nodes import make_refnode

import jaxreg
import jaxreg.models.nnx
import jaxreg.nnx

# The CLI reference prints the help texts, which name the cache directory: as the variable, not
# the build machine's path.
os.environ["XDG_CACHE_HOME"] = "$XDG_CACHE_HOME"

project = "jaxreg"
author = "The jaxreg developers"
copyright = "2026, The jaxreg developers"
release = version = jaxreg.__version__
REPOSITORY = "https://github.com/jaxreg/jaxreg"  # the repository link and the raw RESULTS.md

extensions = [
    "myst_nb",                # Markdown pages and the notebooks (MyST), never executed here
    "sphinx.ext.autodoc",     # API pages from the docstrings
    "sphinx.ext.autosummary",  # the API summary tables
    "sphinx.ext.napoleon",    # Google-style Args/Returns/Raises
    "sphinx.ext.doctest",     # the examples in these pages run: `-b doctest`
    "sphinx.ext.extlinks",    # {repo}`path`: a file in the repository
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinxarg.ext",          # the CLI reference, generated from jaxreg.cli.build_parser
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_inv", "jupyter_execute", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
smartquotes = False  # `--flag` stays two hyphens (not an en dash) in the CLI reference
nb_execution_mode = "off"  # the notebooks are shown with their committed outputs

# The API pages: each parameter once (types in its description), defaults as written in the
# source (`jnp.float32`, not `<class ...>`), a class's docstring alone (not its __init__'s).
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autoclass_content = "class"
toc_object_entries_show_parents = "hide"  # on-page contents: `momentum`, not `BatchNorm.momentum`
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# MathJax 3 from the sphinx-mathjax-offline package, one self-contained file (SVG output, no
# fonts to fetch): every formula renders without a network.
_SPEC = importlib.util.find_spec("sphinx-mathjax-offline")
if _SPEC is None or _SPEC.origin is None:
    raise ImportError('the docs need sphinx-mathjax-offline: pip install -e ".[docs]"')
_MATHJAX = Path(_SPEC.origin).parent / "static" / "mathjax"
mathjax_path = "tex-svg.js"

extlinks = {"repo": (f"{REPOSITORY}/blob/main/%s", "%s")}

html_theme = "sphinx_book_theme"
html_title = f"jaxreg {version}"
html_logo = "_static/logo.svg"
html_favicon = "_static/logo.svg"
html_static_path = ["_static", str(_MATHJAX / "tex-svg.js")]
html_css_files = ["custom.css"]
html_theme_options = {
    "repository_url": REPOSITORY,
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": True,
    "use_source_button": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_last_updated_fmt = ""
# The sidebar without its own search field (the header has one).
html_sidebars = {"**": ["navbar-logo.html", "icon-links.html", "sbt-sidebar-nav.html"]}

# The copy button leaves out `>>> ` / `... ` prompts and the doctests' expected output, and
# `$ ` shell prompts.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# Cross-references to the libraries jaxreg builds on, from inventories kept in docs/_inv/ (the
# build machines have no network).
_INV = Path(__file__).parent / "_inv"
intersphinx_mapping = {
    name: (url, str(_INV / f"{name}.inv"))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "jax": "https://docs.jax.dev/en/latest/",
        "flax": "https://flax.readthedocs.io/en/latest/",  # NNX
        "flax_linen": "https://flax-linen.readthedocs.io/en/latest/",
        "optax": "https://optax.readthedocs.io/en/latest/",
    }.items()
}

# Type hints name the classes where they are defined, or as their module imports them (string
# annotations); the documentation knows them by their public names.
PUBLIC_NAMES = {
    "Array": "jax.Array",
    "nnx.Rngs": "flax.nnx.Rngs",
    "jax.jaxlib._jax.Array": "jax.Array",
    "jaxlib._jax.Array": "jax.Array",
    "jaxlib._jax.Sharding": "jax.sharding.Sharding",
    "jaxlib._jax.Device": "jax.Device",
    "jax._src.mesh.Mesh": "jax.sharding.Mesh",
    "jax._src.stages.Lowered": "jax.stages.Lowered",
    "optax._src.base.GradientTransformation": "optax.GradientTransformation",
    "optax._src.base.GradientTransformationExtraArgs": "optax.GradientTransformationExtraArgs",
    "flax.linen.module.Module": "flax.linen.Module",
    "flax.nnx.module.Module": "flax.nnx.Module",
    "flax.nnx.statelib.State": "flax.nnx.State",
    "Path": "pathlib.Path",
}
# Genuine third-party type-hint noise: orbax, whose inventory is not kept here.
nitpick_ignore = [("py:class", "orbax.checkpoint.checkpoint_manager.CheckpointManager")]

doctest_global_setup = """
import jax, jax.numpy as jnp, numpy as np, optax, jaxreg
"""


def _field_defaults(cls) -> dict[str, str]:
    """A dataclass's field defaults as written in its source (``jnp.float32``), base first."""
    defaults: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("jaxreg."):
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                defaults[node.target.id] = ast.get_source_segment(source, node.value) or ""
    return defaults


def _module_signature(app, what, name, obj, options, signature, return_annotation):
    """A flax linen module's signature: its fields with their source defaults, without flax's
    internal ``parent`` and ``name``."""
    if what != "class" or not (isinstance(obj, type) and issubclass(obj, flax.linen.Module)):
        return None
    fields = [f for f in dataclasses.fields(obj) if f.init and f.name not in ("parent", "name")]
    defaults = _field_defaults(obj)
    params = [f"{f.name}={defaults[f.name]}" if f.name in defaults else f.name for f in fields]
    return f"({', '.join(params)})", return_annotation


def _nnx_signatures(app):
    """flax builds NNX modules through its metaclass (``*args, **kwargs``): give jaxreg's NNX
    modules their ``__init__``'s signature, without ``self``, with the defaults as written."""
    for module in (jaxreg.nnx, jaxreg.models.nnx):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, nnx.Module) and obj.__module__.startswith(
                    "jaxreg."):
                update_defvalue(app, obj.__init__, False)
                sig = inspect.signature(obj.__init__)
                obj.__signature__ = sig.replace(
                    parameters=list(sig.parameters.values())[1:],
                    return_annotation=inspect.Signature.empty)


@functools.cache
def _identity(name: str):
    """What a documented name is, to tell two names of one object (``id``), or the name itself
    where it is no importable attribute (a module's data documented by hand)."""
    try:
        return id(import_by_name(name)[1])
    except (ImportError, ImportExceptionGroup):
        return name


def _documented_as(env, *paths: str):
    """The documented ``(name, object)`` of the jaxreg object importable at one of ``paths``
    (tried in order) under another name: ``jaxreg.train.plan.make_plan`` is documented as
    ``jaxreg.train.make_plan``, the module ``jaxreg.nn.functional`` as ``jaxreg.batchnorm.core``."""
    objects = env.get_domain("py").objects
    for path in paths:
        wanted = _identity(path) if path.startswith("jaxreg.") else path
        if isinstance(wanted, str):
            continue
        for name, obj in objects.items():
            if name.startswith("jaxreg.") and _identity(name) == wanted:
                return name, obj
    return None


def _resolve(app, env, node, contnode):
    """Resolve what Sphinx could not: a private type path through its public name (through the
    inventories), and a bare name in a jaxreg docstring (``:data:`MODELS```, written in the
    module that defines it) through the one documented jaxreg object of that name."""
    target, module = node.get("reftarget", ""), node.get("py:module") or ""
    domain = env.get_domain("py")
    if target in PUBLIC_NAMES:
        node["reftarget"] = PUBLIC_NAMES[target]
        return (domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                    node["reftarget"], node, contnode)
                or intersphinx.missing_reference(app, env, node, contnode))
    if node.get("refdomain") == "py" and (
            alias := _documented_as(env, target, f"{module}.{target}" if module else "")):
        name, obj = alias
        return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, name)
    if module.startswith("jaxreg") and node.get("refdomain") == "py":
        matches = {}  # one per Python object: a class documented under two paths is one
        for name, obj in domain.find_obj(env, module, None, target, None, searchmode=1):
            if name.startswith("jaxreg."):
                matches.setdefault(_identity(name), (name, obj))
        if len(matches) == 1:
            name, obj = matches.popitem()[1]
            return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode,
                                name)
    return None


LINKABLE = re.compile(r"((?:jaxreg|optax|jax|flax|numpy)(?:\.\w+)+)(?:\([^()]*\))?")


def _link_code(app, doctree, docname):
    """Inline code that names a documented object, called or not (``jaxreg.add_l2(s)``,
    ``optax.chain``), links to its entry: on this site, else through the inventories."""
    if app.builder.format != "html":
        return
    objects = app.env.get_domain("py").objects
    inventory = getattr(app.env, "intersphinx_inventory", {})
    for literal in list(doctree.findall(nodes.literal)):
        match = LINKABLE.fullmatch(literal.astext())
        if not match or isinstance(literal.parent, (nodes.reference, nodes.title)):
            continue
        name = match.group(1)
        if name in objects:
            uri = (app.builder.get_relative_uri(docname, objects[name].docname) + "#"
                   + objects[name].node_id)
        else:
            uri = next((inv[name].uri if hasattr(inv[name], "uri") else inv[name][2]
                        for role, inv in inventory.items()
                        if role.startswith("py:") and name in inv), None)
            if uri is None:
                continue
        reference = nodes.reference("", "", internal=name in objects, refuri=uri)
        literal.replace_self(reference)
        reference.append(literal)


def _thumbnails(app):
    """The examples gallery's pictures: each notebook's first figure, in examples/_thumbs/."""
    thumbs = Path(app.srcdir) / "examples" / "_thumbs"
    thumbs.mkdir(exist_ok=True)
    for notebook in sorted((Path(app.srcdir) / "examples").glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        pngs = [out["data"]["image/png"] for cell in cells for out in cell.get("outputs", [])
                if "image/png" in out.get("data", {})]
        if pngs:
            png = base64.b64decode("".join(pngs[0]))
            path = thumbs / f"{notebook.stem}.png"
            if not path.exists() or path.read_bytes() != png:
                path.write_bytes(png)


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """A NamedTuple's fields are documented once, by its docstring's Attributes section, not
    again as members ("Alias for field number 0")."""
    return True if type(obj).__name__ == "_tuplegetter" else None


def _summary_literal_block(app, what, name, obj, options, lines):
    """A docstring whose summary line opens a literal block (``...::``) has its block indented
    like the summary once dedented; indent it so that it renders as code."""
    if len(lines) > 2 and lines[0].endswith("::") and not lines[1] and lines[2][:1] != " ":
        end = lines.index("", 2) if "" in lines[2:] else len(lines)
        lines[2:end] = ["    " + line for line in lines[2:end]]


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("autodoc-process-docstring", _summary_literal_block)
    app.connect("builder-inited", _thumbnails)
    app.connect("builder-inited", _nnx_signatures)
    app.connect("doctree-resolved", _link_code)
    app.connect("missing-reference", _resolve, priority=400)
    app.connect("autodoc-process-signature", _module_signature)
