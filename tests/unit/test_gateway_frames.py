"""OpenEnv's /ws frames: parsing client frames and encoding replies, with no sockets."""

from __future__ import annotations

import json

import pytest
from echo_env import EchoAction, EchoObservation
from pydantic import ValidationError

from openenv_zmq.errors import ActionValidationError
from openenv_zmq.gateway.frames import (
    Close,
    ErrorCode,
    ErrorReply,
    Mcp,
    McpReply,
    Reset,
    StateRequest,
    Step,
    action_error,
    error_frame,
    mcp_frame,
    observation_frame,
    parse_frame,
    state_frame,
)
from openenv_zmq.gateway.jsonrpc import JsonRpcRequest
from openenv_zmq.types import State


def error_of(text: str) -> ErrorReply:
    reply = parse_frame(text)
    assert isinstance(reply, ErrorReply), reply
    return reply


def test_commands_parse() -> None:
    assert parse_frame('{"type":"reset"}') == Reset()
    assert parse_frame('{"type":"reset","data":{"seed":3,"episode_id":"e"}}') == Reset(
        3, {"episode_id": "e"}
    )
    assert parse_frame('{"type":"step","data":{"message":"hi"}}') == Step({"message": "hi"})
    assert parse_frame('{"type":"state"}') == StateRequest()
    assert parse_frame('{"type":"close"}') == Close()


@pytest.mark.parametrize("text", ["not json", "", "{", '{"type":"reset"'])
def test_non_json_is_invalid_json(text: str) -> None:
    reply = error_of(text)
    assert reply.code is ErrorCode.INVALID_JSON
    assert reply.message.startswith("Invalid JSON: ")


@pytest.mark.parametrize("text", ['{"type":"dance"}', "{}", '{"type":5}', '{"type":["step"]}'])
def test_unknown_type(text: str) -> None:
    reply = error_of(text)
    assert reply.code is ErrorCode.UNKNOWN_TYPE
    assert reply.message.startswith("Unknown message type: ")


def test_unknown_type_message_names_the_type() -> None:
    assert error_of('{"type":"tools","data":{}}').message == "Unknown message type: tools"


def test_mcp_frames_carry_a_json_rpc_request() -> None:
    command = parse_frame('{"type":"mcp","data":{"jsonrpc":"2.0","method":"tools/list","id":1}}')
    assert command == Mcp(JsonRpcRequest(jsonrpc="2.0", method="tools/list", id=1))


@pytest.mark.parametrize(
    "data", ['{"method":"tools/list","id":1}', '{"jsonrpc":"2.0","method":"m","params":[]}', "{}"]
)
def test_mcp_data_that_is_no_request_gets_openenv_s_json_rpc_error(data: str) -> None:
    reply = parse_frame(f'{{"type":"mcp","data":{data}}}')
    assert isinstance(reply, McpReply)
    frame = json.loads(reply.frame())
    assert frame["type"] == "mcp"
    assert frame["data"]["id"] is None and frame["data"]["error"]["code"] == -32600


