"""CartPole as a numpy vector env: Gymnasium's ``CartPole-v1`` for thousands of instances."""

from cartpole_env.vector import CartPoleVectorEnv

__all__ = ["CartPoleVectorEnv"]
