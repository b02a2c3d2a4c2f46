"""Accumulation dtypes."""

import jax.numpy as jnp

__all__ = ["wide_float"]


def wide_float(dtype) -> jnp.dtype:
    """float32 for narrower floats (bf16, f16) and non-floats, else the dtype itself."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype
