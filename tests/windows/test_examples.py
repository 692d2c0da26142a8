"""The examples in the windows package's docstrings hold."""
import doctest

import pytest

from etl_actors.windows import assign, assigners, spec


@pytest.mark.parametrize("module", [assign, assigners, spec], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0
