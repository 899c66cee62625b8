"""``python -m bench.compare [--quick] [--duration S] [--out DIR]``: this runtime against its
baselines, and the cost of one batch.

Run from the repository root. Measures, in one run on one machine:

- env-steps/s of echo and CartPole envs over a grid of env counts (CartPole from 4 envs up)
  through an in-process loop, this runtime with 1 and 2 workers, Gymnasium's vector envs,
  EnvPool and OpenEnv's own server;
- the median seconds of one step call of a full CartPole batch against its size (1 to 1,024
  envs): this runtime on one worker, EnvPool's synchronous step, Gymnasium's ``SyncVectorEnv``
  and ``AsyncVectorEnv`` (to 256 envs: it forks a process per env);
- for one echo env, this runtime's step p50 against a direct DEALER<->ROUTER round trip, the
  same over tcp with CURVE off and on, and the CPU the client, the broker and the worker each
  spend per round trip (read from ``/proc``, as ``python -m bench.profile`` does).

Prints every measurement and the targets (ratios to a baseline measured in the same run, and
the CPU per round trip against its absolute goal), and writes ``DIR/compare.json``,
``DIR/compare.png`` (env-steps/s against num_envs) and ``DIR/latency.png`` (step p50 against
batch size); ``DIR`` defaults to :data:`DEFAULT_OUT`, outside the repository. ``--quick``
runs a smaller grid at 1 s a point in some three minutes on two cores; the full grid, at 3 s a
point, takes about ten.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.comparison import run_comparison

DEFAULT_OUT = Path(tempfile.gettempdir()) / "openenv-zmq-compare"
"""Where the report goes unless ``--out`` says: never into the working tree it is run from."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description="Compare this runtime with its baselines."
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smaller grid and 1 s per point (some 3 minutes)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="seconds measured per point instead of the grid's (3, or 1 with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for compare.json, compare.png and latency.png (default: {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be more than 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_comparison(args.quick, args.out.resolve(), args.duration)


if __name__ == "__main__":
    sys.exit(main())
