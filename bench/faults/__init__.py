"""``python -m bench.faults [--quick] [--json] [--only fuzz|kills|soak]``: trust and failure.

Three measurements, each on a broker of its own started as its own process (``openenv-broker
start --workers 2 --env echo`` on ipc sockets in a fresh 0700 folder), stopped with its workers
at the end, Ctrl-C and errors included:

- ``fuzz`` (:mod:`bench.faults.fuzz`): 100,000 garbage messages (``--quick`` 5,000) at the
  frontend and backend while a client steps 64 envs beside them: answers to the garbage, the
  client's errors and steps, broker RSS before and after, broker and workers alive.
- ``kills`` (:mod:`bench.faults.kills`): ``kill -9`` a worker 20 times (``--quick`` 3) under a
  client stepping 256 envs: calls that raised, per-env ``WorkerLost`` / ``SessionLost``, envs
  re-placed by ``reset(env_ids=lost)``, time to step all envs cleanly again, workers restarted.
- ``soak`` (:mod:`bench.faults.soak`): 60 s (``--quick`` 10 s) of 4 clients making, stepping
  and closing groups of random sizes, and a client killed holding envs each cycle, with a 2 s
  lease: cycles, errors, broker RSS, slots used and sessions live once the leases ran out.

Each prints a table; a figure with an expected value is an invariant, and the exit code is 1
when one does not hold. ``--json`` prints one JSON object per measurement instead.
"""
