"""The package and its command line say which version they are."""

from __future__ import annotations

from importlib.metadata import version

from click.testing import CliRunner

import openenv_zmq
from broker.cli import main


def test_the_package_and_the_cli_report_the_installed_version() -> None:
    assert openenv_zmq.__version__ == version("openenv-zmq")
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"openenv-broker, version {openenv_zmq.__version__}\n"
