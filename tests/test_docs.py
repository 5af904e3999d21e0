"""The documentation must not drift from the code: the generated API reference, and every
example in the docstrings, run as doctests so that the results they show stay true."""

import doctest
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import skfastflow

ROOT = Path(__file__).resolve().parents[1]
# Importing __main__ runs the command line; it has no examples.
MODULES = ["skfastflow"] + [
    module.name for module in pkgutil.walk_packages(skfastflow.__path__, "skfastflow.") if not module.name.endswith("__main__")
]


def test_api_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "build_api.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _docstring_examples(name):
    module = importlib.import_module(name)
    return [test for test in doctest.DocTestFinder().find(module, name) if test.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_show_what_the_code_gives(name):
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _docstring_examples(name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_the_examples_are_found():
    # Guards the test above against finding nothing: these modules show examples.
    with_examples = {name for name in MODULES if _docstring_examples(name)}
    assert {"skfastflow.detector", "skfastflow.metrics", "skfastflow.scoring", "skfastflow.persistence"} <= with_examples
