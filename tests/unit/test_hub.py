"""The staged Space folder: front matter, Dockerfile and the copied source; no network."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.hub import PROJECT_ROOT, push_space, stage_space
from openenv_zmq.errors import EnvNotFound


@pytest.fixture
def staged() -> Iterator[Path]:
    folder = stage_space("echo", app_port=7861)
    yield folder
    shutil.rmtree(folder)


def front_matter(readme: str) -> dict[str, str]:
    head, sep, _ = readme.removeprefix("---\n").partition("\n---\n")
    assert readme.startswith("---\n") and sep, "README.md has no front matter block"
    return dict(line.split(": ", 1) for line in head.splitlines())


def dockerfile_instructions(folder: Path) -> list[str]:
    lines = (folder / "Dockerfile").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_front_matter_declares_a_docker_space_on_the_port(staged: Path) -> None:
    readme = (staged / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["sdk"] == "docker"
    assert meta["app_port"] == "7861"
    assert "echo" in meta["title"]
    assert "`echo`" in readme.split("\n---\n", 1)[1]


def test_dockerfile_builds_on_python_slim_and_pypi_unless_told_otherwise(staged: Path) -> None:
    # The Hub passes no build arguments and the staged folder has no wheelhouse, so its
    # builder starts from python:3.11-slim and installs from PyPI.
    assert dockerfile_instructions(staged)[:2] == [
        "ARG BASE_IMAGE=python:3.11-slim",
        "FROM $BASE_IMAGE",
    ]
    assert not (staged / "wheels").exists()


def test_dockerfile_runs_as_uid_1000_and_exposes_the_port(staged: Path) -> None:
    instructions = dockerfile_instructions(staged)
    assert "USER 1000" in instructions
    assert "EXPOSE 7861" in instructions
    install = next(line for line in instructions if "pip install" in line)
    # The project is installed before the switch to the unprivileged user.
    assert instructions.index(install) < instructions.index("USER 1000")


def test_the_image_installs_the_gateway_and_the_extra_named_after_the_env(staged: Path) -> None:
    def installs(folder: Path) -> str:
        line = next(i for i in dockerfile_instructions(folder) if "pip install" in i)
        return line.split('"')[-2]

    assert installs(staged) == ".[gateway]"
    coding = stage_space("coding")
    try:
        assert installs(coding) == ".[gateway,coding]"  # smolagents, for the sessions
    finally:
        shutil.rmtree(coding)


def test_dockerfile_cmd_starts_the_whole_cluster_with_a_public_gateway(staged: Path) -> None:
    cmd_line = next(line for line in dockerfile_instructions(staged) if line.startswith("CMD "))
    cmd = json.loads(cmd_line.removeprefix("CMD "))
    assert cmd == [
        "openenv-broker",
        "start",
        "--bind",
        "tcp://127.0.0.1:5555",
        "--worker-bind",
        "tcp://127.0.0.1:5556",
        "--workers",
        "2",
        "--env",
        "echo",
        "--gateway-port",
        "7861",
        "--gateway-host",
        "0.0.0.0",
    ]


def test_project_source_is_copied_without_caches(staged: Path) -> None:
    assert (staged / "pyproject.toml").read_bytes() == (
        PROJECT_ROOT / "pyproject.toml"
    ).read_bytes()
    for path in ("broker/hub.py", "broker/cli.py", "envs/echo_env/__init__.py"):
        assert (staged / path).read_bytes() == (PROJECT_ROOT / path).read_bytes()
    assert not list(staged.rglob("__pycache__"))
    assert not list(staged.rglob("*.egg-info"))
    assert not (staged / "tests").exists()


def test_unknown_env_is_refused_before_staging() -> None:
    with pytest.raises(EnvNotFound):
        stage_space("no-such-env-anywhere")


def test_dry_run_returns_the_staged_folder() -> None:
    folder = push_space("someone/space", env="cartpole", dry_run=True, endpoint="http://0.0.0.0:9")
    assert isinstance(folder, Path)
    try:
        assert front_matter((folder / "README.md").read_text())["app_port"] == "7860"
        assert '"--env", "cartpole"' in (folder / "Dockerfile").read_text()
    finally:
        shutil.rmtree(folder)
