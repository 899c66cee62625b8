"""Stable-Baselines3's PPO on CartPole, the envs stepped by openenv-zmq through its SB3 adapter.
Needs SB3 and torch (``pip install -e ".[examples]"``).

    python examples/sb3_ppo_cartpole.py                   # an embedded broker and 2 workers
    python examples/sb3_ppo_cartpole.py --address tcp://127.0.0.1:5555 --total-timesteps 100000

``make_vec_env`` stands where SB3's own ``make_vec_env("CartPole-v1", n_envs=8)`` would;
``VecMonitor`` records the episodes, and ``evaluate_policy`` scores the trained policy.
"""

from __future__ import annotations

import argparse

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecMonitor

from broker.bench import cluster_at
from openenv_zmq.sb3 import make_vec_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="a broker hosting cartpole (default: an embedded one)")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--total-timesteps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-steps", type=int, default=256, help="steps per env per rollout")
    parser.add_argument("--eval-episodes", type=int, default=20)
    args = parser.parse_args()
    # torch's worker threads spin while they wait: on a small machine they starve the env workers
    torch.set_num_threads(1)
    with cluster_at(args.address, "cartpole") as address:
        venv = VecMonitor(make_vec_env(address, "cartpole", args.num_envs))
        try:
            model = PPO(
                "MlpPolicy", venv, n_steps=args.n_steps, seed=args.seed, device="cpu", verbose=1
            )
            model.learn(total_timesteps=args.total_timesteps)
            mean, std = evaluate_policy(model, venv, n_eval_episodes=args.eval_episodes)
            print(f"mean episode return of the trained policy: {mean:.1f} ± {std:.1f}")
        finally:
            venv.close()


if __name__ == "__main__":
    main()
