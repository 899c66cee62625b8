"""Finding envs by name, and the models an env speaks.

A name is one of: a name published in the ``openenv_zmq.envs`` entry point group
(``echo = "echo_env.server.echo_environment:EchoEnvironment"``), a ``module:Class`` spec, or a
prefixed name (``gym:CartPole-v1``) whose prefix :data:`PREFIXES` maps to a factory. Nothing here
imports an env interface: loading a type by its ``module:Class`` path needs only this module.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from openenv_zmq.errors import EnvNotFound
from openenv_zmq.types import Action, Observation, State

ENTRY_POINT_GROUP = "openenv_zmq.envs"
PREFIXES: dict[str, str] = {"gym:": "openenv_zmq.worker.gymnasium:gymnasium_env"}
"""Name prefix -> ``module:function`` that turns the whole name into an env class."""


@dataclass(frozen=True)
class EnvTypes:
    """The pydantic models an env speaks."""

    action: type[BaseModel]
    observation: type[BaseModel]
    state: type[BaseModel]

    def to_wire(self) -> dict[str, str]:
        return {
            "action": type_path(self.action),
            "observation": type_path(self.observation),
            "state": type_path(self.state),
        }


def type_path(cls: type) -> str:
    """``module:qualname``, the form :func:`import_object` reads back."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_object(path: str) -> Any:
    """Import ``package.module:Attr.Nested``; raises :class:`EnvNotFound` with the reason."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise EnvNotFound(f"{path!r} is not of the form 'module:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvNotFound(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    except Exception as exc:  # the module's own code failed: a syntax error, a bad import-time call
        raise EnvNotFound(
            f"importing module {module_name!r} for {path!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for attr in qualname.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise EnvNotFound(f"module {module_name!r} has no attribute {qualname!r}") from None
    return obj


def add_app_dir(path: str) -> None:
    """Make the modules in folder ``path`` importable by name, ahead of installed ones: uvicorn's
    ``--app-dir``, for an env in the user's own folder. The one edit of ``sys.path`` anywhere."""
    if path not in sys.path:
        sys.path.insert(0, path)


def registered_envs() -> dict[str, str]:
    """Env names published through the entry point group, mapped to their ``module:Class``."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def resolve_env(name: str) -> type:
    """The env class for a registered name, a prefixed name or a ``module:Class`` spec.

    Raises :class:`EnvNotFound` naming the registered envs when nothing matches.
    """
    for prefix, factory in PREFIXES.items():
        if name.startswith(prefix):
            prefixed: type = import_object(factory)(name)
            return prefixed
    if ":" in name:
        cls = import_object(name)
    else:
        target = registered_envs().get(name)
        if target is None:
            known = ", ".join(sorted(registered_envs())) or "none"
            raise EnvNotFound(
                f"no env named {name!r} (registered: {known}); use 'module:Class' for others"
            )
        cls = import_object(target)
    if not isinstance(cls, type) or not all(
        hasattr(cls, attr) for attr in ("reset", "step", "state")
    ):
        raise EnvNotFound(f"{name!r} is not an environment class (needs reset, step and state)")
    return cls


def _as_model(candidate: Any) -> type[BaseModel] | None:
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        return candidate
    return None


def _generic_args(cls: type, bound: dict[Any, Any] | None = None) -> tuple[Any, ...]:
    """The ``Environment[...]`` arguments of ``cls``, with type variables bound by subclasses.

    ``class Concrete(Base[MoveAction])`` over ``class Base(Environment[ActT, Obs, St])`` gives
    ``(MoveAction, Obs, St)``.
    """
    bound = bound or {}
    for base in cls.__dict__.get("__orig_bases__", cls.__bases__):
        origin = typing.get_origin(base) or base
        args = tuple(bound.get(arg, arg) for arg in typing.get_args(base))
        if not isinstance(origin, type) or origin is object:
            continue
        if origin.__name__ == "Environment" and args:
            return args
        parameters = getattr(origin, "__parameters__", ())
        found = _generic_args(origin, dict(zip(parameters, args, strict=False)))
        if found:
            return found
    return ()


@cache
def env_types(cls: type) -> EnvTypes:
    """The Action / Observation / State models of an env class.

    Read, in order, from class attributes ``action_type`` / ``observation_type`` / ``state_type``,
    from the ``Environment[...]`` generic parameters, then from the annotations of ``step`` and
    ``state``; OpenEnv's base models are the fallback.
    """
    args = _generic_args(cls)
    try:
        step_hints = typing.get_type_hints(getattr(cls, "step"))  # noqa: B009
    except Exception:  # an env's annotations may name types only its own module can resolve
        step_hints = {}
    state_getter = inspect.getattr_static(cls, "state", None)
    try:
        state_hints = (
            typing.get_type_hints(state_getter.fget) if isinstance(state_getter, property) else {}
        )
    except Exception:
        state_hints = {}
    candidates = {
        "action": (
            getattr(cls, "action_type", None),
            args[0] if len(args) > 0 else None,
            step_hints.get("action"),
        ),
        "observation": (
            getattr(cls, "observation_type", None),
            args[1] if len(args) > 1 else None,
            step_hints.get("return"),
        ),
        "state": (
            getattr(cls, "state_type", None),
            args[2] if len(args) > 2 else None,
            state_hints.get("return"),
        ),
    }
    fallbacks: dict[str, type[BaseModel]] = {
        "action": Action,
        "observation": Observation,
        "state": State,
    }
    found: dict[str, type[BaseModel]] = {}
    for role, options in candidates.items():
        found[role] = next((m for m in map(_as_model, options) if m is not None), fallbacks[role])
    return EnvTypes(found["action"], found["observation"], found["state"])
