"""Which OpenEnv this interpreter holds: ``openenv-core`` 0.3 or ``openenv`` 0.10."""

from importlib.metadata import packages_distributions, version

[DISTRIBUTION] = packages_distributions()["openenv"]
VERSION = tuple(int(part) for part in version(DISTRIBUTION).split(".")[:2])
SENDS_METADATA = VERSION >= (0, 10)
"""openenv 0.10's server sends an observation's metadata (inside it, and beside reward and done
when not empty); openenv-core 0.3's drops it. The gateway sends what 0.10 sends."""
