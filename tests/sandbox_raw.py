"""A session handler that runs raw Python with ``exec``: the test-only way to reach the sandbox's
own layers without smolagents' interpreter in front of them. Never registered anywhere."""

from __future__ import annotations

import traceback
from typing import Any


class RawPython:
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        scope: dict[str, Any] = {}
        try:
            exec(request["code"], scope)
        except BaseException as exc:
            return {
                "ok": False,
                "error": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc()[-2000:],
            }
        return {"ok": True, "result": repr(scope.get("result"))}
