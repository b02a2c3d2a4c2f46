"""Encrypted, signed checkpoint steps: what ``Checkpointer(encrypt_to=..., sign_with=...)`` calls.

An encrypted step is one envelope file ``DIR/<step>.dpjax-enc`` written by
``encrypt_tree`` (the state never touches the disk in plaintext, unlike an
orbax step directory), plus ``DIR/<step>.dpjax-enc.sig`` when signed. Its
header's ``metadata["checkpoint"]`` is the dict ``Checkpointer.save`` builds
(step, structure, privacy configuration and hash, extra): authenticated and
public. ``restore_step`` checks, in order: the signature (if ``verify_with``),
decryption and authentication of every byte, that the header's step is the
file's step (a renamed file is refused), and that the leaves match the
template.

Deleting newer steps (a rollback) cannot be detected from the files alone:
keep the directory writable only by the training run.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from dpjax.crypto import envelope, sign, tree
from dpjax.crypto.errors import DecryptionError

__all__ = [
    "check_options",
    "SUFFIX",
    "read_metadata",
    "remove_step",
    "restore_step",
    "save_step",
    "step_path",
    "steps",
]

SUFFIX = ".dpjax-enc"
_NAME = re.compile(r"^(0|[1-9][0-9]*)" + re.escape(SUFFIX) + r"$")


def check_options(
    encrypt_to: Any = None, sign_with: Any = None, identities: Any = None, verify_with: Any = None
) -> dict[str, Any]:
    """Checks ``Checkpointer``'s crypto arguments up front; returns them normalized.

    Call it in ``Checkpointer.__init__`` so a bad key fails before any
    training. ``None`` entries stay ``None``.

    Raises:
      TypeError, ValueError, KeyFileError: naming the argument at fault.
    """
    out: dict[str, Any] = {}
    out["encrypt_to"] = None if encrypt_to is None else envelope._normalize_recipients(encrypt_to)
    if sign_with is not None:
        sign.check_signing_key(sign_with)
    out["sign_with"] = sign_with
    out["identities"] = None if identities is None else envelope._normalize_identities(identities)
    out["verify_with"] = None if verify_with is None else sign._trusted_keys(verify_with)
    return out


def step_path(directory: str | os.PathLike, step: int) -> Path:
    """The envelope file of checkpoint ``step`` in ``directory``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return Path(directory) / f"{step}{SUFFIX}"


def steps(directory: str | os.PathLike) -> list[int]:
    """Steps with an encrypted checkpoint file in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _NAME.match(p.name)))


def save_step(
    directory: str | os.PathLike,
    step: int,
    state: Any,
    *,
    meta: dict[str, Any],
    encrypt_to: Any,
    sign_with: Any = None,
) -> Path:
    """Encrypts ``state`` as checkpoint ``step`` (replacing an existing one), atomically.

    Args:
      directory: an existing (private, locked) checkpoint directory.
      step: the step, >= 0.
      state: the training state pytree (typed PRNG keys allowed).
      meta: JSON metadata (``Checkpointer.save``'s dict); must hold ``"step": step``.
      encrypt_to: recipients (X25519 / RSA-3072 public keys, or a ``Passphrase``).
      sign_with: optional Ed25519 private key; writes ``<file>.sig``.

    Returns:
      The file written.
    """
    path = step_path(directory, step)
    if meta.get("step") != step:
        raise ValueError(f"meta['step'] must equal step {step}, got {meta.get('step')!r}")
    tree.encrypt_tree(
        state,
        path,
        encrypt_to,
        metadata={"checkpoint": meta},
        sign_with=sign_with,
        overwrite=True,
    )
    return path


def _check_step(header_meta: dict[str, Any], step: int, path: Path) -> dict[str, Any]:
    meta = header_meta.get("checkpoint")
    if not isinstance(meta, dict) or meta.get("step") != step:
        raise DecryptionError(
            f"{path} does not hold checkpoint step {step} (the file was renamed or is not a "
            "checkpoint)"
        )
    return meta


def read_metadata(
    directory: str | os.PathLike, step: int, *, verify_with: Any = None
) -> dict[str, Any]:
    """The checkpoint metadata of ``step`` from the header (no key needed).

    Without ``verify_with`` the metadata is not authenticated (anyone can
    write a header); with it, the signature must verify under those keys.
    """
    path = step_path(directory, step)
    if verify_with is not None:
        header = sign.verify_file(path, verify_with)
    else:
        header = envelope.read_header(path)
    return _check_step(header.metadata, step, path)


def restore_step(
    directory: str | os.PathLike,
    step: int,
    template: Any,
    identities: Any,
    *,
    verify_with: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Decrypts checkpoint ``step`` into the structure of ``template``.

    Returns:
      ``(state, meta)``: leaves that are ``jax.Array`` in ``template`` come
      back as ``jax.Array``; ``meta`` is the authenticated checkpoint metadata.

    Raises:
      SignatureError: ``verify_with`` given and the signature does not verify.
      DecryptionError: wrong identity; the file was modified, truncated, or
        renamed from another step.
      ValueError: the template's leaves (paths, shapes, dtypes) differ.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from dpjax.crypto import generate_private_key
      >>> d, me = tempfile.mkdtemp(), generate_private_key("x25519")
      >>> state = {"w": jnp.ones(3), "key": jax.random.key(0)}
      >>> _ = save_step(d, 5, state, meta={"step": 5}, encrypt_to=[me.public_key()])
      >>> steps(d)
      [5]
      >>> restored, meta = restore_step(d, 5, state, me)
      >>> meta["step"], restored["w"].dtype
      (5, dtype('float32'))
    """
    path = step_path(directory, step)
    if verify_with is not None:  # cheap refusals before any decryption work
        sign.verify_file(path, verify_with)
    _check_step(envelope.read_header(path).metadata, step, path)
    # Hash the ciphertext (in the decryption pass) only to check the signature.
    digest = hashlib.sha512() if verify_with is not None else None
    state, header = tree.decrypt_tree_with_header(
        path, identities, like=template, payload_hash=digest
    )
    if verify_with is not None:  # the bytes decrypted are the bytes signed
        sign.check_signature(path, header.raw, digest.digest(), verify_with)
    return state, _check_step(header.metadata, step, path)


def remove_step(directory: str | os.PathLike, step: int) -> None:
    """Deletes checkpoint ``step`` and its signature (for ``max_to_keep``)."""
    path = step_path(directory, step)
    path.unlink(missing_ok=True)
    sign.signature_path(path).unlink(missing_ok=True)
