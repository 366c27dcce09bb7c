"""Generate docs/api.md from the public docstrings: ``python docs/gen_api.py``."""
from __future__ import annotations

import importlib
import inspect
import os

MODULES = ["attribshield", "attribshield.attacks", "attribshield.explainers", "attribshield.maskers",
           "attribshield.regularizers", "attribshield.evaluation", "attribshield.bounds", "attribshield.data",
           "attribshield.data.cifar10c", "attribshield.models", "attribshield.refinement", "attribshield.presets",
           "attribshield.checkpoint"]


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def render() -> str:
    out = ["# API reference", "", "Generated from the docstrings by `python docs/gen_api.py`; "
           "the docstrings (numpydoc) hold the full parameter lists.", ""]
    for name in MODULES:
        mod = importlib.import_module(name)
        out += [f"## `{name}`", "", _summary(mod), ""]
        names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
        for n in names:
            obj = getattr(mod, n, None)
            if obj is None or inspect.ismodule(obj) or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            if len(sig) > 160:
                sig = sig[:157] + "...)"
            out += [f"- **`{n}{sig}`**: {_summary(obj)}"]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.md")
    with open(path, "w") as f:
        f.write(render())
    print(path)