def test_mcp_reply_frames_are_compact_json() -> None:
    reply = {"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}
    assert (
        mcp_frame(reply) == '{"type":"mcp","data":{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}}'
    )


@pytest.mark.parametrize(
    ("text", "error_type"),
    [
        ("[1, 2]", "dict_type"),
        ('"step"', "dict_type"),
        ('{"type":"step"}', "missing"),
        ('{"type":"step","data":null}', "dict_type"),
        ('{"type":"state","data":{}}', "extra_forbidden"),
        ('{"type":"close","extra":1}', "extra_forbidden"),
        ('{"type":"reset","data":{},"id":7}', "extra_forbidden"),
        ('{"type":"reset","data":[]}', "dict_type"),
        ('{"type":"reset","data":{"seed":"x"}}', "int_parsing"),
        ('{"type":"reset","data":{"seed":18446744073709551616}}', "less_than"),
        ('{"type":"mcp"}', "missing"),
        ('{"type":"mcp","data":[]}', "dict_type"),
        ('{"type":"mcp","data":{},"id":1}', "extra_forbidden"),
    ],
)
def test_invalid_frames_are_validation_errors(text: str, error_type: str) -> None:
    reply = error_of(text)
    assert reply.code is ErrorCode.VALIDATION_ERROR
    assert reply.message == "Invalid message"
    assert error_type in [e["type"] for e in reply.extra["errors"]]


def test_a_refused_action_carries_pydantic_errors() -> None:
    with pytest.raises(ValidationError) as caught:
        EchoAction.model_validate({"msg": "hi"})
    errors = json.loads(caught.value.json())
    refused = ActionValidationError(str(caught.value), 3, details={"errors": errors})
    reply = action_error(refused)
    assert reply.code is ErrorCode.VALIDATION_ERROR and reply.message == "Invalid message"
    kinds = {(e["type"], tuple(e["loc"])) for e in reply.extra["errors"]}
    assert kinds == {("missing", ("message",)), ("extra_forbidden", ("msg",))}
    frame = json.loads(reply.frame())
    assert frame["type"] == "error"
    assert frame["data"]["code"] == "VALIDATION_ERROR"
    # an array env's action space gives no error list: the worker's message is kept
    out_of_space = action_error(ActionValidationError("action 7 is not in Discrete(2)", 3))
    assert out_of_space.message == "action 7 is not in Discrete(2)"
    assert out_of_space.extra == {"errors": []}


def test_any_object_is_an_action_the_worker_validates() -> None:
    assert parse_frame('{"type":"step","data":{"anything":1}}') == Step({"anything": 1})


def test_parse_never_raises_on_garbage() -> None:
    samples = ["null", "1", "true", '{"type":null}', '{"type":"step","data":{"message":1}}']
    samples += ['{"type":"reset","data":{"seed":1.5}}', "NaN", "\x00", '{"type":"state"}' * 2]
    samples += ['{"type":"mcp","data":{"jsonrpc":"2.0","method":"tools/call","id":[]}}']
    for text in samples:
        for cut in range(len(text) + 1):
            parse_frame(text[:cut])


def test_observation_frame_matches_openenv() -> None:
    obs = EchoObservation(echoed_message="Hello", message_length=5, reward=0.5, metadata={"a": 1})
    assert observation_frame(obs) == (
        '{"type":"observation","data":{"observation":{"metadata":{"a":1},"echoed_message":"Hello",'
        '"message_length":5},"reward":0.5,"done":false,"metadata":{"a":1}}}'
    )
    as_dict = {"echoed_message": "é", "message_length": 1, "reward": None, "done": True}
    assert json.loads(observation_frame(as_dict))["data"] == {
        "observation": {"echoed_message": "é", "message_length": 1},
        "reward": None,
        "done": True,
    }
    assert "é" in observation_frame(as_dict)


def test_empty_metadata_stays_inside_the_observation_only() -> None:
    obs = EchoObservation(echoed_message="Hi", message_length=2, reward=0.2)
    assert json.loads(observation_frame(obs))["data"] == {
        "observation": {"metadata": {}, "echoed_message": "Hi", "message_length": 2},
        "reward": 0.2,
        "done": False,
    }


def test_state_frame_keeps_extras() -> None:
    state = State(episode_id="e1", step_count=2, last_exit_code=0)
    assert state_frame(state) == (
        '{"type":"state","data":{"episode_id":"e1","step_count":2,"last_exit_code":0}}'
    )


def test_error_frame_shape() -> None:
    frame = error_frame(ErrorCode.CAPACITY_REACHED, "full", active_sessions=2, max_sessions=2)
    assert json.loads(frame) == {
        "type": "error",
        "data": {
            "message": "full",
            "code": "CAPACITY_REACHED",
            "active_sessions": 2,
            "max_sessions": 2,
        },
    }
