import pytest

from edgecls_testing import EXPERIMENTS


@pytest.fixture
def quickstart():
    return str(EXPERIMENTS / "quickstart.yaml")
