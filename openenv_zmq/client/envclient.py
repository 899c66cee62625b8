"""A client for one session of an OpenEnv server over its ``/ws`` WebSocket (openenv-core's
``EnvClient``).

Subclasses name their types and implement three hooks: ``_step_payload(action)`` (the ``data`` of a
step frame), ``_parse_result(payload)`` and ``_parse_state(payload)``. The frames sent are exactly
openenv-core's: ``{"type":"reset","data":{...kwargs}}``, ``{"type":"step","data":{...action}}``,
``{"type":"state"}`` and, on close, ``{"type":"close"}``.

Exceptions raised by every request method:

- :class:`~openenv_zmq.errors.TransportError` when the server cannot be reached within the connect
  timeout or the connection drops; :class:`~openenv_zmq.errors.RequestTimeout` when a reply does not
  arrive within the message timeout (the connection is then dropped, see ``_request``).
- :class:`EnvServerError` for an ``{"type":"error"}`` frame; ``.code`` is the server's code
  (``VALIDATION_ERROR``, ``EXECUTION_ERROR``, ``CAPACITY_REACHED``, ...). After one of
  :data:`SESSION_ENDING_CODES` the connection is dropped and the next request opens a new session.
- :class:`~openenv_zmq.errors.ProtocolError` for a reply that is not JSON or of the wrong type.

``websockets`` (the ``gateway`` extra) is imported on first connect only, so importing an env
package that re-exports its client does not require it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

from openenv_zmq.errors import EnvServerError, ProtocolError, RequestTimeout, TransportError
from openenv_zmq.extras import missing_extra
from openenv_zmq.types import StepResult

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

ActT = TypeVar("ActT")
ObsT = TypeVar("ObsT")
StateT = TypeVar("StateT")
T = TypeVar("T")

SESSION_ENDING_CODES = frozenset({"CAPACITY_REACHED", "FACTORY_ERROR", "SESSION_ERROR"})
"""Error codes after which the server closes the connection."""
LOOP_THREAD_NAME = "openenv-zmq-envclient"
"""Name of the thread running a :class:`SyncEnvClient`'s event loop."""
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_LOOP_STOP_TIMEOUT_S = 5.0


def ws_endpoint(base_url: str) -> str:
    """The ``/ws`` URL for ``base_url``: ``http`` becomes ``ws``, ``https`` becomes ``wss``.

    A URL with no scheme is taken as ``ws://``, as openenv-core does.
    """
    url = base_url.rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url.removeprefix("http://")
    elif url.startswith("https://"):
        url = "wss://" + url.removeprefix("https://")
    elif not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    return f"{url}/ws"


