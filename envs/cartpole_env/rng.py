"""numpy's ``Generator(PCG64(SeedSequence(seed)))`` for many streams at once, on arrays.

Gymnasium seeds every env with its own generator; holding thousands of ``Generator`` objects
costs memory and a Python call per instance. :class:`PCG64Streams` repeats numpy's seeding and
the PCG64 generator (with ``Generator.uniform``) row-wise on ``uint64`` arrays and draws exactly
the numbers numpy would, stream by stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

# numpy's SeedSequence constants (numpy/random/bit_generator.pyx, after O'Neill's seed_seq).
_POOL_SIZE = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_MASK32 = 0xFFFFFFFF

# PCG64's 128-bit LCG multiplier (PCG_DEFAULT_MULTIPLIER_128), split into 64-bit halves.
_MULT_HI, _MULT_LO = np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645)
_MULT_LO_0, _MULT_LO_1 = _MULT_LO & np.uint64(_MASK32), _MULT_LO >> np.uint64(32)


def _seed_words(seed: int) -> list[int]:
    """``seed`` as numpy's SeedSequence reads it: 32-bit words, lowest first, at least one."""
    words = [seed & _MASK32]
    seed >>= 32
    while seed:
        words.append(seed & _MASK32)
        seed >>= 32
    return words


def _seed_pool(entropy: U32) -> U32:
    """``SeedSequence(words).pool`` for each row of ``entropy`` (shape ``(n, words)``).

    The hash constants evolve the same way for every row, so they stay Python ints.
    """
    hash_const = _INIT_A

    def hashmix(value: U32) -> U32:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & _MASK32
        value = value * np.uint32(hash_const)
        return value ^ (value >> np.uint32(16))

    def mix(x: U32, y: U32) -> U32:
        result: U32 = x * np.uint32(_MIX_MULT_L) - y * np.uint32(_MIX_MULT_R)
        return result ^ (result >> np.uint32(16))

    count, width = entropy.shape
    pool: U32 = np.empty((count, _POOL_SIZE), np.uint32)
    for i in range(_POOL_SIZE):
        pool[:, i] = hashmix(entropy[:, i] if i < width else np.zeros(count, np.uint32))
    for src in range(_POOL_SIZE):
        for dst in range(_POOL_SIZE):
            if src != dst:
                pool[:, dst] = mix(pool[:, dst], hashmix(pool[:, src]))
    for src in range(_POOL_SIZE, width):
        for dst in range(_POOL_SIZE):
            pool[:, dst] = mix(pool[:, dst], hashmix(entropy[:, src]))
    return pool


def _generate_state(pool: U32, n_words: int) -> U64:
    """``SeedSequence.generate_state(n_words, np.uint64)`` for each row of ``pool``."""
    hash_const = _INIT_B
    words = np.empty((len(pool), 2 * n_words), np.uint32)
    for i in range(2 * n_words):
        value = pool[:, i % _POOL_SIZE] ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_B) & _MASK32
        value = value * np.uint32(hash_const)
        words[:, i] = value ^ (value >> np.uint32(16))
    low, high = words[:, 0::2].astype(np.uint64), words[:, 1::2].astype(np.uint64)
    return np.asarray(low | (high << np.uint64(32)))


