"""An env module that imports in the CLI's process (so ``start`` accepts it) and fails in every
worker process: a worker that dies as it starts, each time it is started."""

import multiprocessing

if multiprocessing.current_process().name.startswith("openenv-worker-"):
    raise RuntimeError("this env module fails in workers on purpose")

from echo_env.server.echo_environment import EchoEnvironment as Env

__all__ = ["Env"]
