"""Finding env classes by name and reading the models they speak."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import pytest
from echo_env.models import EchoAction, EchoObservation
from echo_env.server.echo_environment import EchoEnvironment
from pydantic import BaseModel

from openenv_zmq.env import Environment
from openenv_zmq.errors import EnvNotFound
from openenv_zmq.registry import (
    ENTRY_POINT_GROUP,
    PREFIXES,
    EnvTypes,
    env_types,
    import_object,
    registered_envs,
    resolve_env,
    type_path,
)
from openenv_zmq.types import Action, Observation, State

HERE = __name__


class MoveAction(Action):
    dx: int


class GridObservation(Observation):
    x: int = 0


class GridState(State):
    x: int = 0


class AnnotatedEnv:
    """OpenEnv's shape without our base class: types only in the annotations."""

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> GridObservation:
        self._state = GridState(episode_id=episode_id)
        return GridObservation()

    def step(
        self, action: MoveAction, timeout_s: float | None = None, **kwargs: Any
    ) -> GridObservation:
        self._state.x += action.dx
        self._state.step_count += 1
        return GridObservation(x=self._state.x)

    @property
    def state(self) -> GridState:
        return self._state


class AttributeEnv(Environment[EchoAction, EchoObservation, State]):
    """Explicit attributes win over the generic parameters."""

    action_type = MoveAction
    observation_type = GridObservation
    state_type = GridState

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> Any:
        return GridObservation()

    def step(self, action: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return GridObservation()

    @property
    def state(self) -> Any:
        return GridState()


class UntypedEnv:
    def reset(self, seed=None, episode_id=None, **kwargs):
        return Observation()

    def step(self, action, timeout_s=None, **kwargs):
        return Observation()

    @property
    def state(self):
        return State()


class LoudEchoEnvironment(EchoEnvironment):
    """A subclass inherits its parent's generic parameters."""


class HalfTypedEnv(Environment[MoveAction, Any, Any]):
    """Generic parameters that are not models fall through to annotations, then to the bases."""

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> Any:
        return GridObservation()

    def step(
        self, action: MoveAction, timeout_s: float | None = None, **kwargs: Any
    ) -> GridObservation:
        return GridObservation()

    @property
    def state(self) -> Any:
        return State()


ActT = TypeVar("ActT", bound=Action)


class GenericBaseEnv(Environment[ActT, GridObservation, GridState], Generic[ActT]):
    """A reusable base generic in its action type, as a family of envs would share."""

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> GridObservation:
        return GridObservation()

    def step(self, action: ActT, timeout_s: float | None = None, **kwargs: Any) -> GridObservation:
        return GridObservation()

    @property
    def state(self) -> GridState:
        return GridState()


class ConcreteEnv(GenericBaseEnv[MoveAction]):
    pass


NOT_A_CLASS = object()


class NoStep:
    def reset(self) -> None: ...

    @property
    def state(self) -> None: ...


# -- resolve_env -------------------------------------------------------------------------------


def test_echo_is_registered_through_the_entry_point() -> None:
    assert registered_envs()["echo"] == "echo_env.server.echo_environment:EchoEnvironment"
    assert ENTRY_POINT_GROUP == "openenv_zmq.envs"


def test_resolve_by_registered_name() -> None:
    assert resolve_env("echo") is EchoEnvironment


def test_resolve_by_module_and_class() -> None:
    assert resolve_env("echo_env.server.echo_environment:EchoEnvironment") is EchoEnvironment
    assert resolve_env("echo_env.server:EchoEnvironment") is EchoEnvironment


def test_resolve_a_class_that_does_not_subclass_environment() -> None:
    assert resolve_env(f"{HERE}:AnnotatedEnv") is AnnotatedEnv


def test_resolve_a_nested_qualname() -> None:
    assert import_object("openenv_zmq.types:State.model_config") is State.model_config


def test_unknown_name_lists_the_registered_envs() -> None:
    with pytest.raises(EnvNotFound, match=r"no env named 'nope' \(registered: .*\becho\b.*\)"):
        resolve_env("nope")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:Env", r"cannot import module 'no_such_module_xyz' for"),
        ("echo_env.no_such_submodule:Env", r"cannot import module 'echo_env.no_such_submodule'"),
        ("echo_env.server.echo_environment:Nope", r"has no attribute 'Nope'"),
        ("echo_env.server.echo_environment:EchoEnvironment.nope", r"no attribute 'EchoEn"),
        (f"{HERE}:NOT_A_CLASS", r"is not an environment class \(needs reset, step and state\)"),
        (f"{HERE}:NoStep", r"is not an environment class"),
        ("echo_env.models:EchoAction", r"is not an environment class"),
        ("builtins:int", r"is not an environment class"),
        (
            "tests.unit.env_module_failing_at_import:Env",
            r"importing module 'tests.unit.env_module_failing_at_import' for .* raised"
            r" RuntimeError: this env module is broken on purpose",
        ),
        ("echo_env.server.echo_environment:", r"is not of the form 'module:Class'"),
        (":EchoEnvironment", r"is not of the form 'module:Class'"),
        (":", r"is not of the form 'module:Class'"),
    ],
)
def test_bad_specs_raise_env_not_found(spec: str, match: str) -> None:
    with pytest.raises(EnvNotFound, match=match):
        resolve_env(spec)


