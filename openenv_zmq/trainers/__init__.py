"""Adapters that put pooled sessions behind the env interfaces trainers call.

Each is written to the trainer's published interface and imports nothing of the trainer:

- :class:`~openenv_zmq.trainers.trl.TRLEnvironment`: TRL's ``GRPOTrainer(environment_factory=...)``;
- :class:`~openenv_zmq.trainers.skyrl.SkyRLTextEnv`: SkyRL-Gym's ``BaseTextEnv``;
- :class:`~openenv_zmq.trainers.envpool.EnvPool`: OpenEnv RFC 004's ``EnvPool(env, n)``.

Trainers that run their own rollout threads or coroutines (ART, veRL, torchforge) need no
adapter: they hold a session of a :class:`~openenv_zmq.SessionPool` per rollout.
"""

from openenv_zmq.trainers.envpool import EnvPool
from openenv_zmq.trainers.skyrl import SkyRLTextEnv
from openenv_zmq.trainers.trl import TRLEnvironment

__all__ = ["EnvPool", "SkyRLTextEnv", "TRLEnvironment"]
