"""Seeds and stream offsets for fastnn's counter-based Philox4x32-10 generator.

Every random decision is a pure function of (seed, position): the same seed and offsets give the
same masks on every CPU path, any thread count and the GPU. A `Generator` hands out
non-overlapping position ranges ("offsets") to the layers that draw from it, so a model seeded
once draws independent masks everywhere and replays exactly when re-seeded.
"""

from __future__ import annotations

import numbers
import threading

import numpy as np

__all__ = ["Generator", "default_generator", "manual_seed", "initial_seed"]

_U64 = 1 << 64
# The default seed when none is set: a fixed value (like PyTorch's), so runs are reproducible.
DEFAULT_SEED = 67280421310721


def check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name}: expected an integer in [0, 2**64), got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < _U64:
        raise ValueError(f"{name}: expected an integer in [0, 2**64), got {seed}")
    return seed


def check_offset(offset, n: int = 0, name: str = "offset") -> int:
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"{name}: expected a non-negative integer, got {type(offset).__name__}")
    offset = int(offset)
    if offset < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {offset}")
    if offset + n > _U64:
        raise ValueError(f"{name}: offset + number of elements must be at most 2**64, got {offset} + {n}")
    return offset


class Generator:
    """A seed and the next free stream position.

    >>> g = Generator(1234)
    >>> g.reserve(1000)   # positions [0, 1000) for one draw
    0
    >>> g.reserve(10)     # the next draw starts on the next 64-position block
    1024
    """

    def __init__(self, seed: int = DEFAULT_SEED):
        self._seed = check_seed(seed)
        self._offset = 0
        self._lock = threading.Lock()

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def offset(self) -> int:
        """The first position not yet handed out."""
        return self._offset

    def manual_seed(self, seed: int) -> Generator:
        """Re-seeds and restarts the stream at position 0; returns self."""
        seed = check_seed(seed)
        with self._lock:
            self._seed, self._offset = seed, 0
        return self

    def reserve(self, n: int) -> int:
        """Hands out n positions no other reservation overlaps; returns the first. Ranges start
        on 64-position blocks (the kernels' natural unit)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n: expected a non-negative integer, got {n!r}")
        with self._lock:
            start = self._offset
            end = start + (int(n) + 63) // 64 * 64
            if end > _U64:
                raise OverflowError("Generator: the 2**64-position stream is exhausted; re-seed it")
            self._offset = end
        return start

    def numpy_generator(self, n: int) -> np.random.Generator:
        """A NumPy generator for a host-side draw of up to n values (initializers, data
        synthesis), reserved from this stream like a kernel's draw: positions [q, q + n) with
        q = reserve(n), and a numpy.random.Generator(PCG64) seeded with SeedSequence(
        [seed mod 2^32, seed >> 32, q mod 2^32, q >> 32, 0x1A17]). The same (seed, offset) state
        always gives the same samples; successive draws are independent streams. (These samples
        come from PCG64, not Philox: only the kernels' masks need the counter-based stream.)"""
        q = self.reserve(n)
        words = [self._seed & 0xFFFFFFFF, self._seed >> 32, q & 0xFFFFFFFF, q >> 32, 0x1A17]
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))

    def normal(self, shape, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """float64 samples of N(mean, std^2) with `shape` (see numpy_generator)."""
        shape = _shape(shape)
        n = int(np.prod(shape, dtype=np.int64))
        return self.numpy_generator(n).normal(mean, std, size=shape)

    def uniform(self, shape, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        """float64 samples of U[low, high) with `shape` (see numpy_generator)."""
        shape = _shape(shape)
        n = int(np.prod(shape, dtype=np.int64))
        return self.numpy_generator(n).uniform(low, high, size=shape)

    def get_state(self) -> tuple:
        """(seed, offset): enough to resume the exact stream (e.g. from a checkpoint)."""
        return (self._seed, self._offset)

    def set_state(self, state) -> None:
        """Restores a (seed, offset) pair from get_state()."""
        seed, offset = state
        seed, offset = check_seed(seed), check_offset(offset)
        with self._lock:
            self._seed, self._offset = seed, offset

    def __repr__(self) -> str:
        return f"fastnn.Generator(seed={self._seed}, offset={self._offset})"


def _shape(shape) -> tuple:
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape: dimensions must be >= 0, got {shape}")
    return shape


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seeds the default generator (and restarts its stream); returns it."""
    return default_generator.manual_seed(seed)


def initial_seed() -> int:
    """The default generator's current seed (as set by manual_seed, else DEFAULT_SEED)."""
    return default_generator.seed
