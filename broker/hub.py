"""Publish a cluster (broker, workers and OpenEnv gateway) as a Hugging Face docker Space.

:func:`stage_space` writes a folder the Space builds from: the templates in ``docker/space/``
filled in for one env, and this project's source, which the Space's image ``pip install``\\ s.
:func:`push_space` stages that folder and uploads it with ``huggingface_hub`` (the ``hub`` extra).
Both need a source checkout of the project, not a wheel: the Space installs from that source.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path

from openenv_zmq.errors import RemoteError
from openenv_zmq.extras import missing_extra
from openenv_zmq.registry import resolve_env

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = PROJECT_ROOT / "docker" / "space"
SOURCE_ITEMS = ("pyproject.toml", "openenv_zmq", "broker", "envs")
# Build and tool caches: large, machine-specific, and no use to the Space's image.
_IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache"
)


def stage_space(env: str, app_port: int = 7860) -> Path:
    """A new temporary folder holding a docker Space that serves ``env`` on ``app_port``.

    The folder has the filled ``Dockerfile`` and ``README.md`` (whose front matter tells the Hub
    ``sdk: docker`` and ``app_port``) and a copy of the project's source. The image installs the
    ``gateway`` extra, and the extra named after ``env`` when the project has one (``coding``
    brings smolagents). The caller owns the folder and removes it when done. Raises
    :class:`~openenv_zmq.errors.EnvNotFound` when ``env`` resolves to no environment here (it
    would not on the Space either), and :class:`FileNotFoundError` when the project's source is
    not a checkout.
    """
    resolve_env(env)
    folder = stage_source("openenv-space-", TEMPLATE_DIR)
    # README.md doubles as the package's readme (pyproject names it), so `pip install .` finds it.
    fields = {"env": env, "app_port": app_port, "extras": ",".join(space_extras(env))}
    for name in ("Dockerfile", "README.md"):
        template = (TEMPLATE_DIR / name).read_text(encoding="utf-8")
        (folder / name).write_text(template.format(**fields), encoding="utf-8")
    return folder


def stage_source(prefix: str, templates: Path) -> Path:
    """A new temporary folder (name starting ``prefix``) holding a copy of the project's
    source, for an image to build from; :class:`FileNotFoundError` when this is no source
    checkout or lacks the ``templates`` folder the image is made with."""
    missing = [item for item in SOURCE_ITEMS if not (PROJECT_ROOT / item).exists()]
    if missing or not templates.is_dir():
        raise FileNotFoundError(
            f"building an image needs the project's source checkout; {PROJECT_ROOT} lacks "
            f"{', '.join(missing) or templates}"
        )
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for item in SOURCE_ITEMS:
        source = PROJECT_ROOT / item
        if source.is_dir():
            shutil.copytree(source, folder / item, ignore=_IGNORED)
        else:
            shutil.copy2(source, folder / item)
    return folder


def space_extras(env: str) -> list[str]:
    """The project's extras a Space serving ``env`` installs."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    return ["gateway", *([env] if env in extras and env != "gateway" else [])]


def push_space(
    repo_id: str,
    env: str = "echo",
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path | str:
    """Create (or reuse) the docker Space ``repo_id`` and upload a staged Space serving ``env``.

    Returns the Space's URL; with ``dry_run`` nothing touches the network and the staged folder
    is returned instead, for the caller to inspect and remove. ``token`` and ``endpoint`` default
    to ``huggingface_hub``'s own (the saved login, ``HF_ENDPOINT``). Raises
    :class:`~openenv_zmq.errors.RemoteError` with the Hub's message when the Hub refuses a
    request, and :class:`ModuleNotFoundError` when ``huggingface_hub`` is not installed.
    """
    folder = stage_space(env)
    if dry_run:
        return folder
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ModuleNotFoundError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise missing_extra("hub", "pushing a Space", exc) from exc
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(
            repo_id, repo_type="space", space_sdk="docker", private=private, exist_ok=True
        )
        api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=folder,
            commit_message=f"Serve the {env} env with openenv-zmq",
        )
    except HfHubHTTPError as exc:
        raise RemoteError(f"the Hugging Face Hub refused to publish {repo_id}: {exc}") from exc
    except Exception as exc:
        # Not reached at all: which exception says so depends on huggingface_hub's version (it
        # has used requests, httpx and httpx2), so the message names the type it raised.
        where = endpoint or "the Hugging Face Hub"
        raise RemoteError(
            f"could not reach {where} to publish {repo_id}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return str(url)
