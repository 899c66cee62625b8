"""A Docker engine, a registry-free base image, a host-built wheelhouse and the Space's image.

Nothing here pulls from a registry: the base image comes from ``docker/base-image.sh``
(debootstrap), Python packages from wheels built on this host, and ``docker build`` runs with
no network. Without an engine the tests skip, unless ``OPENENV_ZMQ_REQUIRE_DOCKER=1`` (CI, after
``docker/ci-engine.sh``) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.hub import PROJECT_ROOT, space_extras, stage_space
from tests.processes import free_port

BASE_IMAGE = "openenv-zmq/python:3.11-bookworm"
SPACE_ENV = "coding"
"""The env the image is staged for (``push --env coding``); the echo tests run it with
``--env echo``, which needs nothing more."""
WHEELHOUSE = "wheels"
"""The folder in the build context the Space's Dockerfile installs from when it is there."""
BASE_BUILD_TIMEOUT = 900.0
WHEEL_BUILD_TIMEOUT = 600.0
IMAGE_BUILD_TIMEOUT = 600.0
DOCKER_TIMEOUT = 60.0


def docker(*args: str, timeout: float = DOCKER_TIMEOUT) -> str:
    """Run ``docker args...``; its stdout, or AssertionError carrying its stderr."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"docker {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def no_engine() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker command (docker/ci-engine.sh installs one)"
    try:
        done = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if done.returncode != 0:
        return f"no Docker engine answers (docker/ci-engine.sh starts one): {done.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    reason = no_engine()
    if reason is None:
        return
    if os.environ.get("OPENENV_ZMQ_REQUIRE_DOCKER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def base_image(docker_engine: None) -> str:
    """The python:3.11-slim stand-in, built once and kept (the script skips an existing tag)."""
    done = subprocess.run(
        ["bash", str(PROJECT_ROOT / "docker" / "base-image.sh"), BASE_IMAGE],
        capture_output=True,
        text=True,
        timeout=BASE_BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"docker/base-image.sh failed:\n{done.stdout}{done.stderr}"
    return BASE_IMAGE


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of the Space's extras' dependencies and of the build backend, built on this host.

    They are built from a staged copy of the source, so no build output lands in the checkout.
    The project's own wheel is dropped: the image builds the project from the staged source,
    as the Hub's builder does, and needs only the build backend for that.
    """
    wheels = tmp_path_factory.mktemp(WHEELHOUSE)
    source = stage_space(SPACE_ENV)
    try:
        pyproject = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
        build_requires: list[str] = pyproject["build-system"]["requires"]
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels)]
        done = subprocess.run(
            [*pip_wheel, f"{source}[{','.join(space_extras(SPACE_ENV))}]", *build_requires],
            capture_output=True,
            text=True,
            timeout=WHEEL_BUILD_TIMEOUT,
            check=False,
        )
    finally:
        shutil.rmtree(source)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stderr}"
    for own in wheels.glob("openenv_zmq-*.whl"):
        own.unlink()
    return wheels


@pytest.fixture(scope="session")
def app_port() -> int:
    """The gateway's port: containers share the host's network, so it must be free here."""
    return free_port()


@pytest.fixture(scope="session")
def space_image(base_image: str, wheelhouse: Path, app_port: int) -> Iterator[str]:
    """The staged Space built on ``base_image`` from ``wheelhouse``; its tag is removed after."""
    folder = stage_space(SPACE_ENV, app_port=app_port)
    tag = f"openenv-zmq/space-test:{uuid.uuid4().hex[:12]}"
    try:
        shutil.copytree(wheelhouse, folder / WHEELHOUSE)
        # No network for RUN steps: every package must come from the wheelhouse.
        docker(
            "build",
            "--quiet",
            "--network",
            "none",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--tag",
            tag,
            str(folder),
            timeout=IMAGE_BUILD_TIMEOUT,
        )
    finally:
        shutil.rmtree(folder)
    try:
        yield tag
    finally:
        docker("rmi", "--force", tag)
