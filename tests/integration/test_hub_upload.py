"""push_space's real upload path against a stand-in for the Hub on 127.0.0.1.

The stub implements only what huggingface_hub calls for ``create_repo`` and ``upload_folder``
(repos/create, validate-yaml, preupload, commit) and answers every file as a regular (non-LFS)
upload, so the contents arrive inline in the commit.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from broker.hub import PROJECT_ROOT, push_space
from openenv_zmq.errors import RemoteError
from tests.processes import serving

pytest.importorskip("huggingface_hub")

pytestmark = pytest.mark.integration
TOKEN = "hf_stub_token"


@dataclass
class FakeHub:
    url: str
    created: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)
    authorizations: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)
    refuse_create: str | None = None


def hub_app(hub: FakeHub) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def remember_auth(request: Request, call_next: Any) -> Any:
        hub.authorizations.add(request.headers.get("authorization", ""))
        return await call_next(request)

    @app.post("/api/repos/create")
    async def create(request: Request) -> JSONResponse:
        body = await request.json()
        if hub.refuse_create is not None:
            return JSONResponse({"error": hub.refuse_create}, status_code=400)
        hub.created.append(body)
        return JSONResponse({"url": f"{hub.url}/spaces/{body['organization']}/{body['name']}"})

    @app.post("/api/validate-yaml")
    async def validate_yaml() -> dict[str, list[str]]:
        return {"errors": [], "warnings": []}

    @app.post("/api/spaces/{owner}/{name}/preupload/{revision}")
    async def preupload(request: Request) -> dict[str, Any]:
        files = (await request.json())["files"]
        return {
            "files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in files
            ],
            "commitOid": "0" * 40,
        }

    @app.post("/api/spaces/{owner}/{name}/commit/{revision}")
    async def commit(owner: str, name: str, revision: str, request: Request) -> dict[str, str]:
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line]
        header = next(line["value"] for line in lines if line["key"] == "header")
        hub.commits.append({"repo": f"{owner}/{name}", "revision": revision, **header})
        for line in lines:
            if line["key"] == "file":
                assert line["value"]["encoding"] == "base64"
                hub.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        return {
            "commitUrl": f"{hub.url}/spaces/{owner}/{name}/commit/{'1' * 40}",
            "commitOid": "1" * 40,
        }

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
    async def anything_else(path: str, request: Request) -> JSONResponse:
        hub.unexpected.append(f"{request.method} /{path}")
        return JSONResponse({"error": "not in the stub"}, status_code=404)

    return app


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Read once at import by huggingface_hub, so the environment alone may come too late.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    hub = FakeHub(url="")
    with serving(hub_app(hub)) as url:
        hub.url = url
        yield hub


def test_push_creates_a_docker_space_and_uploads_the_staged_files(fake_hub: FakeHub) -> None:
    url = push_space("alice/echo-cluster", env="echo", token=TOKEN, endpoint=fake_hub.url)

    assert fake_hub.unexpected == []
    assert url == f"{fake_hub.url}/spaces/alice/echo-cluster"
    [created] = fake_hub.created
    assert created["type"] == "space"
    assert created["sdk"] == "docker"
    assert (created["organization"], created["name"]) == ("alice", "echo-cluster")
    assert created.get("visibility", "public") == "public"
    assert fake_hub.authorizations == {f"Bearer {TOKEN}"}

    [commit] = fake_hub.commits
    assert (commit["repo"], commit["revision"]) == ("alice/echo-cluster", "main")
    readme = fake_hub.files["README.md"].decode()
    assert "sdk: docker\n" in readme and "app_port: 7860\n" in readme
    dockerfile = fake_hub.files["Dockerfile"].decode()
    assert "USER 1000\n" in dockerfile and "EXPOSE 7860\n" in dockerfile
    assert '"--env", "echo"' in dockerfile and '"--gateway-host", "0.0.0.0"' in dockerfile
    for path in ("pyproject.toml", "broker/hub.py", "broker/cli.py"):
        assert fake_hub.files[path] == (PROJECT_ROOT / path).read_bytes()


def test_private_space_is_created_private(fake_hub: FakeHub) -> None:
    push_space("alice/hidden", private=True, token=TOKEN, endpoint=fake_hub.url)
    assert fake_hub.created[0]["visibility"] == "private"


def test_hub_refusal_becomes_remote_error_with_the_hubs_message(fake_hub: FakeHub) -> None:
    fake_hub.refuse_create = "You have reached the maximum number of Spaces"
    with pytest.raises(RemoteError, match="maximum number of Spaces") as caught:
        push_space("alice/too-many", token=TOKEN, endpoint=fake_hub.url)
    assert "alice/too-many" in str(caught.value)
    assert fake_hub.files == {}


def test_an_unreachable_hub_is_a_remote_error_naming_it() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        with pytest.raises(RemoteError, match=f"could not reach {endpoint}"):
            push_space("alice/nowhere", token=TOKEN, endpoint=endpoint)
