"""Tic-tac-toe against a deterministic opponent, in the style of OpenEnv's connect4 env.

No generic parameters, an ``__init__`` that skips ``super().__init__()``, a ``reset()`` that takes
no arguments, and models named only in ``step``'s annotations.

The agent plays X and moves first; O answers on the lowest-numbered free cell. Rewards: 1.0 when
X wins, -1.0 when O wins, 0.0 for a draw and for every other move (reset too). An illegal move (a
cell outside 0-8 or already taken) ends the episode with reward -1.0 and the reason in
``metadata["error"]``, as connect4 does; the board is left unchanged. A step after the game is over
raises ``ValueError``. X wins in three moves with 4, 2, 6 (O plays 0, 1).
"""

from uuid import uuid4

from openenv.core.env_server.interfaces import Environment  # type: ignore[import-untyped]

from ..models import TicTacToeAction, TicTacToeObservation, TicTacToeState  # noqa: TID252  # OpenEnv's layout

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


class TicTacToeEnvironment(Environment):  # type: ignore[misc]
    def __init__(self):
        # Deliberately no super().__init__(), an idiom a host must tolerate: no transform or rubric.
        self._cells = [" "] * 9
        self._moves: list[int] = []
        self._winner: str | None = None
        self._over = False
        self._state = TicTacToeState(episode_id=str(uuid4()), step_count=0)

    def reset(self):
        self._cells = [" "] * 9
        self._moves = []
        self._winner = None
        self._over = False
        self._state = TicTacToeState(episode_id=str(uuid4()), step_count=0, board=self._rows())
        return self._observation(reward=0.0, done=False)

    def step(self, action: TicTacToeAction) -> TicTacToeObservation:
        if self._over:
            raise ValueError("the game is over; call reset()")
        self._state.step_count += 1
        position = action.position
        if not 0 <= position < 9 or self._cells[position] != " ":
            self._over = True
            return self._observation(
                reward=-1.0, done=True, metadata={"error": f"illegal move: {position}"}
            )
        self._play(position, "X")
        if self._winner is None:
            self._play(self._cells.index(" "), "O")
        self._state.board = self._rows()
        self._state.moves = list(self._moves)
        self._over = self._winner is not None
        reward = {"X": 1.0, "O": -1.0}.get(self._winner or "", 0.0)
        return self._observation(reward=reward, done=self._over)

    @property
    def state(self) -> TicTacToeState:
        return self._state

    def _play(self, position: int, mark: str) -> None:
        self._cells[position] = mark
        self._moves.append(position)
        if any(all(self._cells[i] == mark for i in line) for line in LINES):
            self._winner = mark
        elif " " not in self._cells:
            self._winner = "draw"

    def _rows(self) -> list[list[str]]:
        return [self._cells[row : row + 3] for row in (0, 3, 6)]

    def _observation(
        self, reward: float, done: bool, metadata: dict[str, str] | None = None
    ) -> TicTacToeObservation:
        legal = [] if done else [i for i, cell in enumerate(self._cells) if cell == " "]
        return TicTacToeObservation(
            board=self._rows(),
            legal_actions=legal,
            winner=self._winner,
            reward=reward,
            done=done,
            metadata=metadata or {},
        )
