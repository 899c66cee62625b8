"""Optional dependencies: the error that says which extra installs a missing one."""

from __future__ import annotations


def missing_extra(extra: str, needed_by: str, exc: ModuleNotFoundError) -> ModuleNotFoundError:
    """``exc`` retold as the package ``needed_by`` lacks and how to get it, e.g. ``the gateway
    needs fastapi: pip install 'openenv-zmq[gateway]'``; raise it ``from exc``."""
    # The package to install, not the submodule that failed (websockets, not websockets.asyncio).
    package = (exc.name or "").partition(".")[0] or "a package it imports"
    return ModuleNotFoundError(
        f"{needed_by} needs {package}: pip install 'openenv-zmq[{extra}]'", name=package
    )
