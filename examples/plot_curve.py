"""Plot a learning curve written by ``examples/ppo_cartpole.py --curve``.

python examples/plot_curve.py /tmp/curve.csv docs/learning_curve.png
"""

from __future__ import annotations

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

WINDOW = 20
"""Episodes in the moving average."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curve", help="CSV of global_step,episodic_return")
    parser.add_argument("png", help="where to write the plot")
    parser.add_argument("--title", default="PPO on CartPole-v1, envs stepped by openenv-zmq")
    args = parser.parse_args()
    with open(args.curve, newline="") as rows:
        table = [(int(step), float(ret)) for step, ret in list(csv.reader(rows))[1:]]
    steps = np.array([step for step, _ in table])
    returns = np.array([ret for _, ret in table])
    smooth = np.convolve(returns, np.ones(WINDOW) / WINDOW, mode="valid")
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(steps, returns, ".", alpha=0.25, label="episode return")
    axes.plot(steps[WINDOW - 1 :], smooth, label=f"mean of the last {WINDOW} episodes")
    axes.axhline(22, color="grey", linestyle=":", label="random policy (about 22)")
    axes.set_xlabel("env steps")
    axes.set_ylabel("episode return")
    axes.set_ylim(0, 510)
    axes.set_title(args.title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