class EnvClient(ABC, Generic[ActT, ObsT, StateT]):
    """One session (one env instance) on an OpenEnv server, async.

    ``async with client:`` connects and closes; without it the first request connects and
    :meth:`close` must be awaited. Requests from concurrent tasks are sent one at a time, because
    the server answers strictly in order with no request id. For blocking use call :meth:`sync`.
    """

    def __init__(
        self,
        base_url: str,
        connect_timeout_s: float = 10.0,
        message_timeout_s: float = 60.0,
        max_message_size_mb: float = 100.0,
    ) -> None:
        self._ws_url = ws_endpoint(base_url)
        self._connect_timeout = connect_timeout_s
        self._message_timeout = message_timeout_s
        self._max_message_size = int(max_message_size_mb * 1024 * 1024)
        self._ws: ClientConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def ws_url(self) -> str:
        """The WebSocket URL this client connects to (``.../ws``)."""
        return self._ws_url

    async def connect(self) -> EnvClient[ActT, ObsT, StateT]:
        """Open the WebSocket (a new server session) unless already open; returns ``self``.

        Raises :class:`~openenv_zmq.errors.TransportError` if the server does not accept the
        connection within ``connect_timeout_s``, and :class:`ModuleNotFoundError` naming the
        ``gateway`` extra when ``websockets`` is not installed.
        """
        if self._ws is not None:
            return self
        try:
            from websockets.asyncio.client import connect as ws_connect
        except ModuleNotFoundError as exc:
            raise missing_extra("gateway", type(self).__name__, exc) from exc

        # A proxy from the environment would swallow loopback traffic; openenv-core works around
        # this by editing NO_PROXY, which is process-wide.
        host = urlsplit(self._ws_url).hostname or ""
        try:
            self._ws = await ws_connect(
                self._ws_url,
                open_timeout=self._connect_timeout,
                max_size=self._max_message_size,
                proxy=None if host in _LOOPBACK_HOSTS else True,
            )
        except Exception as exc:
            raise TransportError(f"could not connect to {self._ws_url}: {exc!r}") from exc
        return self

    async def disconnect(self) -> None:
        """Send ``{"type":"close"}`` and close the WebSocket; the server ends the session."""
        ws, self._ws = self._ws, None
        if ws is None:
            return
        from websockets.exceptions import ConnectionClosed

        # The server may already have closed the session (after CAPACITY_REACHED, for one).
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "close"}))
        await ws.close()

    async def close(self) -> None:
        """Close the session. The client may be used again: the next request reconnects."""
        await self.disconnect()

    async def reset(self, **kwargs: Any) -> StepResult[ObsT]:
        """Start a new episode; ``kwargs`` (``seed``, ``episode_id``, ...) go to the env's reset."""
        data = await self._request({"type": "reset", "data": kwargs}, "observation")
        return self._parse_result(data)

    async def step(self, action: ActT, **kwargs: Any) -> StepResult[ObsT]:
        """Apply ``action``. ``kwargs`` are accepted and ignored, as in openenv-core: the ``/ws``
        step frame carries nothing but the action."""
        data = await self._request(
            {"type": "step", "data": self._step_payload(action)}, "observation"
        )
        return self._parse_result(data)

    async def state(self) -> StateT:
        """The env's current state."""
        return self._parse_state(await self._request({"type": "state"}, "state"))

    def sync(self) -> SyncEnvClient[ActT, ObsT, StateT]:
        """A blocking wrapper around this client, running it on an event loop of its own."""
        return SyncEnvClient(self)

    async def __aenter__(self) -> EnvClient[ActT, ObsT, StateT]:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> None:
        raise TypeError("EnvClient is async: use 'async with client:' or 'with client.sync():'")

    def __exit__(self, *exc_info: object) -> None:
        """Never reached: ``__enter__`` raises."""

    @abstractmethod
    def _step_payload(self, action: ActT) -> dict[str, Any]:
        """The ``data`` of the step frame for ``action``."""

    @abstractmethod
    def _parse_result(self, payload: dict[str, Any]) -> StepResult[ObsT]:
        """A reset/step reply's ``data``: ``{"observation": {...}, "reward": R, "done": D}``."""

    @abstractmethod
    def _parse_state(self, payload: dict[str, Any]) -> StateT:
        """A state reply's ``data``: every state field, extras included."""

    async def _request(self, frame: dict[str, Any], reply_type: str) -> dict[str, Any]:
        """Send ``frame`` and return the ``data`` of its reply, which must be of ``reply_type``."""
        from websockets.exceptions import ConnectionClosed

        async with self._lock:
            await self.connect()
            ws = self._ws
            assert ws is not None
            try:
                # A server ending the session sends its error frame, then closes; the frame stays
                # buffered, so a failed send still reads it rather than reporting a bare close.
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps(frame))
                raw = await asyncio.wait_for(ws.recv(), timeout=self._message_timeout)
            except TimeoutError as exc:
                # The late reply would be read as the answer to the next request.
                await self._drop()
                raise RequestTimeout(
                    f"no reply to {frame['type']!r} from {self._ws_url} "
                    f"within {self._message_timeout} s"
                ) from exc
            except (ConnectionClosed, OSError) as exc:
                await self._drop()
                raise TransportError(f"connection to {self._ws_url} lost: {exc!r}") from exc
            try:
                return _reply_data(raw, reply_type)
            except EnvServerError as exc:
                if exc.code in SESSION_ENDING_CODES:
                    # The next request reconnects and gets a new session.
                    await self._drop()
                raise

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()


def _reply_data(raw: str | bytes, reply_type: str) -> dict[str, Any]:
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"server reply is not JSON: {raw[:200]!r}") from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("data", {}), dict):
        raise ProtocolError(f"server reply is not a frame: {raw[:200]!r}")
    data: dict[str, Any] = reply.get("data", {})
    kind = reply.get("type")
    if kind == "error":
        raise EnvServerError(
            str(data.get("code", "UNKNOWN")), str(data.get("message", "unknown error")), data
        )
    if kind != reply_type:
        raise ProtocolError(f"expected a {reply_type!r} reply, got {kind!r}")
    return data


class SyncEnvClient(Generic[ActT, ObsT, StateT]):
    """Blocking use of an :class:`EnvClient`: ``with env.sync() as client: client.reset()``.

    The async client runs on an event loop in a daemon thread started on first use and stopped by
    :meth:`close`, so its connection always belongs to one loop. Methods raise what the async ones
    raise.
    """

    def __init__(self, async_client: EnvClient[ActT, ObsT, StateT]) -> None:
        self._async = async_client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def async_client(self) -> EnvClient[ActT, ObsT, StateT]:
        """The :class:`EnvClient` this one drives on its own event loop."""
        return self._async

    def connect(self) -> SyncEnvClient[ActT, ObsT, StateT]:
        """As :meth:`EnvClient.connect`, blocking; returns this client."""
        self._run(self._async.connect())
        return self

    def reset(self, **kwargs: Any) -> StepResult[ObsT]:
        """As :meth:`EnvClient.reset`, blocking."""
        return self._run(self._async.reset(**kwargs))

    def step(self, action: ActT, **kwargs: Any) -> StepResult[ObsT]:
        """As :meth:`EnvClient.step`, blocking."""
        return self._run(self._async.step(action, **kwargs))

    def state(self) -> StateT:
        """As :meth:`EnvClient.state`, blocking."""
        return self._run(self._async.state())

    def close(self) -> None:
        """Close the session and stop the loop thread (a later call starts a new one)."""
        if self._loop is None:
            return
        try:
            self._run(self._async.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncEnvClient[ActT, ObsT, StateT]:
        try:
            return self.connect()
        except BaseException:
            # __exit__ will not run, and the loop thread must not outlive a failed ``with``.
            self._stop_loop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        # Every request is bounded by the client's own connect and message timeouts.
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coro, self._ensure_loop()
        )
        return future.result()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=LOOP_THREAD_NAME, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            return loop

    def _stop_loop(self) -> None:
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_LOOP_STOP_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()
