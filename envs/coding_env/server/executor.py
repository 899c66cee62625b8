"""The coding env's session handler: runs code with smolagents' interpreter, as OpenEnv does.

It lives inside a contained session process (or, with ``--unsafe-in-process-code``, in the
worker) and serves ``{"code": str}`` with ``{"stdout": str, "stderr": str, "exit_code": int}``.
The interpreter is OpenEnv's: ``LocalPythonExecutor`` with no extra authorised imports and the
``format_exc`` / ``safe_json_dumps`` tools. Its own timeout thread is off
(``timeout_seconds=None``): the deadline is kept by whoever owns the process, which kills it.

Two differences from OpenEnv, both so that a session cannot take its host down:

- ``stdout`` and ``stderr`` are each capped at :data:`MAX_OUTPUT_CHARS`, cut with smolagents' own
  ``truncate_content`` (head and tail kept). OpenEnv caps the print log (50,000 characters, which
  smolagents does here too) but not the JSON of the last value.
- Code that raises ``SystemExit``, ``KeyboardInterrupt`` or another ``BaseException`` gets an
  error result like any other exception; OpenEnv lets those escape its handler.
"""

from __future__ import annotations

import importlib
import json
import traceback
from typing import Any

from smolagents import LocalPythonExecutor
from smolagents.local_python_executor import BASE_BUILTIN_MODULES
from smolagents.utils import truncate_content

# Imported with this module, so a zygote that preloads it holds them before any session exists:
# a session's interpreter checks that they import, and a session may not read Python's files.
for _module in BASE_BUILTIN_MODULES:
    importlib.import_module(_module)

MAX_OUTPUT_CHARS = 1_000_000
"""The most characters of ``stdout`` (and of ``stderr``) a reply carries, before the marker."""

Reply = dict[str, Any]


def _safe_json_dumps(value: Any) -> str:
    """JSON, with ``repr`` for what JSON cannot encode: a tool the code may call."""
    return json.dumps(value, default=repr)


class PyExecutor:
    """One episode's interpreter: variables, imports and ``def``\\ s persist across requests."""

    def __init__(self) -> None:
        self._executor = LocalPythonExecutor(additional_authorized_imports=[], timeout_seconds=None)
        self._executor.send_tools(
            {"format_exc": traceback.format_exc, "safe_json_dumps": _safe_json_dumps}
        )

    def handle(self, request: dict[str, Any]) -> Reply:
        """Run ``request["code"]``; never raises. On success ``stdout`` is the print log, then
        (after a newline) the JSON of the last statement's value unless it is ``None``; on any
        error ``stdout`` is empty (prints before it are lost), ``stderr`` the traceback and
        ``exit_code`` 1. A request that is not ``{"code": str}`` is an error result too."""
        code = request.get("code") if isinstance(request, dict) else None
        if not isinstance(code, str):
            return _reply("", f"a coding request is {{'code': str}}, not {_shape(request)}", 1)
        try:
            result = self._executor(code)
        except BaseException:
            return _reply("", traceback.format_exc(), 1)
        parts = [result.logs] if result.logs else []
        if result.output is not None:
            rendered = _rendered(result.output)
            if rendered is not None:
                parts.append(rendered)
        return _reply("\n".join(parts), "", 0)


def _rendered(value: Any) -> str | None:
    """The value as JSON, else its ``repr``; ``None`` when both raise (OpenEnv then leaves it
    out of ``stdout``). Both may run the code's own methods, hence what they catch."""
    for render in (json.dumps, repr):
        try:
            return render(value)
        except BaseException:
            continue
    return None


def _shape(request: Any) -> str:
    """What a refused request looked like, without echoing its contents."""
    if isinstance(request, dict):
        return f"a dict with code of type {type(request.get('code')).__name__}"
    return f"a {type(request).__name__}"


def _reply(stdout: str, stderr: str, exit_code: int) -> Reply:
    return {
        "stdout": truncate_content(stdout, MAX_OUTPUT_CHARS),
        "stderr": truncate_content(stderr, MAX_OUTPUT_CHARS),
        "exit_code": exit_code,
    }