PREFIXED_NAMES: list[str] = []


def env_for_prefixed_name(name: str) -> type:
    PREFIXED_NAMES.append(name)
    return AnnotatedEnv


def test_a_prefix_hands_the_whole_name_to_its_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PREFIXES, "fixture:", f"{HERE}:env_for_prefixed_name")
    assert resolve_env("fixture:Some-Id-v0") is AnnotatedEnv
    assert PREFIXED_NAMES == ["fixture:Some-Id-v0"]


def test_gym_names_go_through_the_prefix_table() -> None:
    assert PREFIXES["gym:"] == "openenv_zmq.worker.gymnasium:gymnasium_env"


# -- env_types ---------------------------------------------------------------------------------


def test_types_from_generic_parameters() -> None:
    assert env_types(EchoEnvironment) == EnvTypes(EchoAction, EchoObservation, State)


def test_types_inherited_by_a_subclass() -> None:
    assert env_types(LoudEchoEnvironment) == EnvTypes(EchoAction, EchoObservation, State)


def test_types_from_annotations_only() -> None:
    assert env_types(AnnotatedEnv) == EnvTypes(MoveAction, GridObservation, GridState)


def test_types_from_explicit_attributes_win() -> None:
    assert env_types(AttributeEnv) == EnvTypes(MoveAction, GridObservation, GridState)


def test_types_named_nowhere_come_from_the_one_model_of_each_kind_its_module_holds() -> None:
    # This module holds several actions and observations (so: the bases) but one State subclass.
    assert env_types(UntypedEnv) == EnvTypes(Action, Observation, GridState)


def test_types_mix_sources_per_role() -> None:
    assert env_types(HalfTypedEnv) == EnvTypes(MoveAction, GridObservation, GridState)


def test_types_through_a_generic_intermediate_base() -> None:
    assert env_types(ConcreteEnv).action is MoveAction


def test_generic_intermediate_base_keeps_its_concrete_parameters() -> None:
    got = env_types(ConcreteEnv)
    assert (got.observation, got.state) == (GridObservation, GridState)


def test_type_paths_import_back() -> None:
    paths = [type_path(m) for m in (EchoAction, EchoObservation, State)]
    assert paths == [
        "echo_env.models:EchoAction",
        "echo_env.models:EchoObservation",
        "openenv_zmq.types:State",
    ]
    assert [import_object(path) for path in paths] == [EchoAction, EchoObservation, State]


def test_type_path_of_a_nested_class() -> None:
    class Inner(BaseModel):
        pass

    assert type_path(Inner) == f"{HERE}:test_type_path_of_a_nested_class.<locals>.Inner"
    assert type_path(MoveAction) == f"{HERE}:MoveAction"


def test_a_resolved_env_runs_with_its_types() -> None:
    cls = resolve_env(f"{HERE}:AnnotatedEnv")
    types = env_types(cls)
    env = cls()
    env.reset(episode_id="ep")
    obs = env.step(types.action.model_validate({"dx": 3}))
    assert obs == GridObservation(x=3)
    assert env.state == GridState(episode_id="ep", step_count=1, x=3)
