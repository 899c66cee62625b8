"""The sync and asyncio clients have one API: same public names, same parameters, ``async``
exactly where the sync method does I/O (httpcore generates one from the other; we compare)."""

from __future__ import annotations

import inspect

import pytest

from openenv_zmq import AsyncBatchClient, AsyncEnvGroup, BatchClient, EnvGroup

PAIRS = [(BatchClient, AsyncBatchClient), (EnvGroup, AsyncEnvGroup)]
ASYNC_ONLY = {"connect"}
"""An asyncio client cannot connect in its constructor; the sync one does."""
CONTEXT = {"__enter__": "__aenter__", "__exit__": "__aexit__"}


def public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") or name in CONTEXT or name in CONTEXT.values()
    }


@pytest.mark.parametrize(("sync", "aio"), PAIRS, ids=lambda c: c.__name__)
def test_same_public_names(sync: type, aio: type) -> None:
    sync_names = {CONTEXT.get(name, name) for name in public(sync)}
    assert sync_names == set(public(aio)) - ASYNC_ONLY


@pytest.mark.parametrize(("sync", "aio"), PAIRS, ids=lambda c: c.__name__)
def test_same_parameters_and_async_where_sync_is_plain(sync: type, aio: type) -> None:
    aio_members = public(aio)
    for name, member in public(sync).items():
        twin = aio_members[CONTEXT.get(name, name)]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        assert callable(member) and callable(twin), name
        sync_params = list(inspect.signature(member).parameters.values())
        aio_params = list(inspect.signature(twin).parameters.values())
        assert [(p.name, p.kind, p.default) for p in sync_params] == [
            (p.name, p.kind, p.default) for p in aio_params
        ], name
        assert not inspect.iscoroutinefunction(member), name
        assert inspect.iscoroutinefunction(twin), name


def test_constructors_match() -> None:
    for sync, aio in PAIRS:
        sync_params = inspect.signature(sync).parameters
        aio_params = inspect.signature(aio).parameters
        assert [(p.name, p.kind, p.default) for p in sync_params.values()] == [
            (p.name, p.kind, p.default) for p in aio_params.values()
        ], sync.__name__
