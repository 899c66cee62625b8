"""``openenv-broker image build``: the worker image, built on this host's Docker engine with no
registry or package index past the base image.

The recipe is the Space image's: the project's source staged beside ``docker/worker/Dockerfile``,
a wheelhouse built here by this Python (every dependency of the extras the envs need, the build
backend, and the env packages the user names), and ``docker build`` with no network, so the
image installs exactly those wheels. The wheels are this Python's, so the base image's Python
must be the same version: checked before anything is built.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from broker.hub import PROJECT_ROOT, space_extras, stage_source
from broker.providers.docker import DEFAULT_IMAGE, check_image, docker_client, run_once
from openenv_zmq.errors import ProviderUnavailable

if TYPE_CHECKING:
    from docker import DockerClient

log = logging.getLogger(__name__)

WORKER_TEMPLATES = PROJECT_ROOT / "docker" / "worker"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
WHEEL_TIMEOUT = 1800.0


def worker_extras(envs: Sequence[str]) -> list[str]:
    """The project's extras an image for ``envs`` installs: the gateway's, and each env's own
    (``gym:ID`` envs need the ``gym`` extra)."""
    names = [env.partition(":")[0] if env.startswith("gym:") else env for env in envs]
    return sorted({extra for name in names for extra in space_extras(name)})


def build_worker_image(
    tag: str = DEFAULT_IMAGE,
    envs: Sequence[str] = ("echo",),
    packages: Sequence[str] = (),
    base_image: str = DEFAULT_BASE_IMAGE,
    say: Callable[[str], None] = print,
) -> str:
    """Build the worker image ``tag`` for ``envs`` (registered names) with the pip
    requirement specs ``packages`` (paths or names of env packages) installed too; its id.

    Raises :class:`ProviderUnavailable` for no engine, a base image that is neither here nor
    pullable, or of another Python, a build or wheel that fails (its last lines said), and an
    image that then cannot import every env.
    """
    client = docker_client()
    _check_base_image(client, base_image)
    context = stage_source("openenv-worker-image-", WORKER_TEMPLATES)
    try:
        shutil.copy2(WORKER_TEMPLATES / "Dockerfile", context / "Dockerfile")
        extras = worker_extras(envs)
        say(f"building wheels for .[{','.join(extras)}] {' '.join(packages)}".rstrip())
        _build_wheels(context, extras, packages)
        say(f"building {tag} on {base_image} (no network)")
        import docker

        try:
            image, _ = client.images.build(
                path=str(context),
                tag=tag,
                buildargs={"BASE_IMAGE": base_image, "EXTRAS": ",".join(extras)},
                network_mode="none",
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            lines = [
                str(step.get("stream", step.get("error", ""))).strip() for step in exc.build_log
            ]
            said = "; ".join(line for line in lines[-3:] if line)
            raise ProviderUnavailable(f"docker build of {tag} failed: {said}") from None
    finally:
        shutil.rmtree(context)
    check_image(client, tag, envs)
    return str(image.id)


def _check_base_image(client: DockerClient, base_image: str) -> None:
    import docker

    try:
        client.images.get(base_image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(base_image)
        except docker.errors.APIError as exc:
            raise ProviderUnavailable(
                f"no base image {base_image} here and it cannot be pulled ({exc.explanation}):"
                " pass --base-image with a local image of Python"
                f" {sys.version_info.major}.{sys.version_info.minor} (docker/base-image.sh"
                " makes one from Debian packages)"
            ) from None
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    code, said = run_once(client, base_image, ["python", "-c", probe])
    if code != 0:
        raise ProviderUnavailable(
            f"{base_image} runs no python ({said.splitlines()[-1] if said else 'no output'}):"
            f" pass --base-image with Python {ours}"
        )
    theirs = said.strip()
    if theirs != ours:
        raise ProviderUnavailable(
            f"{base_image} has Python {theirs}, but the wheels are built here by Python {ours}:"
            f" pass --base-image with Python {ours}, or run image build with Python {theirs}"
        )


def _build_wheels(context: Path, extras: Sequence[str], packages: Sequence[str]) -> None:
    """``context/wheels``: wheels of everything the image installs; ``context/packages``: the
    wheels of ``packages`` themselves (installed by file, whatever their names)."""
    pyproject = tomllib.loads((context / "pyproject.toml").read_text(encoding="utf-8"))
    build_requires: list[str] = pyproject["build-system"]["requires"]
    wheels, own = context / "wheels", context / "packages"
    own.mkdir()
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir"]
    runs = [[*pip_wheel, str(wheels), f"{context}[{','.join(extras)}]", *build_requires]]
    runs[0] += packages
    if packages:
        runs.append([*pip_wheel, str(own), "--no-deps", *packages])
    for run in runs:
        try:
            done = subprocess.run(
                run, capture_output=True, text=True, timeout=WHEEL_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise ProviderUnavailable(f"pip wheel took over {WHEEL_TIMEOUT:g} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ProviderUnavailable(f"pip wheel failed: {last}")
    # The project itself is built inside the image from the staged source.
    for project_wheel in wheels.glob("openenv_zmq-*.whl"):
        project_wheel.unlink()
