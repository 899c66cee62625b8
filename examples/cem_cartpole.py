"""CartPole learned with numpy alone: the cross-entropy method over linear policies, each env of the
batch trying one candidate, stepped through the Gymnasium adapter.

    python examples/cem_cartpole.py                      # an embedded broker and 2 workers
    python examples/cem_cartpole.py --address tcp://127.0.0.1:5555   # a broker hosting cartpole

Each iteration samples ``num_envs`` policies ``action = (obs @ w + b > 0)`` around the current
mean, plays one episode with each (one env each, all in one batch per step), and moves the mean
to the best fifth. It stops once the mean policy's episodes average ``--target`` or the env
steps run out, and prints one JSON line per iteration and a last one with the result. A random
policy scores about 22; the mean policy usually passes 150 within ten iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from broker.bench import cluster_at
from openenv_zmq.gym import ZmqVectorEnv, make_vec

MAX_EPISODE_STEPS = 500
"""CartPole-v1's time limit."""


def play(
    envs: ZmqVectorEnv, weights: npt.NDArray[np.float64], seed: int
) -> npt.NDArray[np.float64]:
    """One episode per env, env ``i`` acting with ``weights[i]`` (4 gains and a bias); returns
    each episode's return. Envs whose episode ended keep stepping (autoreset) and are not
    counted again."""
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(envs.num_envs)
    playing = np.ones(envs.num_envs, bool)
    for _ in range(MAX_EPISODE_STEPS):
        actions = (np.einsum("ij,ij->i", obs, weights[:, :4]) + weights[:, 4] > 0).astype(np.int64)
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        returns += np.where(playing, rewards, 0.0)
        playing &= ~(terminated | truncated)
        if not playing.any():
            break
    return returns


def train(
    envs: ZmqVectorEnv, seed: int, max_env_steps: int, target: float
) -> Iterator[dict[str, float]]:
    """Yield one record per iteration: env steps so far, the candidates' mean return and the
    mean policy's."""
    rng = np.random.default_rng(seed)
    mean, std = np.zeros(5), np.ones(5)
    elite = max(2, envs.num_envs // 5)
    env_steps = 0
    for iteration in range(10_000):
        candidates = mean + std * rng.standard_normal((envs.num_envs, 5))
        returns = play(envs, candidates, seed + 2 * iteration * envs.num_envs)
        best = candidates[np.argsort(returns)[-elite:]]
        # extra noise that shrinks keeps the search from collapsing early
        mean, std = best.mean(axis=0), best.std(axis=0) + max(0.5 - 0.05 * iteration, 0.01)
        evaluation = play(
            envs, np.tile(mean, (envs.num_envs, 1)), seed + (2 * iteration + 1) * envs.num_envs
        )
        env_steps += int(returns.sum() + evaluation.sum())
        yield {
            "iteration": iteration,
            "env_steps": env_steps,
            "candidates_mean_return": float(returns.mean()),
            "mean_policy_return": float(evaluation.mean()),
        }
        if evaluation.mean() >= target or env_steps >= max_env_steps:
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="a broker hosting cartpole (default: an embedded one)")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-env-steps", type=int, default=300_000)
    parser.add_argument("--target", type=float, default=195.0)
    args = parser.parse_args()
    started = time.monotonic()
    with cluster_at(args.address, "cartpole") as address:
        record: dict[str, float] = {}
        with make_vec(address, "cartpole", args.num_envs) as envs:
            for record in train(envs, args.seed, args.max_env_steps, args.target):
                print(json.dumps(record), flush=True)
    result = {**record, "seconds": round(time.monotonic() - started, 1), "result": True}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
