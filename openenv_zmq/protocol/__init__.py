"""The wire protocol, sans I/O: message types and ``encode`` / ``decode``. No zmq import here.

Routing envelopes (added and removed by the sockets, not part of a message):

- client DEALER -> broker frontend ROUTER: ``[client_id, *message]``
- broker backend ROUTER -> worker DEALER: ``[worker_id, route, *message]`` where ``route`` is the
  client id for a forwarded request and ``b""`` for broker<->worker control messages. The worker
  sends every answer back with the same ``route`` frame first.

Conversations (``ids`` = env ids, ``w`` = worker id, ``s`` = client session token, ``g`` = env
group id, parts in brackets):

- ``HELLO`` -> broker: ``REPLY {session, lease_s, heartbeat_s}``: a client session. Every later
  request but ``PING`` and ``STATUS`` carries its token as ``s`` (else ``ERROR {type:
  ProtocolError}``); one the broker does not know gets ``UnknownSession`` (it restarted: nothing
  was done, send again in a new session), one whose lease ran out ``LeaseExpired``.
- ``ALLOC s {env, num_envs}`` -> broker: ``REPLY ids g [workers: int64 worker id per env id]``,
  the ids a new group ``g`` (the first of them) of session ``s``; or ``ERROR {type:
  NoWorkerAvailable | QuotaExceeded}``. ``ALLOC s g ids {env, num_envs}`` (``len(ids) ==
  num_envs``, each placed on a dead worker) re-places those ids on live workers, keeping the ids;
  a live or unknown id gets ``ERROR {type: RemoteError}``.
- ``STATUS`` -> broker: ``REPLY {status: {...}}``.  ``PING s?`` -> broker: ``REPLY`` (with ``s``,
  it renews the session's lease: a client's heartbeat).
- Every request below carries ``s`` and ``g``; the broker forwards it only when ``g`` is a group
  of session ``s`` and every one of ``ids`` is in it (else ``ERROR {type: NotOwner}``, or
  ``EnvNotOnWorker`` for a group it does not know). Workers ignore ``s`` and ``g``.
- ``CREATE w ids {env, kwargs, autoreset, concurrency?, timeout_s?}`` -> worker:
  ``REPLY ids {spaces?} [errors]`` where ``spaces`` (array envs) gives
  ``{action, observation}: {dtype, shape}``.
- ``RESET w ids [seeds?: list[int|None], kwargs?: list[dict]]``,
  ``STEP w ids {timeout_s?} [actions: list[dict] | array]`` -> worker:
  ``REPLY ids [obs: list[dict|None] | array, rew: f4[n], term: b1[n], trunc: b1[n], errors]``,
  plus ``final_obs`` (same layout as ``obs``) when an episode ended and was reset in the same
  step (``same_step`` autoreset mode). When a row's model is not the env's declared
  observation (or state) class, ``row_types`` (and ``final_row_types``) give each row's class as
  ``module:qualname`` (``None`` for rows of the declared class): a client builds it only if it is
  among the models of the env it asked for itself, and never imports a module a worker names.
- ``STATE w ids`` -> worker: ``REPLY ids [states: list[dict|None], errors]``.
- ``CLOSE w ids`` -> worker: ``REPLY ids [errors]``. The broker frees the slots as it forwards;
  it sends one itself, on route ``b"\\x00broker"``, for each worker's envs of a session whose
  lease ran out, and drops the answer.
- ``errors`` is always a list of ``[env_id, type name, message, traceback]`` rows, a row
  optionally ending in a map of details (``{errors: [...]}``, pydantic's error list, for an
  ``ActionValidationError``); an env in it has ``None`` in ``obs``/``states``, zero reward and
  false flags in its row.
- ``ERROR {type, message, traceback?}`` answers a whole request. With ``ids`` and an ``EnvError``
  type name (``WorkerLost``, ``SessionLost``) it means every one of those env ids failed that way.
- Worker control: ``READY {envs, capacity, name, pid, registration?, sandbox?, provider?,
  host?, instance?}`` -> ``WELCOME {worker, heartbeat, registration?}``; ``HEARTBEAT`` both
  ways; ``DISCONNECT {reason}`` tells a worker it is not registered (drop all env slots and send
  ``READY`` again); ``BYE`` is a worker leaving on purpose. ``registration`` counts a worker's
  registrations: it goes up each time the worker drops its env slots to register again, and a
  ``READY`` re-sent for the same one (its ``WELCOME`` is late) is welcomed again under the same
  worker id, not registered anew; ``WELCOME`` echoes it, so a worker ignores one meant for an
  earlier one.
- Draining (a worker told to stop, e.g. by Kubernetes' SIGTERM): ``DRAIN`` -> broker, no answer.
  The worker is leaving soon: the broker places no new env on it (it has no free slots, and
  ``STATUS`` shows it ``DRAINING``) but goes on forwarding requests for the envs it hosts, and
  the worker answers them. The worker sends ``BYE`` once all its envs are closed or its drain
  deadline has passed; from then on its envs answer ``SessionLost`` and ``ALLOC`` with ids
  re-places them, as for any worker that is gone. ``DRAIN`` is a control op of its own rather than
  a flag on ``HEARTBEAT`` so that a broker without it refuses it alone (``ERROR`` on the control
  route; the worker still leaves at its deadline) instead of every heartbeat. Sent once; again
  only if it could not be sent. A draining worker does not register again: when the broker
  forgets it (``DISCONNECT``, or silence) its envs are gone, and it leaves at once.
"""

from openenv_zmq.protocol.codec import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    ArraySpec,
    EnvIds,
    Frame,
    Limits,
    Message,
    Repeated,
    decode,
    decode_header,
    encode,
    pack,
    readable_request_id,
    unpack,
)
from openenv_zmq.protocol.ops import (
    ANSWER_OPS,
    BROKER_OPS,
    CONTROL_OPS,
    CONTROL_ROUTE,
    REQUEST_OPS,
    WORKER_OPS,
    Op,
)
from openenv_zmq.protocol.replies import error_message

__all__ = [
    "ANSWER_OPS",
    "BROKER_OPS",
    "CONTROL_OPS",
    "CONTROL_ROUTE",
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "REQUEST_OPS",
    "WORKER_OPS",
    "ArraySpec",
    "EnvIds",
    "Frame",
    "Limits",
    "Message",
    "Op",
    "Repeated",
    "decode",
    "decode_header",
    "encode",
    "error_message",
    "pack",
    "readable_request_id",
    "unpack",
]
