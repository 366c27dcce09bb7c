"""Sphinx configuration of the attribshield site: ``make docs`` -> ``docs/_build/html``.

The Markdown pages in ``docs/`` are read by myst-parser; ``contents.rst`` is the root (its
toctree lists every page) and ``index.md`` the landing page.  The API reference is generated
at every build from the packages' ``__all__`` (see :func:`api_pages`) into ``docs/api/``, which
is git-ignored: a name added to a package's ``__all__`` appears without editing the docs.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import attribshield  # noqa: E402  (needs the sys.path entry above when not installed)

project = "attribshield"
author = "the attribshield developers"
copyright = "the attribshield developers"
version = release = attribshield.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "contents"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# autodoc / autosummary: the API pages are written by api_pages(), not by autosummary.
autosummary_generate = False
autodoc_typehints = "none"  # the numpydoc Parameters sections state the types
autodoc_member_order = "bysource"
autoclass_content = "class"  # sklearn style: parameters are documented in the class docstring
autodoc_inherit_docstrings = False  # skorch's own docstrings are not part of this API
numpydoc_show_class_members = False  # methods come from autodoc's :members:
numpydoc_class_members_toctree = False

# myst: anchors for "page.md#section" links.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"attribshield {release}"
html_theme_options = {"description": "Explainability-guided defense for image classifiers"}

# ----------------------------------------------------------------------------------------------
# API pages

#: The packages and modules documented, in page order.  Subpackages are documented at package
#: level only (their ``__all__``); every public top-level module is added automatically.
API_PACKAGES = ["attribshield", "attribshield.attacks", "attribshield.explainers", "attribshield.maskers",
                "attribshield.regularizers", "attribshield.evaluation", "attribshield.data"]
#: Public top-level modules that are not API: the command line (docs/cli.md) and test helpers.
API_EXCLUDE = {"attribshield.cli", "attribshield.demo", "attribshield.testing"}
API_DIR = DOCS / "api"


def api_modules() -> list[str]:
    """Module names with an API page: :data:`API_PACKAGES`, then the other public modules."""
    names = list(API_PACKAGES)
    for info in pkgutil.iter_modules(attribshield.__path__):
        name = f"attribshield.{info.name}"
        if not info.name.startswith("_") and name not in names and name not in API_EXCLUDE:
            names.append(name)
    return names


def _defined_names(module) -> list[str]:
    """Public names a module without ``__all__`` defines itself (imports excluded), in order."""
    tree = ast.parse(inspect.getsource(module))
    out = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(out) if not n.startswith("_")]


def public_names(module) -> list[str]:
    """``module.__all__`` (modules and dunders dropped), else the public names it defines."""
    names = list(getattr(module, "__all__", None) or _defined_names(module))
    return [n for n in names if not n.startswith("__") and not inspect.ismodule(getattr(module, n))]


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def api_pages() -> dict[str, str]:
    """``{module name: reST page}`` for every module of :func:`api_modules`.

    A class or function re-exported by a later module (``attribshield.estimator`` re-exports
    ``RobustAttributionClassifier``) is documented once, where it first appears, and linked
    from the others: documenting it twice would duplicate its canonical name.
    """
    seen: dict[tuple[str, str], str] = {}
    pages = {}
    for modname in api_modules():
        module = importlib.import_module(modname)
        sections: dict[str, list[str]] = {"class": [], "function": [], "data": []}
        elsewhere = []
        for name in public_names(module):
            obj = getattr(module, name)
            kind = _kind(obj)
            if kind != "data":
                key = (getattr(obj, "__module__", ""), getattr(obj, "__qualname__", name))
                if key in seen:
                    elsewhere.append(f":{'class' if kind == 'class' else 'func'}:`{name} <{seen[key]}>`")
                    continue
                seen[key] = f"{modname}.{name}"
            sections[kind].append(name)
        lines = [modname, "=" * len(modname), "", f".. automodule:: {modname}", "",
                 f".. currentmodule:: {modname}", ""]
        documented = sections["class"] + sections["function"] + sections["data"]
        if documented:
            lines += [".. autosummary::", "   :nosignatures:", ""] + [f"   {n}" for n in documented] + [""]
        if elsewhere:
            lines += ["Also exported here: " + ", ".join(elsewhere) + ".", ""]
        for kind, title in (("class", "Classes"), ("function", "Functions"), ("data", "Constants")):
            if not sections[kind]:
                continue
            lines += [title, "-" * len(title), ""]
            for name in sections[kind]:
                if kind == "class":
                    lines += [f".. autoclass:: {name}", "   :members:", "   :show-inheritance:", ""]
                else:
                    lines += [f".. auto{kind}:: {name}", ""]
        pages[modname] = "\n".join(lines)
    return pages


def write_api_pages(outdir: Path = API_DIR) -> list[str]:
    """Write ``outdir/<module>.rst`` and the ``outdir/index.rst`` toctree; return the modules."""
    pages = api_pages()
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    for modname, text in pages.items():
        (outdir / f"{modname}.rst").write_text(text)
    return list(pages)


def _drop_builtin_docstrings(app, what, name, obj, options, lines):
    """Constants (tuples, dicts) would otherwise show their type's docstring."""
    if what in ("data", "attribute") and lines:
        type_doc = inspect.getdoc(type(obj)) or ""
        if "\n".join(lines).strip() == type_doc.strip():
            lines.clear()


def _skip_sklearn_request_methods(app, what, name, obj, skip, options):
    """scikit-learn adds ``set_{fit,score,...}_request`` to every estimator class (metadata
    routing); their docstrings link into scikit-learn's own glossary."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    # setup() runs before Sphinx looks for source files, so the pages written here are read.
    write_api_pages()
    app.connect("autodoc-process-docstring", _drop_builtin_docstrings, priority=400)
    app.connect("autodoc-skip-member", _skip_sklearn_request_methods)