class PCG64Streams:
    """``n`` independent ``np.random.Generator(np.random.PCG64(seed))`` streams as four arrays.

    Each stream's 128-bit state and increment are kept as (high, low) ``uint64`` halves, and
    every operation works on a batch of rows at once. Draws equal numpy's bit for bit for the
    methods here. A stream must be seeded (:meth:`seed` or :meth:`seed_randomly`) before it is
    drawn from; an unseeded one is all zeros.
    """

    def __init__(self, n: int) -> None:
        self.state_hi = np.zeros(n, np.uint64)
        self.state_lo = np.zeros(n, np.uint64)
        self.inc_hi = np.zeros(n, np.uint64)
        self.inc_lo = np.zeros(n, np.uint64)

    def seed(self, rows: npt.NDArray[np.intp], seeds: Sequence[int]) -> None:
        """Seed ``rows[i]`` as ``PCG64(seeds[i])`` would; seeds are non-negative ints.

        Raises ``TypeError`` for a seed that is not an int and ``ValueError`` for a negative one.
        """
        by_width: dict[int, list[int]] = {}
        words: list[list[int]] = []
        for position, seed in enumerate(seeds):
            if isinstance(seed, np.integer):
                seed = int(seed)
            if not isinstance(seed, int):
                raise TypeError(f"seed must be an int or None, not {type(seed).__name__}")
            if seed < 0:
                raise ValueError(f"seed must be non-negative, got {seed}")
            words.append(_seed_words(seed))
            by_width.setdefault(len(words[-1]), []).append(position)
        for positions in by_width.values():
            entropy = np.array([words[p] for p in positions], np.uint32)
            self._seed_entropy(rows[positions], entropy)

    def seed_randomly(self, rows: npt.NDArray[np.intp]) -> None:
        """Seed ``rows`` from fresh OS entropy, as ``PCG64(None)`` does (128 bits each)."""
        entropy = np.random.default_rng().integers(
            0, _MASK32, size=(len(rows), _POOL_SIZE), dtype=np.uint32, endpoint=True
        )
        self._seed_entropy(rows, entropy)

    def _seed_entropy(self, rows: npt.NDArray[np.intp], entropy: U32) -> None:
        # PCG64.__init__: pcg64_set_seed(state, words[0:2], words[2:4]), where
        # pcg_setseq_128_srandom_r sets inc = initseq << 1 | 1, steps, adds the seed, steps.
        seed = _generate_state(_seed_pool(entropy), 4)
        self.inc_hi[rows] = (seed[:, 2] << np.uint64(1)) | (seed[:, 3] >> np.uint64(63))
        self.inc_lo[rows] = (seed[:, 3] << np.uint64(1)) | np.uint64(1)
        self.state_hi[rows] = 0
        self.state_lo[rows] = 0
        self._step(rows)
        lo = self.state_lo[rows] + seed[:, 1]
        self.state_hi[rows] += seed[:, 0] + (lo < seed[:, 1])
        self.state_lo[rows] = lo
        self._step(rows)

    def _step(self, rows: npt.NDArray[np.intp]) -> tuple[U64, U64]:
        """Advance ``rows`` by one LCG step (state * multiplier + inc, mod 2**128)."""
        hi, lo = self.state_hi[rows], self.state_lo[rows]
        # The high 64 bits of lo * _MULT_LO, from 32-bit halves so nothing overflows.
        lo_0, lo_1 = lo & np.uint64(_MASK32), lo >> np.uint64(32)
        p00, p01 = lo_0 * _MULT_LO_0, lo_0 * _MULT_LO_1
        p10, p11 = lo_1 * _MULT_LO_0, lo_1 * _MULT_LO_1
        mid = (p00 >> np.uint64(32)) + (p01 & np.uint64(_MASK32)) + (p10 & np.uint64(_MASK32))
        carry = p11 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (mid >> np.uint64(32))
        new_hi = carry + hi * _MULT_LO + lo * _MULT_HI
        new_lo = lo * _MULT_LO
        inc_lo = self.inc_lo[rows]
        new_lo += inc_lo
        new_hi += self.inc_hi[rows] + (new_lo < inc_lo)
        self.state_hi[rows], self.state_lo[rows] = new_hi, new_lo
        return new_hi, new_lo

    def next_uint64(self, rows: npt.NDArray[np.intp]) -> U64:
        """One raw draw per row (PCG64's XSL-RR output of the stepped state)."""
        hi, lo = self._step(rows)
        mixed, rotation = hi ^ lo, hi >> np.uint64(58)
        left = (np.uint64(64) - rotation) & np.uint64(63)
        return np.asarray((mixed >> rotation) | (mixed << left))

    def uniform(self, rows: npt.NDArray[np.intp], low: float, high: float, size: int) -> F64:
        """``Generator.uniform(low, high, size)`` for each row; shape ``(len(rows), size)``."""
        span = high - low
        out = np.empty((len(rows), size), np.float64)
        for column in range(size):
            # next_double: the top 53 bits scaled to [0, 1), then low + span * u as numpy does.
            unit = (self.next_uint64(rows) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
            out[:, column] = low + span * unit
        return out
