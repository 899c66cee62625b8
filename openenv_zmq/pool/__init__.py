"""Session pools: many OpenEnv sessions over one env group, their steps coalesced into batches.

``SessionPool`` serves threads (and coroutines of any event loop), ``AsyncSessionPool`` the
coroutines of one event loop; each hands out sessions with OpenEnv's client surface.
"""

from openenv_zmq.pool.aio import AsyncPoolSession, AsyncSessionPool
from openenv_zmq.pool.slots import SlotPool
from openenv_zmq.pool.sync import PoolSession, SessionPool

__all__ = ["AsyncPoolSession", "AsyncSessionPool", "PoolSession", "SessionPool", "SlotPool"]
