"""The examples in the library's docstrings run and print what they say."""
import doctest
import importlib
import pkgutil

import pytest

import stabcheck

MODULES = sorted(m.name for m in pkgutil.walk_packages(stabcheck.__path__, "stabcheck.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", ["stabcheck", *MODULES])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
