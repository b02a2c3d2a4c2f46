"""Encrypted pytrees: ``encrypt_tree`` / ``decrypt_tree`` with structure, shapes, dtypes exact.

The payload is every leaf's raw bytes (C order, native little-endian) in
``jax.tree_util`` flattening order. The header's ``metadata["pytree"]``
records each leaf's path (``keystr``), shape, dtype name and kind (array,
typed PRNG key with its implementation, or Python scalar), and the structure
when it is made of dicts (str keys), lists, tuples and None; other node types
(NamedTuples, dataclasses, optax states) are restored into the structure of
``like=``. Names, shapes and dtypes are authenticated but public; the values
are encrypted.

Decryption authenticates the header, allocates each leaf once (the declared
sizes must fit in the file) and decrypts the payload straight into the leaves,
a bounded buffer at a time; nothing is returned before the whole payload
authenticates, so a failure returns nothing. Encryption copies one leaf at a
time to the host (a JAX array) and streams it; NumPy leaves are not copied.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.crypto import envelope, sign
from dpjax.crypto.errors import DecryptionError

__all__ = ["decrypt_tree", "decrypt_tree_with_header", "encrypt_tree", "TREE_FORMAT"]

TREE_FORMAT = 1
_PY_TYPES = {"bool": bool, "int": int, "float": float}


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _check_dtype(name: str) -> np.dtype:
    try:
        dt = np.dtype(jnp.dtype(name))
    except TypeError:
        raise DecryptionError(f"unsupported dtype {name!r} in the file header") from None
    if dt.hasobject or dt.names is not None or dt.itemsize == 0 or dt.name != name:
        raise DecryptionError(f"unsupported dtype {name!r} in the file header")
    return dt


def _leaf_record(path, x, with_data: bool = True) -> tuple[dict[str, Any], np.ndarray | None]:
    """The header record of leaf ``x`` and (if ``with_data``) its bytes as a C-order array.

    Without ``with_data`` nothing is copied off the device (template checks).
    """
    name = jax.tree_util.keystr(path)
    if _is_key(x):
        data = jax.random.key_data(x)
        rec = {"kind": "key", "impl": str(jax.random.key_impl(x))}
    elif isinstance(x, bool | int | float) and not isinstance(x, np.generic):
        kind = type(x).__name__
        if kind not in _PY_TYPES:
            raise TypeError(f"leaf {name}: unsupported Python scalar type {type(x).__name__}")
        if kind == "int" and not -(2**63) <= x < 2**63:
            raise ValueError(f"leaf {name}: Python int must be in [-2**63, 2**63), got {x}")
        data = np.asarray(x, dtype={"bool": np.bool_, "int": np.int64, "float": np.float64}[kind])
        rec = {"kind": "py", "type": kind}
    elif isinstance(x, np.generic):
        data = np.asarray(x)
        rec = {"kind": "numpy-scalar"}
    elif isinstance(x, jax.Array | np.ndarray):
        data = x
        rec = {"kind": "array"}
    else:
        raise TypeError(
            f"leaf {name}: expected an array, a typed PRNG key or a Python bool/int/float, "
            f"got {type(x).__name__}"
        )
    dtype = np.dtype(data.dtype)
    if dtype.hasobject or dtype.names is not None:
        raise TypeError(f"leaf {name}: dtype {dtype} cannot be stored")
    rec.update(path=name, shape=list(data.shape), dtype=dtype.name)
    return rec, (np.ascontiguousarray(np.asarray(data)) if with_data else None)


def _check_like(like: Any, records: list[dict[str, Any]]) -> Any:
    """Returns ``like``'s flat leaves and treedef; ValueError if they differ from the file's."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like, is_leaf=_is_key)
    expected = [_leaf_record(p, x, with_data=False)[0] for p, x in flat]
    if expected != records:
        for e, r in zip(expected, records, strict=False):
            if e != r:
                raise ValueError(f"like= does not match the file: expected leaf {e}, file has {r}")
        raise ValueError(
            f"like= does not match the file: expected {len(expected)} leaves, file has "
            f"{len(records)}"
        )
    return flat, treedef


def _structure(node: Any, counter: list[int]) -> Any:
    """JSON form of dict/list/tuple/None nesting; raises TypeError for other node types."""
    if node is None:
        return {"n": None}
    if isinstance(node, dict):
        if not all(isinstance(k, str) for k in node):
            raise TypeError("dict keys are not all str")
        return {"d": [[k, _structure(node[k], counter)] for k in sorted(node)]}
    if type(node) in (list, tuple):
        return {"l" if type(node) is list else "t": [_structure(c, counter) for c in node]}
    if jax.tree_util.all_leaves([node]):
        counter[0] += 1
        return {"a": counter[0] - 1}
    raise TypeError(f"node type {type(node).__name__}")


