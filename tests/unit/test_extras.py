"""A missing optional package is named with the extra that installs it, as ``gym:`` envs do."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import REPO_ROOT

HINT = "pip install 'openenv-zmq[gateway]'"


def python(poisoned: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter where importing ``poisoned`` fails (a ``None`` in
    ``sys.modules`` makes ``import`` raise ModuleNotFoundError, as for a package not there)."""
    prelude = f"import sys; sys.modules[{poisoned!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("missing", ["fastapi", "uvicorn", "websockets"])
def test_the_gateway_names_its_extra(missing: str) -> None:
    done = python(missing, "import openenv_zmq.gateway")
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last == f"ModuleNotFoundError: the gateway needs {missing}: {HINT}"


def test_an_openenv_style_client_names_the_extra() -> None:
    code = (
        "import asyncio\n"
        "from echo_env import EchoEnv\n"  # the package imports without websockets
        "asyncio.run(EchoEnv(base_url='http://127.0.0.1:9').connect())\n"
    )
    done = python("websockets", code)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"ModuleNotFoundError: EchoEnv needs websockets: {HINT}"


@pytest.mark.parametrize(
    "args",
    [
        ("start", "--workers", "0", "--gateway-port", "8000"),
        ("gateway", "--connect", "tcp://127.0.0.1:9"),
    ],
)
def test_the_cli_names_the_extra_in_one_line(args: tuple[str, ...]) -> None:
    done = python(
        "fastapi", "from broker.cli import run; sys.argv[0] = 'openenv-broker'; run()", *args
    )
    assert done.returncode == 2, done
    assert done.stderr.splitlines()[-1] == f"Error: the gateway needs fastapi: {HINT}"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [("openenv_zmq.gym", "gymnasium", "gym"), ("openenv_zmq.sb3", "stable_baselines3", "sb3")],
)
def test_the_trainer_adapters_name_their_extra(module: str, missing: str, extra: str) -> None:
    done = python(missing, f"import {module}")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"ModuleNotFoundError: {module} needs {missing}: pip install 'openenv-zmq[{extra}]'"
    )


def test_push_names_the_hub_extra_in_one_line() -> None:
    code = "from broker.cli import run; sys.argv[0] = 'openenv-broker'; run()"
    done = python("huggingface_hub", code, "push", "--repo-id", "someone/echo", "--env", "echo")
    assert done.returncode == 2, done
    assert done.stderr.splitlines()[-1] == (
        "Error: pushing a Space needs huggingface_hub: pip install 'openenv-zmq[hub]'"
    )
    assert "Traceback" not in done.stderr
