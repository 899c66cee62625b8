"""A pids cgroup for a zygote and its sessions, where this process may make one (best effort).

cgroup v1 (a ``pids`` hierarchy) and v2 (the unified hierarchy, with the ``pids`` controller
delegated to our cgroup) both work. Finding the hierarchy is pure (:func:`pids_hierarchy`, from
the texts of ``/proc/self/mountinfo`` and ``/proc/self/cgroup``); making and joining the cgroup
is :func:`join_pids_cgroup`.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Hierarchy:
    path: str
    """Our own cgroup's folder in the hierarchy that has the pids controller."""
    version: int


def _own_cgroup(proc_cgroup: str, version: int) -> str | None:
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == 2 and controllers == "") or (
            version == 1 and "pids" in controllers.split(",")
        ):
            return path
    return None


def pids_hierarchy(mountinfo: str, proc_cgroup: str) -> Hierarchy | None:
    """Where our cgroup sits in a hierarchy that can count pids, v1 first (it is what a v1 host
    enforces), else v2; ``None`` when neither is mounted."""
    candidates: list[tuple[int, str, str]] = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup" and "pids" in options.split(","):
            candidates.append((1, root, mount_point))
        elif fstype == "cgroup2":
            candidates.append((2, root, mount_point))
    for version, root, mount_point in sorted(candidates):
        own = _own_cgroup(proc_cgroup, version)
        if own is None:
            continue
        relative = posixpath.relpath(own, root) if own.startswith(root) else own
        path = posixpath.normpath(posixpath.join(mount_point, relative.lstrip("/")))
        return Hierarchy(path, version)
    return None


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def join_pids_cgroup(name: str, pids_max: int) -> tuple[str, str]:
    """Make cgroup ``name`` under ours with ``pids.max`` and move this process into it (its
    children follow). Returns the layer's state and the cgroup's folder ("" when off)."""
    try:
        hierarchy = pids_hierarchy(_read("/proc/self/mountinfo"), _read("/proc/self/cgroup"))
    except OSError as exc:
        return f"off: cannot read this process's cgroups: {exc}", ""
    if hierarchy is None:
        return "off: no cgroup hierarchy with the pids controller is mounted", ""
    folder = os.path.join(hierarchy.path, name)
    try:
        os.mkdir(folder)
    except OSError as exc:
        return f"off: cannot make a cgroup in {hierarchy.path}: {exc.strerror}", ""
    try:
        _write(os.path.join(folder, "pids.max"), str(pids_max))
        _write(os.path.join(folder, "cgroup.procs"), str(os.getpid()))
    except OSError as exc:
        remove_cgroup(folder)
        reason = "the pids controller is not delegated here" if exc.errno == 2 else exc.strerror
        return f"off: cannot join a pids cgroup in {hierarchy.path}: {reason}", ""
    return f"on: pids.max {pids_max} (cgroup v{hierarchy.version})", folder


def remove_cgroup(folder: str, wait_s: float = 2.0) -> None:
    """Remove the cgroup once its processes are gone (killed ones take a moment to leave)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(folder)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
