"""The class a worker names in its replies (see :mod:`tests.integration.forged_env`); importing
this module marks that it was imported."""

from echo_env import EchoObservation

IMPORTED = True


class Planted(EchoObservation):
    planted: bool = True
