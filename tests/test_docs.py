"""Docstring examples run (doctest), the API page renders, and the examples run in fast mode."""
import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCTEST_MODULES = ["attribshield.estimator", "attribshield.attacks.fgsm", "attribshield.attacks.pgd",
                   "attribshield.models", "attribshield.maskers.lime_masker"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0, f"{name} has no doctest examples"
    assert res.failed == 0


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "docs").glob("*.md") if ">>> " in p.read_text()))
def test_markdown_doctest_examples(page):
    res = doctest.testfile(str(REPO / "docs" / page), module_relative=False,
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


def test_api_page_renders():
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import gen_api
    finally:
        sys.path.pop(0)
    text = gen_api.render()
    for name in ["RobustAttributionClassifier", "LimeExplainer", "LimeMasker", "SpuriousGradientPenalty",
                 "attribution_lower_bound", "robust_accuracy", "load_cifar10"]:
        assert name in text


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_examples_run_in_fast_mode(script, tmp_path):
    env = {**os.environ, "ATTRIBSHIELD_FAST": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(REPO / "examples" / script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
