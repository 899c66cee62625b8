"""The coding env's unit tests (OpenEnv's reset and reward tests among them) again, with every
session a real contained process of one zygote shared by the module."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from coding_env.server.python_codeact_env import SESSION_FACTORY

from openenv_zmq.sandbox import host
from openenv_zmq.sandbox.contained import ContainedHost
from openenv_zmq.sandbox.sessions import Session, SessionHost
from tests.unit.test_coding_env import *  # noqa: F403 - the same tests, on this module's host

pytestmark = pytest.mark.integration


class Borrowed(SessionHost):
    """The module's host lent to one test: closing it at the test's end ends the sessions the
    test opened (the unit tests leave an env or two unclosed) and leaves the zygote running."""

    def __init__(self, lender: ContainedHost) -> None:
        self.lender = lender
        self.opened: list[Session] = []

    def open(self, factory: str) -> Session:
        self.opened.append(self.lender.open(factory))
        return self.opened[-1]

    async def open_async(self, factory: str) -> Session:
        self.opened.append(await self.lender.open_async(factory))
        return self.opened[-1]

    @property
    def layers(self) -> Mapping[str, str]:
        return self.lender.layers

    def close(self) -> None:
        for session in self.opened:
            session.close()


@pytest.fixture(scope="module")
def zygote() -> Iterator[ContainedHost]:
    contained = ContainedHost(preload=[SESSION_FACTORY])
    yield contained
    contained.close()


@pytest.fixture  # type: ignore[no-redef]  # replaces the imported tests' host
def code_host(zygote: ContainedHost) -> Iterator[None]:
    host.configure(lambda: Borrowed(zygote))
    yield
    host.shutdown()
    host.reset_configuration()
