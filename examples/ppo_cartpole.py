# mypy: disable-error-code="no-untyped-call"
# (torch.distributions and Tensor.backward carry no annotations)
"""PPO on CartPole in one file, in CleanRL's style, with the envs stepped by openenv-zmq through its
Gymnasium adapter. Needs torch (``pip install -e ".[examples]"``).

    python examples/ppo_cartpole.py                       # an embedded broker and 2 workers
    python examples/ppo_cartpole.py --address tcp://127.0.0.1:5555 --total-timesteps 200000
    python examples/ppo_cartpole.py --curve /tmp/curve.csv   # then: examples/plot_curve.py

The only line that differs from a Gymnasium PPO is the one that makes the envs: ``make_vec``
instead of ``gymnasium.vector.SyncVectorEnv``. Every episode's return is printed as it ends
(and written to ``--curve`` as ``global_step,episodic_return``).
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import nn
from torch.distributions.categorical import Categorical

from broker.bench import cluster_at
from openenv_zmq.gym import make_vec


@dataclass
class Args:
    address: str | None
    seed: int
    num_envs: int
    total_timesteps: int
    num_steps: int
    learning_rate: float
    gamma: float
    gae_lambda: float
    num_minibatches: int
    update_epochs: int
    clip_coef: float
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    curve: str | None


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="a broker hosting cartpole (default: an embedded one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--num-steps", type=int, default=128, help="steps per env per rollout")
    parser.add_argument("--learning-rate", type=float, default=2.5e-4)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--gae-lambda", type=float, default=0.95)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--update-epochs", type=int, default=4)
    parser.add_argument("--clip-coef", type=float, default=0.2)
    parser.add_argument("--ent-coef", type=float, default=0.01)
    parser.add_argument("--vf-coef", type=float, default=0.5)
    parser.add_argument("--max-grad-norm", type=float, default=0.5)
    parser.add_argument("--curve", help="write global_step,episodic_return rows to this CSV")
    return Args(**vars(parser.parse_args()))


def layer(inputs: int, outputs: int, gain: float = float(np.sqrt(2))) -> nn.Linear:
    linear = nn.Linear(inputs, outputs)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.constant_(linear.bias, 0.0)
    return linear


class Agent(nn.Module):
    """Separate two-layer tanh networks for the value and the action logits."""

    def __init__(self, observations: int, actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer(observations, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1.0)
        )
        self.actor = nn.Sequential(
            layer(observations, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, actions, 0.01)
        )

    def value(self, x: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = self.critic(x)
        return value

    def act(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The action (sampled unless given), its log-probability, the entropy and the value."""
        policy = Categorical(logits=self.actor(x))
        if action is None:
            action = policy.sample()
        return action, policy.log_prob(action), policy.entropy(), self.critic(x)


def train(args: Args, envs: Any) -> list[tuple[int, float]]:
    """Train, printing as it goes; returns ``(global_step, episodic_return)`` per episode."""
    torch.manual_seed(args.seed)
    # torch's worker threads spin while they wait: on a small machine they starve the env workers
    torch.set_num_threads(1)
    np.random.seed(args.seed)
    n_obs = int(np.prod(envs.single_observation_space.shape))
    agent = Agent(n_obs, int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    iterations = args.total_timesteps // batch_size

    obs_buf = torch.zeros((args.num_steps, args.num_envs, n_obs))
    actions_buf = torch.zeros((args.num_steps, args.num_envs))
    logprobs_buf = torch.zeros((args.num_steps, args.num_envs))
    rewards_buf = torch.zeros((args.num_steps, args.num_envs))
    dones_buf = torch.zeros((args.num_steps, args.num_envs))
    values_buf = torch.zeros((args.num_steps, args.num_envs))

    curve: list[tuple[int, float]] = []
    global_step = 0
    started = time.monotonic()
    observation, _ = envs.reset(seed=args.seed)
    next_obs = torch.tensor(observation)
    next_done = torch.zeros(args.num_envs)
    for iteration in range(1, iterations + 1):
        # anneal the learning rate to zero over the run
        optimizer.param_groups[0]["lr"] = args.learning_rate * (1 - (iteration - 1) / iterations)
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs_buf[step], dones_buf[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.act(next_obs)
            values_buf[step] = value.flatten()
            actions_buf[step], logprobs_buf[step] = action, logprob
            observation, reward, terminated, truncated, infos = envs.step(action.numpy())
            rewards_buf[step] = torch.tensor(reward, dtype=torch.float32)
            next_obs = torch.tensor(observation)
            next_done = torch.tensor(terminated | truncated, dtype=torch.float32)
            if "episode" in infos:
                for row in np.flatnonzero(infos["_episode"]):
                    episodic_return = float(infos["episode"]["r"][row])
                    print(f"global_step={global_step}, episodic_return={episodic_return:.0f}")
                    curve.append((global_step, episodic_return))

        # generalised advantage estimation, bootstrapped from the value of the next observation
        with torch.no_grad():
            next_value = agent.value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards_buf)
            last = torch.zeros(args.num_envs)
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    not_done, following = 1.0 - next_done, next_value
                else:
                    not_done, following = 1.0 - dones_buf[t + 1], values_buf[t + 1]
                delta = rewards_buf[t] + args.gamma * following * not_done - values_buf[t]
                last = delta + args.gamma * args.gae_lambda * not_done * last
                advantages[t] = last
            returns = advantages + values_buf

        b_obs = obs_buf.reshape(-1, n_obs)
        b_actions, b_logprobs = actions_buf.reshape(-1), logprobs_buf.reshape(-1)
        b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
        order = np.arange(batch_size)
        for _ in range(args.update_epochs):
            np.random.shuffle(order)
            for start in range(0, batch_size, minibatch_size):
                mb = order[start : start + minibatch_size]
                _, new_logprob, entropy, new_value = agent.act(b_obs[mb], b_actions[mb].long())
                ratio = (new_logprob - b_logprobs[mb]).exp()
                mb_adv = b_advantages[mb]
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                policy_loss = torch.max(
                    -mb_adv * ratio,
                    -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef),
                ).mean()
                value_loss = 0.5 * ((new_value.view(-1) - b_returns[mb]) ** 2).mean()
                loss = policy_loss - args.ent_coef * entropy.mean() + args.vf_coef * value_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        rate = global_step / (time.monotonic() - started)
        print(f"iteration {iteration}/{iterations}: {rate:,.0f} env steps/s")
    return curve


def main() -> None:
    args = parse_args()
    with cluster_at(args.address, "cartpole") as address:
        envs = gymnasium.wrappers.vector.RecordEpisodeStatistics(
            make_vec(address, "cartpole", args.num_envs)
        )
        try:
            curve = train(args, envs)
        finally:
            envs.close()
    if args.curve:
        with open(args.curve, "w", newline="") as output:
            rows = csv.writer(output)
            rows.writerow(["global_step", "episodic_return"])
            rows.writerows(curve)


if __name__ == "__main__":
    main()
