"""Sphinx configuration: ``python -m sphinx -W -b html docs docs/_build`` (and ``-b doctest``)."""
import jaxreg

project = "jaxreg"
author = "The jaxreg developers"
copyright = "2026, The jaxreg developers"
release = version = jaxreg.__version__

extensions = [
    "myst_parser",            # Markdown pages
    "sphinx.ext.autodoc",     # API pages from the docstrings
    "sphinx.ext.napoleon",    # Google-style Args/Returns/Raises
    "sphinx.ext.doctest",     # the examples in these pages run: `-b doctest`
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

doctest_global_setup = """
import jax, jax.numpy as jnp, numpy as np, optax, jaxreg
"""
html_theme = "alabaster"
html_static_path: list[str] = []
