import pytest

from edgecls_testing import EXPERIMENTS, InProcessCLI


@pytest.fixture
def quickstart():
    return str(EXPERIMENTS / "quickstart.yaml")


@pytest.fixture
def cli(capfd, monkeypatch):
    """Runs main.py's CLI in this process: cli(args, cwd) -> CompletedProcess (see edgecls_testing.InProcessCLI)."""
    return InProcessCLI(capfd, monkeypatch)