def _build(enc: Any, leaves: list[Any]) -> Any:
    if not isinstance(enc, dict) or len(enc) != 1:
        raise DecryptionError("pytree structure in the header is malformed")
    ((tag, v),) = enc.items()
    if tag == "n":
        return None
    if tag == "a":
        return leaves[v]
    if tag == "d":
        return {k: _build(c, leaves) for k, c in v}
    if tag in ("l", "t"):
        items = [_build(c, leaves) for c in v]
        return items if tag == "l" else tuple(items)
    raise DecryptionError("pytree structure in the header is malformed")


def encrypt_tree(
    tree: Any,
    path: str | os.PathLike,
    recipients: Any,
    *,
    metadata: dict[str, Any] | None = None,
    sign_with: Any = None,
    overwrite: bool = False,
) -> envelope.Header:
    """Encrypts a pytree of arrays to the envelope file ``path``.

    Args:
      tree: a pytree whose leaves are arrays (NumPy or JAX, any numeric dtype
        including bfloat16), typed PRNG keys, or Python bool/int/float.
      path: the file to write (0600, atomically).
      recipients: as for ``encrypt_file``.
      metadata: extra JSON header fields, e.g. ``{"privacy": {"epsilon": 2.0,
        "delta": 1e-5, "accountant": "pld"}}`` (authenticated, public).
      sign_with: an Ed25519 private key: also writes ``path + ".sig"``.
      overwrite: replace an existing file.

    Returns:
      The header written.

    Privacy:
      Leaf values (model weights, noise keys) are encrypted; leaf names,
      shapes and dtypes and ``metadata`` are public and authenticated.

    Example:
      >>> import os, tempfile, numpy as np
      >>> from dpjax.crypto import generate_private_key
      >>> k = generate_private_key("x25519")
      >>> f = os.path.join(tempfile.mkdtemp(), "w.enc")
      >>> _ = encrypt_tree({"w": np.ones((2, 3), np.float32)}, f, [k.public_key()])
      >>> decrypt_tree(f, k)["w"].shape
      (2, 3)
    """
    md = dict(envelope._check_metadata(metadata))
    if "pytree" in md:
        raise ValueError("metadata must not have a 'pytree' field (it is written by encrypt_tree)")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory {path.parent} does not exist")
    rs = envelope._normalize_recipients(recipients)
    if sign_with is not None:
        sign.check_signing_key(sign_with)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_key)
    records = [_leaf_record(p, x, with_data=False)[0] for p, x in flat]
    try:
        counter = [0]
        structure = _structure(tree, counter)
        if counter[0] != len(records):
            structure = None
    except TypeError:
        structure = None
    md["pytree"] = {"format": TREE_FORMAT, "leaves": list(records), "structure": structure}

    digest = hashlib.sha512() if sign_with is not None else None

    def fill(out) -> None:
        data_key = envelope._new_data_key()
        w = envelope._Writer(out, data_key, envelope._header_block(data_key, rs, md), digest)
        for p, x in flat:  # one leaf on the host at a time
            w.write(_leaf_record(p, x)[1].reshape(-1).view(np.uint8))
        w.finish()

    envelope.write_atomically(path, fill)
    with open(path, "rb") as f:
        header = envelope.read_header(f)
    if digest is not None:  # over the ciphertext hashed as it was written
        sign.sign_digest(path, sign_with, header.raw, digest.digest())
    return header


def _valid_record(r: Any) -> bool:
    return (
        isinstance(r, dict)
        and r.get("kind") in ("array", "key", "py", "numpy-scalar")
        and isinstance(r.get("dtype"), str)
        and isinstance(r.get("shape"), list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in r["shape"])
        and (r["kind"] != "py" or r.get("type") in _PY_TYPES)
        and (r["kind"] != "key" or isinstance(r.get("impl"), str))
    )


def _tree_desc(header: envelope.Header, path: Any) -> dict[str, Any]:
    desc = header.metadata.get("pytree")
    ok = (
        isinstance(desc, dict)
        and desc.get("format") == TREE_FORMAT
        and isinstance(desc.get("leaves"), list)
        and all(_valid_record(r) for r in desc["leaves"])
    )
    if not ok:
        raise DecryptionError(f"{path} is an envelope file but not an encrypted pytree")
    return desc


