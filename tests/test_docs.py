"""Docstring examples run (doctest), the docs site's inputs hold together and build, and the
examples run in fast mode."""
import doctest
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attribshield

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules_with_examples():
    """Every module of attribshield whose source holds a ``>>>`` example (found without importing
    the modules themselves, so a new module is covered as soon as it exists)."""
    names = ["attribshield"] if ">>> " in Path(attribshield.__file__).read_text(encoding="utf-8") else []
    for info in pkgutil.walk_packages(attribshield.__path__, prefix="attribshield."):
        if info.name.endswith("__main__"):
            continue
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            if ">>> " in Path(spec.origin).read_text(encoding="utf-8"):
                names.append(info.name)
    return sorted(names)


DOCTEST_MODULES = _modules_with_examples()


def test_doctests_are_discovered():
    # the modules whose examples the old hand-written list covered are still found
    for name in ["attribshield.estimator", "attribshield.attacks.fgsm", "attribshield.attacks.pgd",
                 "attribshield.models", "attribshield.maskers.lime_masker"]:
        assert name in DOCTEST_MODULES


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an optional dependency (accelerate, ...) is missing
        if exc.name and not exc.name.startswith("attribshield"):
            pytest.skip(f"{name} needs {exc.name}")
        raise
    res = doctest.testmod(mod, optionflags=FLAGS)
    assert res.attempted > 0, f"{name} has '>>> ' in its source but no doctest example was found"
    assert res.failed == 0


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if ">>> " in p.read_text()))
def test_markdown_doctest_examples(page):
    res = doctest.testfile(str(DOCS / page), module_relative=False, optionflags=FLAGS)
    assert res.attempted > 0 and res.failed == 0


def _load_conf():
    spec = importlib.util.spec_from_file_location("attribshield_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)  # no side effect: the API pages are written in setup()
    return conf


def test_docs_sources_hold_together():
    for name in ["conf.py", "contents.rst", "index.md", "api.rst"]:
        assert (DOCS / name).is_file(), name
    # every page is in the root toctree (Sphinx warns, hence fails, otherwise)
    toctree = set(re.findall(r"^   (\w+)$", (DOCS / "contents.rst").read_text(), flags=re.M))
    pages = {p.stem for p in DOCS.glob("*.md")} | {"api"}
    assert pages <= toctree, sorted(pages - toctree)


def test_api_pages_cover_the_public_api():
    conf = _load_conf()
    pages = conf.api_pages()
    required = ["attribshield", "attribshield.attacks", "attribshield.explainers", "attribshield.maskers",
                "attribshield.regularizers", "attribshield.evaluation", "attribshield.data", "attribshield.bounds",
                "attribshield.models", "attribshield.presets"]
    assert set(required) <= set(pages)
    for modname in required:
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", []):
            if name.startswith("__") or isinstance(getattr(mod, name), type(attribshield)):
                continue  # __version__, submodules (which have their own page)
            assert re.search(rf"\b{name}\b", pages[modname]), f"{modname}.{name} is not on its API page"
    assert ".. autoclass:: RobustAttributionClassifier" in pages["attribshield"]
    assert ".. autoclass:: TrainConfig" in pages["attribshield.presets"]


@pytest.mark.slow
def test_sphinx_build(tmp_path):
    """``make docs``: the site builds with warnings as errors (about a minute)."""
    for mod in ["sphinx", "numpydoc", "myst_parser"]:
        pytest.importorskip(mod, reason="the docs extra is not installed (make docs installs it)")
    res = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
                          "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert (tmp_path / "html" / "api" / "attribshield.attacks.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_examples_run_in_fast_mode(script, tmp_path):
    env = {**os.environ, "ATTRIBSHIELD_FAST": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(REPO / "examples" / script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
