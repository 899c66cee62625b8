"""``python -m bench.compare [--quick] [--out DIR]``: this runtime against its baselines.

Run from the repository root. Steps echo and CartPole envs over a grid of env counts through an
in-process loop, this runtime with 1 and 2 workers, Gymnasium's vector envs, EnvPool and
OpenEnv's own server; prints every measurement and the target ratios, and writes
``DIR/compare.json`` and ``DIR/compare.png`` (``DIR`` defaults to the current directory).
``--quick`` runs a smaller grid in under two minutes; the full grid takes under ten on two cores.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.comparison import run_comparison


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description="Compare this runtime with its baselines."
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smaller grid and 1 s per point (under 2 minutes)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path.cwd(),
        help="folder for compare.json and compare.png (default: the current directory)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_comparison(args.quick, args.out.resolve())


if __name__ == "__main__":
    sys.exit(main())