class _LeafFiller:
    """A ``decrypt_stream`` sink that copies the payload into preallocated leaves in order."""

    def __init__(self, arrays: list[np.ndarray]):
        self._views = [memoryview(a.reshape(-1).view(np.uint8)) for a in arrays if a.size]
        self._i = 0
        self._pos = 0

    def __call__(self, chunk: memoryview) -> None:
        while chunk:
            if self._i == len(self._views):
                raise DecryptionError(_LENGTH_ERROR)
            dest = self._views[self._i]
            k = min(len(dest) - self._pos, len(chunk))
            dest[self._pos : self._pos + k] = chunk[:k]
            chunk = chunk[k:]
            self._pos += k
            if self._pos == len(dest):
                self._i, self._pos = self._i + 1, 0

    def check_full(self) -> None:
        if self._i != len(self._views):
            raise DecryptionError(_LENGTH_ERROR)


_LENGTH_ERROR = "payload length does not match the pytree description in the header"


def _allocate(records: list[dict[str, Any]], limit: int) -> list[np.ndarray]:
    """Empty leaf arrays for ``records``; refuses sizes that cannot fit in ``limit`` bytes."""
    dtypes = [_check_dtype(r["dtype"]) for r in records]
    total = sum(math.prod(r["shape"]) * dt.itemsize for r, dt in zip(records, dtypes, strict=True))
    if total > limit:  # the ciphertext is never shorter than the plaintext
        raise DecryptionError(_LENGTH_ERROR)
    return [np.empty(r["shape"], dt) for r, dt in zip(records, dtypes, strict=True)]


def _restore_leaf(rec: dict[str, Any], arr: np.ndarray) -> Any:
    if rec["kind"] == "key":
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=rec["impl"])
    if rec["kind"] == "py":
        return _PY_TYPES[rec["type"]](arr.item())
    if rec["kind"] == "numpy-scalar":
        return arr[()]
    return arr


def decrypt_tree(path: str | os.PathLike, identities: Any, *, like: Any = None) -> Any:
    """Decrypts a file written by ``encrypt_tree``.

    Args:
      path: the envelope file.
      identities: private key(s) or ``Passphrase`` (as for ``decrypt_file``).
      like: optional template pytree. Required when the tree had node types
        other than dict/list/tuple/None; when given, its leaf paths, shapes
        and dtypes must equal the file's, and the result has its structure.

    Returns:
      The pytree: array leaves as NumPy arrays with the stored dtype (exact,
      including float64 and bfloat16), typed PRNG keys as JAX key arrays,
      NumPy and Python scalars as themselves. With ``like``, leaves that are
      ``jax.Array`` in ``like`` come back as ``jax.Array``.

    Raises:
      DecryptionError: wrong key or the file was modified (nothing returned).
      ValueError: ``like`` does not match the stored tree.
    """
    return decrypt_tree_with_header(path, identities, like=like)[0]


def decrypt_tree_with_header(
    path: str | os.PathLike, identities: Any, *, like: Any = None, payload_hash: Any = None
) -> tuple[Any, envelope.Header]:
    """``decrypt_tree`` that also returns the authenticated header it read.

    ``payload_hash``: as for ``envelope.decrypt_stream``.
    """
    with open(path, "rb", buffering=0) as f:
        if like is not None:  # refuse a wrong template before decrypting anything
            _check_like(like, _tree_desc(envelope.read_header(f), path)["leaves"])
            f.seek(0)
        header, dec = envelope.open_payload(f, identities)
        desc = _tree_desc(header, path)
        records = desc["leaves"]
        arrays = _allocate(records, os.fstat(f.fileno()).st_size - len(header.raw))
        filler = _LeafFiller(arrays)
        envelope.decrypt_payload(f, dec, filler, payload_hash)
    filler.check_full()
    leaves = [_restore_leaf(r, a) for r, a in zip(records, arrays, strict=True)]
    if like is None:
        if desc["structure"] is None:
            raise ValueError(
                "this tree has node types other than dict/list/tuple/None: pass like= "
                "(a template with the same structure)"
            )
        return _build(desc["structure"], leaves), header
    flat, treedef = _check_like(like, records)
    out = [
        jnp.asarray(v) if isinstance(t, jax.Array) and not _is_key(v) else v
        for v, (_, t) in zip(leaves, flat, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out), header
