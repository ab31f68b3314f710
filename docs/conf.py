"""Sphinx configuration for the safepool documentation.

Build locally from the repository root:

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Every ``.. code-block:: python`` in these pages is run by ``tests/test_docs_examples.py``;
see ``docs/contributing-docs.rst`` for the conventions.
"""
import os
import sys

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(DOCS_DIR)

# autodoc imports the package from the working tree, not from an installed copy.
sys.path.insert(0, REPO_ROOT)

# -- Project information -------------------------------------------------------------------

project = "safepool"
author = "the safepool developers"
copyright = "the safepool developers"  # noqa: A001 - Sphinx's name for this setting

try:
    import safepool

    release = getattr(safepool, "__version__", "dev")
except Exception:  # the API pages will then warn, which -W turns into a failed build
    release = "dev"
version = ".".join(release.split(".")[:2])

# -- General configuration -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# ``_generated`` holds fragments pulled in with ``.. include::``; they are not pages of their own.
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

# Show signatures as written in the code, and types in the parameter descriptions.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {
    "show-inheritance": True,
}
napoleon_google_docstring = True
napoleon_numpy_docstring = True

default_role = "code"
highlight_language = "python3"
# No pygments_style: the theme picks code colours that match its light and dark modes.

# -- The benchmark results fragment --------------------------------------------------------

# benchmarks.rst includes _generated/bench_results.rst, which `python benchmarks/run.py
# --write-docs` writes. A placeholder is committed; if the file has been deleted, write the
# placeholder again so that the build never fails only because no benchmark was run.
BENCH_RESULTS = os.path.join(DOCS_DIR, "_generated", "bench_results.rst")
BENCH_PLACEHOLDER = """\
.. This file is replaced by `python benchmarks/run.py --write-docs`.
.. Headings inside it, if any, must use ~ underlines (benchmarks.rst uses = and -).

.. note::

   No benchmark results have been generated for this build. Run
   ``python benchmarks/run.py --write-docs`` from the repository root to measure this
   machine and write them here.
"""
if not os.path.exists(BENCH_RESULTS):
    os.makedirs(os.path.dirname(BENCH_RESULTS), exist_ok=True)
    with open(BENCH_RESULTS, "w") as f:
        f.write(BENCH_PLACEHOLDER)

# -- HTML output ---------------------------------------------------------------------------

try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # furo is optional; alabaster ships with Sphinx
    html_theme = "alabaster"

html_title = f"safepool {release}"
html_static_path = []
