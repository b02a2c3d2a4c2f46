"""Keys seeded from the operating system's entropy (``dpjax train``'s default).

``secure_key()`` draws the key data with :mod:`secrets` (the OS CSPRNG,
``getrandom``/``/dev/urandom``), so no seed exists that an attacker could
guess, log or reuse, and two runs never share noise except with negligible
probability.

Trade-offs, stated plainly:

* JAX's PRNG (Threefry-2x32 by default, or ``rbg``) is a counter-based
  generator designed for statistical quality and reproducibility, not a
  certified cryptographically secure PRNG; seeding it from the OS makes the
  key unpredictable, it does not make the generator a CSPRNG. Threefry keys
  carry 64 bits of entropy (``impl="threefry2x32"``, and ``"philox4x32"``);
  ``rbg`` and ``unsafe_rbg`` keys 128.
* Noise is drawn in floating point, which leaks through its low-order bits
  in principle (Mironov 2012, On Significance of the Least Significant Bits
  for Differential Privacy); data releases should use ``dpjax.mechanisms``.
* A secure run is not reproducible from a seed. Its key lives in the
  optimizer state and in checkpoints, which therefore must be protected like
  the data: whoever holds the key can recompute (and subtract) the noise.
"""

from __future__ import annotations

import secrets

import jax
import numpy as np

__all__ = ["key_from_seed", "secure_key"]

_KEY_WORDS = {"threefry2x32": 2, "rbg": 4, "unsafe_rbg": 4, "philox4x32": 2}
SEED_BITS = 32  # jax.random.key(int) keeps only the low 32 bits when x64 is off


def key_from_seed(seed: int) -> jax.Array:
    """A typed threefry key from an integer seed, refusing seeds JAX would truncate.

    ``jax.random.key(2**32 + 7)`` silently equals ``jax.random.key(7)`` when
    x64 is off, so a user who believes a 64-bit seed protects the noise gets
    32 bits. A fixed seed is for reproducible research on public data only:
    anyone who knows (or searches) it can recompute and subtract the noise.
    Use :func:`secure_key` wherever noise protects data.

    Args:
      seed: an integer in [0, 2**32).

    Raises:
      ValueError: for a non-integer seed or one outside [0, 2**32).

    Example:
      >>> import jax
      >>> data = jax.random.key_data
      >>> bool((data(key_from_seed(7)) == data(jax.random.key(7))).all())
      True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer in [0, 2**{SEED_BITS}), got {seed!r}")
    if not 0 <= int(seed) < 2**SEED_BITS:
        raise ValueError(
            f"seed must be in [0, 2**{SEED_BITS}) (JAX keeps only {SEED_BITS} bits of an "
            f"integer seed), got {seed}; for noise that protects data use secure keys instead"
        )
    return jax.random.key(int(seed))


def secure_key(impl: str = "threefry2x32") -> jax.Array:
    """A typed PRNG key whose data comes from the OS entropy source.

    Args:
      impl: the JAX PRNG implementation: ``"threefry2x32"`` (64-bit key,
        the default), ``"rbg"`` or ``"unsafe_rbg"`` (128-bit keys; meant for
        accelerators, slower on XLA:CPU) or ``"philox4x32"`` (64-bit key).
        Which is fastest per backend: ``benchmarks/RESULTS_noise.md``; each
        passes the same KS and tail tests (``tests/kernels/test_noise.py``).

    Returns:
      A typed key (``jax.random.key``-like) of that implementation.

    Example:
      >>> import jax
      >>> k1, k2 = secure_key(), secure_key()
      >>> bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any())
      True
    """
    if impl not in _KEY_WORDS:
        raise ValueError(f"impl must be one of {tuple(_KEY_WORDS)}, got {impl!r}")
    words = np.frombuffer(secrets.token_bytes(4 * _KEY_WORDS[impl]), dtype=np.uint32)
    return jax.random.wrap_key_data(words.copy(), impl=impl)
