"""dpjax.kernels: array kernels for private training.

Pure functions on arrays and pytrees. They import only jax and numpy, never
dpjax, so the dependency goes one way.
"""
