"""dpjax: a differential privacy compute engine for JAX."""

from pathlib import Path as _Path

# From a source checkout on PYTHONPATH (no install), the top-level `kernels/`
# folder is reached as `dpjax.kernels` through the package path. Installed
# wheels and editable installs map it directly and skip this.
if not (_Path(__file__).parent / "kernels").is_dir():
    _root = _Path(__file__).resolve().parent.parent
    if (_root / "kernels" / "__init__.py").is_file():
        __path__.append(str(_root))  # noqa: F821 (package __path__)

__version__ = "0.1.0"
__all__ = ["__version__"]
