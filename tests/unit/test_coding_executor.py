"""The coding env's session handler answers as OpenEnv's executor does (OPENENV_PROTOCOL.md)."""

from __future__ import annotations

from typing import Any

import pytest
from coding_env.server import executor
from coding_env.server.executor import MAX_OUTPUT_CHARS, PyExecutor


def run(code: str, session: PyExecutor | None = None) -> dict[str, Any]:
    return (session or PyExecutor()).handle({"code": code})


def ok(stdout: str) -> dict[str, Any]:
    return {"stdout": stdout, "stderr": "", "exit_code": 0}


@pytest.mark.parametrize(
    ("code", "stdout"),
    [
        ("print('Hello')", "Hello\n"),
        ("'abc'", '"abc"'),
        ("x = 3", "3"),
        ("print('hi')\n42", "hi\n\n42"),
        ("import math", ""),
        ("None", ""),
        ("[1, 'a', None]", '[1, "a", null]'),
        ("{'k': 1.5}", '{"k": 1.5}'),
        ("print(1, 2, sep='-', end='!')", "1 2\n"),
        ("print('a')\nprint('b')", "a\nb\n"),
        ("import math\nmath.sqrt(16)", "4.0"),
    ],
)
def test_success(code: str, stdout: str) -> None:
    assert run(code) == ok(stdout)


def test_a_value_json_cannot_encode_is_its_repr() -> None:
    assert run("{1, 2}") == ok("{1, 2}")


def test_a_value_neither_json_nor_repr_can_render_is_left_out() -> None:
    code = "class A:\n    def __repr__(self):\n        raise ValueError('no')\nprint('log')\nA()"
    assert run(code) == ok("log\n")


def test_variables_imports_and_defs_persist_across_requests() -> None:
    session = PyExecutor()
    assert run("import math as m\ndef double(v):\n    return 2 * v\nx = 5", session) == ok("5")
    assert run("double(x) + m.floor(m.pi)", session) == ok("13")


def test_statements_before_an_error_keep_their_effects() -> None:
    session = PyExecutor()
    assert run("a = 1\nb = 1 / 0", session)["exit_code"] == 1
    assert run("a", session) == ok("1")


def failure(code: str) -> str:
    """The stderr of ``code``, which must fail as OpenEnv's executor fails."""
    reply = run(code)
    assert reply["stdout"] == ""
    assert reply["exit_code"] == 1
    assert reply["stderr"].startswith("Traceback (most recent call last):")
    stderr: str = reply["stderr"]
    return stderr


def test_a_runtime_error_is_the_interpreters_traceback() -> None:
    assert failure("print('lost')\n1 / 0").endswith(
        "InterpreterError: Code execution failed at line '1 / 0' due to: "
        "ZeroDivisionError: division by zero\n"
    )


def test_a_disallowed_import_fails() -> None:
    assert "InterpreterError: Import of os is not allowed. Authorized imports are: [" in failure(
        "import os"
    )


@pytest.mark.parametrize("name", ["open", "eval", "exec"])
def test_forbidden_functions_fail(name: str) -> None:
    assert f"Forbidden function evaluation: '{name}' is not among the explicitly allowed" in (
        failure(f"{name}('x')")
    )


def test_a_syntax_error_fails_to_parse() -> None:
    assert "Code parsing failed on line 1 due to: SyntaxError: " in failure("print('unclosed")


@pytest.mark.parametrize(
    ("raised", "last_line"),
    [
        ("SystemExit(3)", "SystemExit: 3"),
        ("KeyboardInterrupt()", "KeyboardInterrupt"),
        ("BaseException('why')", "BaseException: why"),
    ],
)
def test_a_base_exception_is_an_error_result_too(raised: str, last_line: str) -> None:
    # OpenEnv lets these escape its handler; here they must not end the session's process.
    assert failure(f"raise {raised}").endswith(f"\n{last_line}\n")


def test_the_tools_openenv_sends_are_there() -> None:
    assert run("safe_json_dumps({'s': {1}})") == ok('"{\\"s\\": \\"{1}\\"}"')
    code = "try:\n    1 / 0\nexcept ZeroDivisionError:\n    tb = format_exc()\n'division' in tb"
    assert run(code) == ok("true")


def test_the_print_log_is_capped_by_smolagents() -> None:
    stdout = run("for _ in range(20_000):\n    print('0123456789')")["stdout"]
    assert "\n..._This content has been truncated to stay below 50000 characters_...\n" in stdout


def test_stdout_is_capped_with_smolagents_wording(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "MAX_OUTPUT_CHARS", 10)
    stdout = run("'a' * 20 + 'b' * 20")["stdout"]
    assert stdout == (
        '"aaaa\n..._This content has been truncated to stay below 10 characters_...\nbbbb"'
    )


def test_stderr_is_capped_with_smolagents_wording(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "MAX_OUTPUT_CHARS", 100)
    stderr = failure("1 / 0")
    assert "\n..._This content has been truncated to stay below 100 characters_...\n" in stderr
    assert stderr.endswith("ZeroDivisionError: division by zero\n")


def test_output_under_the_cap_is_whole() -> None:
    assert MAX_OUTPUT_CHARS == 1_000_000
    assert run("'x' * 500_000")["stdout"] == '"' + "x" * 500_000 + '"'


@pytest.mark.parametrize(
    ("request_", "shape"),
    [
        ({}, "a dict with code of type NoneType"),
        ({"code": 3}, "a dict with code of type int"),
        (["print(1)"], "a list"),
        (None, "a NoneType"),
    ],
)
def test_a_bad_request_is_an_error_result(request_: Any, shape: str) -> None:
    assert PyExecutor().handle(request_) == {
        "stdout": "",
        "stderr": f"a coding request is {{'code': str}}, not {shape}",
        "exit_code": 1,
    }
