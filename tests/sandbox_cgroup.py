"""A cgroup the tests make (memory and pids limits) to hold a zygote running bombs, so that a
sandbox regression costs a failed test, not the machine."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openenv_zmq.sandbox.cgroups import remove_cgroup

MEMORY_MAX = 3 * 2**30
PIDS_MAX = 512


def _own(controller: str) -> tuple[Path, str] | None:
    """The folder of this process's cgroup for a v1 ``controller`` (or v2), and its kind."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            folder = Path("/sys/fs/cgroup", controller, path.lstrip("/"))
            if folder.is_dir():
                return folder, "v1"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
                folder = root / line[3:].lstrip("/")
                if (folder / "cgroup.controllers").exists():
                    return folder, "v2"
    return None


@contextlib.contextmanager
def bomb_cgroup() -> Iterator[Callable[[], contextlib.AbstractContextManager[None]]]:
    """A fresh memory- and pids-limited cgroup; ``with inside(): ...`` runs the body in it, so a
    process started there (forked or exec'd) stays in it. Removed on exit, once its processes
    are gone: end them before leaving."""
    made: list[tuple[Path, Path]] = []  # (the new cgroup, this process's own)
    name = f"openenv-zmq-test-{uuid.uuid4().hex[:8]}"
    try:
        for controller, limits in (
            ("memory", {"memory.limit_in_bytes": MEMORY_MAX, "memory.max": MEMORY_MAX}),
            ("pids", {"pids.max": PIDS_MAX}),
        ):
            own = _own(controller)
            if own is None:
                pytest.skip(f"no {controller} cgroup to hold the bombs in")
            parent, kind = own
            folder = parent / name
            try:
                folder.mkdir()
            except OSError as exc:
                pytest.skip(f"cannot make a {controller} cgroup to hold the bombs: {exc}")
            made.append((folder, parent))
            for file, value in limits.items():
                if (folder / file).exists():
                    (folder / file).write_text(str(value))
            if kind == "v2":
                break  # one unified folder holds both limits

        @contextlib.contextmanager
        def inside() -> Iterator[None]:
            for folder, _ in made:
                (folder / "cgroup.procs").write_text(str(os.getpid()))
            try:
                yield
            finally:
                for _, parent in made:
                    (parent / "cgroup.procs").write_text(str(os.getpid()))

        yield inside
    finally:
        for folder, _ in made:
            remove_cgroup(str(folder), wait_s=5.0)
