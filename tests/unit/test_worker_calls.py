"""Envs that wait: async envs awaited together, blocking envs on threads, deadlines.

Through the in-process transport (real broker and worker cores and the worker's call runner, no
sockets), and the worker core alone for what happens while calls are still running.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from broker.inprocess import InProcessBroker
from openenv_zmq import BatchClient
from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.errors import ClientError, EnvBusy, NeedsReset, StepTimeout
from openenv_zmq.protocol import Message, Op, decode, encode
from openenv_zmq.worker.calls import Mode
from openenv_zmq.worker.core import Pending, WorkerCore
from openenv_zmq.worker.runner import CallRunner
from tests.unit.worker_envs import (
    ASYNC_WAIT,
    BLOCKING_WAIT,
    OWN_DEADLINE,
    THREADED_WAIT,
    WaitAction,
    WaitObservation,
    _Waiter,
)

ENVS = [ASYNC_WAIT, BLOCKING_WAIT, THREADED_WAIT, OWN_DEADLINE, "echo"]


@pytest.fixture
def client() -> Iterator[BatchClient]:
    _Waiter.forget()
    broker = InProcessBroker(ENVS, workers=1, capacity=512)
    with BatchClient(transport=broker.connect()) as client:
        yield client
    broker.close()


def waits(seconds: list[float], end: bool = False) -> list[WaitAction]:
    return [WaitAction(seconds=s, end=end) for s in seconds]


def test_an_async_envs_steps_are_awaited_together(client: BatchClient) -> None:
    envs = client.make(ASYNC_WAIT, 64)
    envs.reset()
    r = envs.step(waits([0.05] * 64))
    assert r.errors == {}
    assert all(isinstance(o, WaitObservation) and o.waited == 0.05 for o in r.observations)
    assert _Waiter.most_running == 64


def test_concurrency_bounds_the_steps_waiting_at_once(client: BatchClient) -> None:
    envs = client.make(ASYNC_WAIT, 32, concurrency=5)
    envs.reset()
    assert envs.step(waits([0.02] * 32)).errors == {}
    assert _Waiter.most_running == 5


def test_a_blocking_env_steps_on_as_many_threads_as_its_concurrency(client: BatchClient) -> None:
    envs = client.make(BLOCKING_WAIT, 32, concurrency=8)
    envs.reset()
    r = envs.step(waits([0.05] * 32))
    assert r.errors == {}
    np.testing.assert_array_equal(r.rewards, np.ones(32, np.float32))
    assert _Waiter.most_running == 8


def test_a_class_that_says_it_blocks_steps_on_threads_unasked(client: BatchClient) -> None:
    envs = client.make(THREADED_WAIT, 16)
    envs.reset()
    assert envs.step(waits([0.05] * 16)).errors == {}
    assert _Waiter.most_running == 4  # its STEP_CONCURRENCY


def test_a_sync_env_left_alone_steps_inline_one_after_the_other(client: BatchClient) -> None:
    envs = client.make(BLOCKING_WAIT, 8)
    envs.reset()
    assert envs.step(waits([0.001] * 8)).errors == {}
    assert _Waiter.most_running == 1


@pytest.mark.parametrize("env", [ASYNC_WAIT, BLOCKING_WAIT])
def test_a_step_past_its_deadline_is_abandoned_and_the_rest_answered(
    client: BatchClient, env: str
) -> None:
    envs = client.make(env, 4, concurrency=4, timeout_s=0.2)
    first = envs.reset()
    instances = [o.instance for o in first.observations]
    r = envs.step(waits([0.0, 3.0, 0.01, 0.0]))
    assert set(r.errors) == {int(envs.env_ids[1])}
    error = r.errors[int(envs.env_ids[1])]
    assert isinstance(error, StepTimeout)
    assert "deadline of 0.2 s" in str(error) and "discarded" in str(error)
    assert [r.observations[i].waited for i in (0, 2, 3)] == [0.0, 0.01, 0.0]
    assert r.observations[1] is None and r.rewards[1] == 0.0
    if env == ASYNC_WAIT:  # cancelled, and closed since nothing runs in it any more
        assert _Waiter.cancelled == 1 and _Waiter.closed == 1
    else:  # its thread may still be in it: never touched again, not even to close it
        assert _Waiter.closed == 0
    # The abandoned instance is never stepped again: the env needs a reset, which builds anew.
    again = envs.step(waits([0.0] * 4))
    assert isinstance(again.errors[int(envs.env_ids[1])], NeedsReset)
    fresh = envs.reset(env_ids=envs.env_ids[1:2])
    assert fresh.observations[0].instance not in instances
    assert envs.step(waits([0.0] * 4)).errors == {}


def test_a_steps_own_timeout_overrides_the_groups(client: BatchClient) -> None:
    envs = client.make(BLOCKING_WAIT, 2, concurrency=2)
    envs.reset()
    r = envs.step(waits([0.0, 3.0]), timeout_s=0.2)
    assert list(r.errors) == [int(envs.env_ids[1])]
    assert isinstance(r.errors[int(envs.env_ids[1])], StepTimeout)


def test_a_deadline_takes_a_sync_env_off_the_serial_path(client: BatchClient) -> None:
    envs = client.make(BLOCKING_WAIT, 3)
    envs.reset()
    r = envs.step(waits([0.0, 3.0, 0.0]), timeout_s=0.2)
    assert isinstance(r.errors[int(envs.env_ids[1])], StepTimeout)
    assert len(r.errors) == 1
    # one at a time, but the step abandoned at its deadline does not hold up the next one
    assert _Waiter.most_running == 2


def test_an_env_that_keeps_its_own_deadline_answers_with_its_own_observation(
    client: BatchClient,
) -> None:
    envs = client.make(OWN_DEADLINE, 2, timeout_s=0.1)
    envs.reset()
    r = envs.step(waits([0.0, 2.0]))
    assert r.errors == {}
    assert r.observations[1].metadata == {"timed_out_after": 0.1}


def test_an_async_envs_exception_fails_that_env_alone(client: BatchClient) -> None:
    envs = client.make(ASYNC_WAIT, 3)
    envs.reset()
    r = envs.step(waits([0.0, -1.0, 0.0]))
    assert list(r.errors) == [int(envs.env_ids[1])]
    assert "negative time" in str(r.errors[int(envs.env_ids[1])])
    assert "ValueError" in r.errors[int(envs.env_ids[1])].remote_traceback
    assert r.observations[0].waited == 0.0


def test_same_step_autoreset_on_the_async_path(client: BatchClient) -> None:
    envs = client.make(ASYNC_WAIT, 2, autoreset=AutoresetMode.SAME_STEP)
    envs.reset()
    r = envs.step([WaitAction(end=True), WaitAction()])
    assert r.terminated.tolist() == [True, False]
    assert r.final_observations is not None
    assert r.final_observations[0].done and r.observations[0].done is False
    assert r.rewards.tolist() == [1.0, 1.0]


def test_next_step_autoreset_on_the_threaded_path(client: BatchClient) -> None:
    envs = client.make(BLOCKING_WAIT, 2, concurrency=2, autoreset="next_step")
    envs.reset()
    assert envs.step([WaitAction(end=True), WaitAction()]).terminated.tolist() == [True, False]
    r = envs.step(waits([0.0, 0.0]))
    assert r.rewards.tolist() == [0.0, 1.0]  # the resetting step earns nothing
    assert r.observations[0].waited == 0.0 and not r.terminated.any()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be a positive int"),
        ({"concurrency": 2.5}, "concurrency must be a positive int"),
        ({"timeout_s": -1}, "timeout_s must be a positive number"),
        ({"timeout_s": float("inf")}, "timeout_s must be a positive number"),
        ({"env_kwargs": {"a": 1}, "a": 2}, "given both as keywords and in env_kwargs"),
    ],
)
def test_bad_runtime_options_are_refused_before_anything_is_made(
    client: BatchClient, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ClientError, match=message):
        client.make(ASYNC_WAIT, 2, **options)
    assert client.status()["env_slots"]["used"] == 0


def test_a_bad_step_timeout_is_refused(client: BatchClient) -> None:
    envs = client.make(ASYNC_WAIT, 1)
    envs.reset()
    with pytest.raises(ClientError, match="timeout_s"):
        envs.step(waits([0.0]), timeout_s=0)


# The worker core alone: what it answers while calls it handed out are still running.


def request(op: Op, env_ids: list[int], request_id: int = 1, **kw: Any) -> list[Any]:
    ids = np.asarray(env_ids, dtype=np.int64)
    return encode(Message(op, request_id, worker=0, env_ids=ids, **kw))


def handled(core: WorkerCore, frames: list[Any]) -> Message:
    answer = core.handle(frames)
    assert not isinstance(answer, Pending)
    return decode(answer)


def completed(core: WorkerCore, frames: list[Any]) -> Message:
    """The answer, after running its calls here one by one if it had any."""
    answer = core.handle(frames)
    if isinstance(answer, Pending):
        for call in answer.calls:
            call.run()
        answer = core.finish(answer)
    return decode(answer)


@pytest.fixture
def core() -> WorkerCore:
    _Waiter.forget()
    core = WorkerCore([BLOCKING_WAIT, ASYNC_WAIT], capacity=16)
    meta = {"env": BLOCKING_WAIT, "concurrency": 2}
    assert handled(core, request(Op.CREATE, [0, 1], meta=meta)).parts["errors"] == []
    assert completed(core, request(Op.RESET, [0, 1])).parts["errors"] == []
    return core


def pending_step(core: WorkerCore, env_ids: list[int]) -> Pending:
    actions = [{"seconds": 0.0}] * len(env_ids)
    answer = core.handle(request(Op.STEP, env_ids, 9, parts={"actions": actions}))
    assert isinstance(answer, Pending)
    return answer


def test_an_env_with_a_call_running_is_busy_but_its_state_can_be_read(core: WorkerCore) -> None:
    pending = pending_step(core, [0])
    assert [c.mode for c in pending.calls] == [Mode.THREAD]
    actions = [{"seconds": 0.0}] * 2
    again = completed(core, request(Op.STEP, [0, 1], 10, parts={"actions": actions}))
    assert [row[:2] for row in again.parts["errors"]] == [[0, EnvBusy.__name__]]
    assert again.parts["obs"][1]["waited"] == 0.0
    assert handled(core, request(Op.STATE, [0])).parts["states"][0]["step_count"] == 0
    for call in pending.calls:
        call.run()
    reply = decode(core.finish(pending))
    assert reply.parts["errors"] == [] and reply.parts["obs"][0]["waited"] == 0.0
    assert handled(core, request(Op.STATE, [0])).parts["states"][0]["step_count"] == 1


def test_an_env_closed_while_its_call_runs_is_closed_when_the_call_ends(core: WorkerCore) -> None:
    pending = pending_step(core, [0, 1])
    assert handled(core, request(Op.CLOSE, [0])).parts["errors"] == []
    assert core.slots_used == 1 and _Waiter.closed == 0
    for call in pending.calls:
        call.run()
    assert decode(core.finish(pending)).parts["errors"] == []
    assert _Waiter.closed == 1


def test_drop_all_while_calls_run_leaves_them_to_close_their_envs(core: WorkerCore) -> None:
    pending = pending_step(core, [0, 1])
    core.drop_all()
    assert core.slots_used == 0 and _Waiter.closed == 0
    for call in pending.calls:
        call.run()
    core.finish(pending)
    assert _Waiter.closed == 2


def test_the_runner_calls_back_once_every_call_has_ended(core: WorkerCore) -> None:
    runner = CallRunner(max_threads=1)
    pending = pending_step(core, [0, 1])
    finished: list[Pending] = []
    done = threading.Event()

    def on_done(p: Pending) -> None:
        finished.append(p)
        done.set()

    try:
        runner.submit(pending, on_done)
        assert done.wait(5)
    finally:
        runner.close()
    assert finished == [pending]
    assert decode(core.finish(pending)).parts["errors"] == []


def test_max_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_threads"):
        CallRunner(max_threads=0)
