"""Contained sessions: env code that runs untrusted input (the coding env) in its own process.

```
worker ──exec, empty environment──> zygote (smolagents and the session modules imported)
   │                                   │ fork per session
   │ socketpair per session            ▼
   └──────── length-prefixed msgpack ──> session process: rlimits, own uid, seccomp, netns
```

A worker that hosts such an env starts one zygote before it opens any socket or thread. Every
session is a process forked from it, hardened, then serving the requests of one env instance;
``reset()`` replaces it with a fresh one and a missed deadline kills it. What an env sees is
in :mod:`.sessions` (:class:`~openenv_zmq.sandbox.sessions.SessionHost`), which host a process
has is :mod:`.host`'s, and the layers and what each stops are in :mod:`.layers`.
"""
