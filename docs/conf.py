"""Sphinx configuration of the pyro_ssvi documentation.

Why Sphinx (and not MkDocs with mkdocstrings): Pyro, the library this one
extends, documents itself with Sphinx, autodoc and napoleon, so a Pyro user
finds the same layout, the same Google-style "Args/Returns" rendering and the
same MathJax formulas here; the docstrings already use reST roles
(``:func:``, ``:class:``, ``:math:``) that only Sphinx resolves. Markdown
pages go through myst-parser. Notebooks are rendered by myst-nb, never
executed here (``nb_execution_mode = "off"``): the pages show the committed
outputs, and the build stays fast and offline.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

from pyro_ssvi import __version__  # noqa: E402

project = "pyro_ssvi"
author = "the pyro_ssvi authors"
copyright = "2026, the pyro_ssvi authors"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # Markdown pages (myst-parser) and notebooks
    "ssvi_docs",  # API pages from __all__, the CLI's --help, the notebooks
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]

# autodoc: signatures with their type hints, in the order of the source.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields (autodoc lists the members)

# Markdown: $...$ and $$...$$ maths, ::: fences, heading anchors for links.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Notebooks are rendered as committed: never executed by the docs build.
nb_execution_mode = "off"
nb_merge_streams = True

html_theme = "furo"
html_title = f"pyro_ssvi {__version__}"

# Every reference into pyro_ssvi must resolve (a broken one fails the -W
# build). Other projects' names are not linked (the build stays offline, no
# intersphinx); nor are pyro_ssvi's private modules, which have no pages.
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(torch|torchvision|pyro|numpy|matplotlib|os|pathlib|argparse)(\..*)?"),
    ("py:.*", r"(collections|typing|contextlib)\..*"),
    ("py:.*", r"pyro_ssvi\.(.*\.)?_[A-Za-z].*"),  # private modules and names
    ("py:.*", r"(Tensor|Figure|_PathLike|T|.*\.T|.*\[.*)"),  # annotations
    ("py:.*", r"_[A-Za-z].*"),  # private names, by their short names
]
# Names that docstrings mention but that are not public (not in any __all__),
# or inherited from Pyro and torch: shown as code, not linked.
nitpick_ignore = [
    ("py:class", "AugmentedDataset"),
    ("py:data", "METRIC_LABELS"),
    ("py:data", "TRAINING_CURVES"),
    ("py:data", "DEFAULT_HIDDEN"),
    ("py:data", "RENAMED_KEYS"),
    ("py:data", "MIN_TIMED_NUMEL"),
    ("py:func", "owned_run_dir"),
    ("py:meth", "init_loc_fn"),
    ("py:meth", "rsample"),
    ("py:meth", "load_state_dict"),
    ("py:attr", "updates"),
    ("py:attr", "subspace"),
]
