"""Test envs written the way OpenEnv's own envs are, to check that they run here unchanged.

Laid out like an OpenEnv env package: models in ``models.py``, one env per module under
``server/``, each importing its models relatively. The code imports only names that exist in both
openenv-core 0.3 and openenv 0.10, so one copy serves both.
"""
