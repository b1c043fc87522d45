"""Fixtures shared by the test modules."""

import program
import pytest


@pytest.fixture(scope="session")
def run():
    """`__main__.py` under mocks with the default test configuration (program.BASE_CONFIG)."""
    result = program.run()
    assert result.error is None, result.error
    return result
