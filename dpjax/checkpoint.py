"""Atomic checkpoints of a private training run, refused when they do not match.

A checkpoint holds, in one orbax step directory: the model and optimizer
states (the optimizer state carries the privacy state -- ``DPNoiseState``'s
step count, noise key and privacy parameters -- so parameters and privacy
spent are saved together and cannot drift apart), any other PRNG keys, and
JSON metadata: the step, a description of the state's structure (paths,
shapes, dtypes), the privacy configuration and its hash, and a SHA-256 of
every array's bytes.

Writes are atomic: orbax writes into a temporary directory and renames it
when complete, so a crash or kill mid-save leaves the previous checkpoint as
the latest one. Restores verify the structure, the privacy configuration and
the checksum before handing anything back.

Typed PRNG keys are stored as their key data (``jax.random.key_data``) and
rewrapped with the template's implementation on restore. Anyone holding a
checkpoint holds the noise key and can reproduce future noise: keep
checkpoints as private as the training data. Saves create the directory and
everything in it owner-only (0700 directories, 0600 files, whatever the
umask) and tighten a pre-existing checkpoint directory to 0700.

The SHA-256 detects accidents (bit rot, truncation, a half-copied file), not
tampering: anyone who can write the directory can rewrite a state and its
hash together, for example to reset the step count and so the privacy spent.

``Checkpointer(directory, encrypt_to=[...], sign_with=key)`` instead writes
each step as one envelope file (``dpjax.crypto.checkpoints``, docs/crypto.md):
the state never touches the disk in plaintext, and, signed, a restore with
``verify_with`` (default: the ``sign_with`` key's public half) refuses any
step the run did not write. Restoring needs ``identity`` (a private key or
``Passphrase``). A directory holds one kind of step: plaintext (orbax) and
encrypted steps are never mixed, and a Checkpointer given any key refuses a
plaintext directory (a downgrade).

``Checkpointer(directory, exclusive=True)`` holds an exclusive lock
(``fcntl.flock`` on ``directory/.lock``, which records the holder's PID) until
``close()``, so two training runs cannot write one directory. Reading a
directory that does not exist raises ``CheckpointError`` and creates nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dpjax import _validate
from dpjax.errors import CheckpointError, CheckpointMismatchError

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
    "config_hash",
    "describe_tree",
]

PyTree = Any
FORMAT_VERSION = 1
LOCK_NAME = ".lock"


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _path_str(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of a JSON-able configuration, keys sorted (stable across runs).

    >>> config_hash({"b": 1, "a": 0.5}) == config_hash({"a": 0.5, "b": 1})
    True
    """
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _to_storable(tree: PyTree) -> tuple[PyTree, dict[str, str]]:
    """Typed keys -> key data; returns the tree and {path: key impl}."""
    impls: dict[str, str] = {}

    def conv(path, x):
        if _is_key(x):
            impls[_path_str(path)] = str(jax.random.key_impl(x))
            return np.asarray(jax.random.key_data(x))
        return np.asarray(x)

    return jax.tree_util.tree_map_with_path(conv, tree), impls


def describe_tree(tree: PyTree) -> list[list[str]]:
    """``[path, shape, dtype]`` of every leaf (typed keys as their key data)."""
    storable, impls = _to_storable(tree)
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(storable)[0]:
        p = _path_str(path)
        dtype = f"key<{impls[p]}>" if p in impls else str(x.dtype)
        out.append([p, str(tuple(x.shape)), dtype])
    return out


def _digest(storable: PyTree) -> str:
    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(storable)[0]:
        a = np.ascontiguousarray(np.asarray(x))
        h.update(_path_str(path).encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _make_private_tree(root: Path) -> None:
    """chmod what a save wrote to 0700/0600 (the umask already should have)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            mode = os.lstat(p).st_mode
            if mode & 0o077 and not os.path.islink(p):
                os.chmod(p, 0o700 if name in dirnames else 0o600)
    if root.stat().st_mode & 0o077:
        os.chmod(root, 0o700)


def _first_difference(expected: list, found: list) -> str:
    for e, f in zip(expected, found, strict=False):
        if e != f:
            return f"expected leaf {e}, checkpoint has {f}"
    return f"expected {len(expected)} arrays, checkpoint has {len(found)}"


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created inside are owner-only (umask 077).

    The umask is per process: threads creating files meanwhile get owner-only
    modes too (never wider ones).
    """
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def make_private_dir(directory: Path) -> None:
    """Creates ``directory`` (and missing parents) 0700, or tightens it to 0700."""
    try:
        with private_umask():
            directory.mkdir(parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o077:
            os.chmod(directory, 0o700)
    except OSError as e:
        raise CheckpointError(
            f"cannot create {directory} as a private (0700) directory: {e}"
        ) from e


# --- encrypted steps (dpjax.crypto.checkpoints) -----------------------------------------------

# Checkpoint metadata fields that go in the public (authenticated, not encrypted) header of an
# encrypted step; the rest ("extra": run configuration and training history, "sha256" of the
# state) are sealed to the same recipients, since the header is readable by anyone with the file.
_PUBLIC_META = ("format", "step", "structure", "key_impls", "privacy", "privacy_hash")
_SEAL_PAD = 256  # sealed metadata is padded to a multiple of this many bytes (hides its length)


def _crypto_options(encrypt_to: Any, sign_with: Any, identity: Any, verify_with: Any):
    """``None`` without keys; else the checked options (``checkpoints.check_options``)."""
    if encrypt_to is None and sign_with is None and identity is None and verify_with is None:
        return None
    from dpjax.crypto import CryptoError
    from dpjax.crypto.checkpoints import check_options

    if sign_with is not None and encrypt_to is None:
        raise ValueError("sign_with needs encrypt_to (signatures cover encrypted steps only)")
    try:
        opts = check_options(encrypt_to, sign_with, identity, verify_with)
    except CryptoError as e:
        raise ValueError(f"Checkpointer keys: {e}") from None
    if opts["verify_with"] is None and sign_with is not None:
        opts["verify_with"] = [sign_with.public_key()]
    return opts


def _seal(meta: dict[str, Any], recipients: Any) -> dict[str, Any]:
    """The public part of ``meta`` plus ``sealed``: the rest, encrypted to ``recipients``."""
    import base64

    from dpjax.crypto import encrypt_bytes

    private = {k: v for k, v in meta.items() if k not in _PUBLIC_META}
    text = json.dumps({"step": meta["step"], **private}, sort_keys=True).encode()
    text += b" " * (-len(text) % _SEAL_PAD)
    sealed = encrypt_bytes(text, recipients, metadata={"content": "checkpoint-metadata"})
    return {**{k: meta[k] for k in _PUBLIC_META}, "sealed": base64.b64encode(sealed).decode()}


def _unseal(public: dict[str, Any], identities: Any, where: str) -> dict[str, Any]:
    import base64
    import binascii

    from dpjax.crypto import CryptoError, decrypt_bytes

    try:
        private = json.loads(decrypt_bytes(base64.b64decode(public["sealed"]), identities))
    except (CryptoError, KeyError, TypeError, ValueError, binascii.Error) as e:
        raise CheckpointError(f"{where}: cannot decrypt its metadata ({e})") from None
    if not isinstance(private, dict) or private.pop("step", None) != public.get("step"):
        raise CheckpointError(f"{where}: its sealed metadata belongs to another step")
    out = {k: v for k, v in public.items() if k != "sealed"}
    out.update(private)
    return out


class Checkpointer:
    """Saves and restores complete training states under one directory.

    Privacy:
      A checkpoint holds the noise key: whoever reads it can recompute the
      noise still to come. Saves write owner-only modes (directories 0700,
      files 0600) whatever the umask. The SHA-256 in the metadata detects
      accidents (bit rot, truncation), NOT tampering: anyone who can write the
      directory can rewrite a state and its hash together, e.g. to reset the
      step count and so the privacy spent. With ``encrypt_to`` and
      ``sign_with`` steps are encrypted (nothing in plaintext on disk; the
      run configuration and history sealed, not in the public header) and
      every restore verifies the signature, so a step written by anyone else
      is refused. A rollback (deleting newer steps) is not detected.

    Args:
      directory: where step directories go; created (0700) by the first save
        or by ``exclusive=True``, never by a read. The first write takes the
        directory's lock until ``close()``.
      max_to_keep: the newest checkpoints kept, >= 1.
      exclusive: take the directory's lock (``.lock``) until ``close()``;
        raises ``CheckpointError`` naming the holder's PID if another process
        (or another ``Checkpointer``) holds it.
      encrypt_to: recipients (X25519 / RSA-3072 public keys or one-line
        text, or one ``dpjax.crypto.Passphrase``): saves write encrypted
        steps (``dpjax.crypto.checkpoints``), never plaintext.
      sign_with: an Ed25519 private key signing every step (needs
        ``encrypt_to``).
      identity: private key(s) or ``Passphrase`` to restore encrypted steps.
      verify_with: Ed25519 public key(s); reads and restores refuse steps
        not signed by one of them. Default: ``sign_with``'s public key.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> ckpt = Checkpointer(tempfile.mkdtemp())
      >>> state = {"w": jnp.ones(3), "key": jax.random.key(0)}
      >>> ckpt.save(5, state, privacy={"noise_multiplier": 1.0})
      >>> restored, meta = ckpt.restore(state, privacy={"noise_multiplier": 1.0})
      >>> meta["step"], bool((restored["w"] == 1).all())
      (5, True)
      >>> ckpt.close()
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_to_keep: int = 3,
        exclusive: bool = False,
        encrypt_to: Any = None,
        sign_with: Any = None,
        identity: Any = None,
        verify_with: Any = None,
    ):
        self._crypto = _crypto_options(encrypt_to, sign_with, identity, verify_with)
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self._max_to_keep = _validate.positive_int("max_to_keep", max_to_keep)
        self._manager = None
        self._lock_fd: int | None = None
        logging.getLogger("absl").setLevel(logging.WARNING)
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} is not a directory")
        if exclusive:
            self._take_for_writing()
            try:  # checkpoints an older dpjax wrote with the umask's modes
                _make_private_tree(self.directory)
            except OSError as e:
                self.close()
                raise CheckpointError(f"cannot make {self.directory} owner-only: {e}") from e

    def _take_for_writing(self) -> None:
        """Creates the directory owner-only and takes its lock (kept until close)."""
        if self._lock_fd is None:
            make_private_dir(self.directory)
            self._lock()

    def _lock(self) -> None:
        path = self.directory / LOCK_NAME
        for _ in range(5):
            with private_umask():
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                try:
                    pid = path.read_text().strip() or "unknown"
                except OSError:
                    pid = "unknown"
                raise CheckpointError(
                    f"checkpoint directory {self.directory} is in use by another run "
                    f"(PID {pid}); wait for it to end or use another directory"
                ) from None
            try:  # the previous holder may have unlinked the file we opened
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)
        raise CheckpointError(f"could not lock checkpoint directory {self.directory}")

    def _open(self) -> bool:
        """Opens the orbax manager if the directory exists; never creates it."""
        if self._manager is None and self.directory.is_dir():
            ocp = self._ocp
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=self._max_to_keep, enable_async_checkpointing=False, create=False
                ),
            )
        return self._manager is not None

    def close(self) -> None:
        """Closes the manager and releases (and removes) the lock, if held."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.directory / LOCK_NAME)  # still locked: no one else has it
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _orbax_steps(self) -> list[int]:
        if not self._open():
            return []
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def _encrypted_steps(self) -> list[int]:
        from dpjax.crypto import checkpoints

        return checkpoints.steps(self.directory)

    @property
    def encrypted(self) -> bool:
        """Whether this Checkpointer was given keys (it then reads and writes encrypted steps)."""
        return self._crypto is not None

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first ([] if no directory).

        Raises ``CheckpointError`` for a directory that mixes plaintext (orbax)
        and encrypted steps, and for plaintext steps when this Checkpointer has keys.
        """
        plain, enc = self._orbax_steps(), self._encrypted_steps()
        if plain and enc:
            raise CheckpointError(
                f"checkpoint directory {self.directory} mixes plaintext steps {plain} and "
                f"encrypted steps {enc}; refusing to read or write it (move one kind away)"
            )
        if plain and self.encrypted:
            raise CheckpointError(
                f"checkpoint directory {self.directory} holds plaintext (unencrypted, unsigned) "
                "steps but this Checkpointer was given keys; refusing them"
            )
        return enc or plain

    def _is_encrypted_dir(self) -> bool:
        return bool(self._encrypted_steps())

    def set_aside(self, step: int) -> Path:
        """Renames checkpoint ``step`` to ``<step>.corrupted[-n]`` (kept, no longer a step)."""
        self._resolve(step)
        self._take_for_writing()
        encrypted = self._is_encrypted_dir()
        if encrypted:
            from dpjax.crypto import checkpoints, sign

            src = checkpoints.step_path(self.directory, step)
        else:
            src = self.directory / str(step)
        for n in range(1000):
            dst = self.directory / (f"{step}.corrupted" + (f"-{n}" if n else ""))
            if not dst.exists() and not (encrypted and sign.signature_path(dst).exists()):
                break
        else:
            raise CheckpointError(f"cannot set aside checkpoint step {step} in {self.directory}")
        if encrypted and sign.signature_path(src).exists():
            os.rename(sign.signature_path(src), sign.signature_path(dst))
        os.rename(src, dst)
        if self._manager is not None:
            self._manager.reload()
        return dst

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        privacy: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Writes ``state`` as checkpoint ``step``, atomically.

        Args:
          step: the training step the state is at (the number of steps taken).
          state: a pytree of arrays (typed keys allowed).
          privacy: the privacy configuration (JSON-able); its hash is checked
            on restore.
          extra: other JSON-able metadata (the run configuration).
        """
        step = _validate.non_negative_int("step", step)
        storable, impls = _to_storable(jax.device_get(state))
        meta = {
            "format": FORMAT_VERSION,
            "step": step,
            "structure": describe_tree(state),
            "key_impls": impls,
            "privacy": privacy or {},
            "privacy_hash": config_hash(privacy or {}),
            "sha256": _digest(storable),
            "extra": extra or {},
        }
        if self.encrypted:
            self._save_encrypted(step, state, meta)
            return
        ocp = self._ocp
        self._take_for_writing()  # a writer holds the lock until close()
        if self._encrypted_steps():
            raise CheckpointError(
                f"checkpoint directory {self.directory} holds encrypted steps; refusing to add "
                "a plaintext one (give this Checkpointer encrypt_to=)"
            )
        with private_umask():
            self._open()
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(storable), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self._manager.wait_until_finished()
        _make_private_tree(self.directory / str(step))

    def _save_encrypted(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
        from dpjax.crypto import CryptoError, checkpoints

        opts = self._crypto
        if opts["encrypt_to"] is None:
            raise ValueError("save needs encrypt_to: this Checkpointer has keys for reading only")
        self._take_for_writing()  # a writer holds the lock until close()
        on_disk = self.steps()  # refuses plaintext or mixed directories
        self._refuse_unsigned_writer()
        try:
            public = _seal(meta, opts["encrypt_to"])
            checkpoints.save_step(
                self.directory,
                step,
                state,
                meta=public,
                encrypt_to=opts["encrypt_to"],
                sign_with=opts["sign_with"],
            )
        except CryptoError as e:
            raise CheckpointError(f"cannot write encrypted checkpoint step {step}: {e}") from e
        kept = sorted({*on_disk, step})
        for old in kept[: -self._max_to_keep]:
            checkpoints.remove_step(self.directory, old)

    def _refuse_unsigned_writer(self) -> None:
        """A writer without ``sign_with`` may not continue a directory of signed steps.

        Otherwise a run resumed without its signing key would train (and spend
        budget) and then leave unsigned steps that every signing run refuses.
        Readers (no ``encrypt_to``) are not affected.
        """
        opts = self._crypto
        if opts is None or opts["encrypt_to"] is None or opts["sign_with"] is not None:
            return
        from dpjax.crypto import checkpoints, sign

        if any(
            sign.signature_path(checkpoints.step_path(self.directory, s)).exists()
            for s in self._encrypted_steps()
        ):
            raise CheckpointError(
                f"checkpoint directory {self.directory} holds signed steps: give sign_with= "
                "(dpjax train --sign-with) to continue it, or use another directory"
            )

    def _where(self, step: int) -> str:
        return f"checkpoint step {step} in {self.directory}"

    def _read_encrypted_metadata(self, step: int) -> dict[str, Any]:
        from dpjax.crypto import CryptoError, checkpoints

        opts = self._crypto
        if opts is None or opts["identities"] is None:
            raise CheckpointError(
                f"{self._where(step)} is encrypted: its metadata needs identity= (a private "
                "key or Passphrase of a recipient)"
            )
        try:
            public = checkpoints.read_metadata(
                self.directory, step, verify_with=opts["verify_with"]
            )
        except CryptoError as e:
            raise CheckpointError(f"{self._where(step)} is refused: {e}") from e
        return _unseal(public, opts["identities"], self._where(step))

    def read_metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step`` (default: the latest).

        For encrypted steps it needs ``identity`` (the run configuration and
        history are encrypted) and checks the signature when ``verify_with``.
        """
        step = self._resolve(step)
        if self._is_encrypted_dir():
            meta = self._read_encrypted_metadata(step)
        else:
            meta = self._read_orbax_metadata(step)
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint step {step}: unknown format {meta.get('format')!r} "
                f"(expected {FORMAT_VERSION})"
            )
        return meta

    def _read_orbax_metadata(self, step: int) -> dict[str, Any]:
        ocp = self._ocp
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(out["meta"])
        except Exception as e:  # orbax raises many kinds on damaged files
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupted or unreadable "
                f"(metadata): {type(e).__name__}: {e}"
            ) from e
        return meta

    def _resolve(self, step: int | None) -> int:
        if not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {self.directory}")
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; have {steps}"
            )
        return step

    def restore(
        self,
        template: PyTree,
        *,
        step: int | None = None,
        privacy: dict[str, Any] | None = None,
    ) -> tuple[PyTree, dict[str, Any]]:
        """Loads checkpoint ``step`` (default: the latest) shaped like ``template``.

        Args:
          template: a state with the expected structure, shapes and dtypes
            (a freshly initialized one); typed keys in it are restored as
            typed keys of the same implementation.
          step: which checkpoint.
          privacy: the expected privacy configuration; a checkpoint written
            under another one is refused.

        Returns:
          ``(state, metadata)``.

        Raises:
          CheckpointMismatchError: another model structure or privacy config.
          CheckpointError: no checkpoint, or a corrupted one (checksum or
            file damage).
        """
        self._refuse_unsigned_writer()
        step = self._resolve(step)
        meta = self.read_metadata(step)
        expected = describe_tree(template)
        if meta["structure"] != expected:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} holds another model/optimizer "
                f"structure: {_first_difference(expected, meta['structure'])}"
            )
        if privacy is not None and meta["privacy_hash"] != config_hash(privacy):
            diff = {
                k: (meta["privacy"].get(k), privacy.get(k))
                for k in sorted(set(privacy) | set(meta["privacy"]))
                if meta["privacy"].get(k) != privacy.get(k)
            }
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} was written under another privacy "
                f"configuration (checkpoint, now): {diff}; resuming would mis-account privacy"
            )
        if self._is_encrypted_dir():
            return self._restore_encrypted(template, step, meta)
        storable_t, impls = _to_storable(jax.device_get(template))
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), storable_t)
        ocp = self._ocp
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
            loaded = jax.tree.map(np.asarray, out["state"])
        except Exception as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupted or unreadable: "
                f"{type(e).__name__}: {e}"
            ) from e
        if _digest(loaded) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupted: checksum mismatch"
            )

        def back(path, x, t):
            p = _path_str(path)
            if p in impls:
                return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
            return jax.numpy.asarray(x)

        state = jax.tree_util.tree_map_with_path(back, loaded, template)
        return state, meta

    def _restore_encrypted(
        self, template: PyTree, step: int, meta: dict[str, Any]
    ) -> tuple[PyTree, dict[str, Any]]:
        from dpjax.crypto import CryptoError, checkpoints

        opts = self._crypto
        try:
            state, public = checkpoints.restore_step(
                self.directory,
                step,
                template,
                opts["identities"],
                verify_with=opts["verify_with"],
            )
        except CryptoError as e:
            raise CheckpointError(f"{self._where(step)} is refused: {e}") from e
        # The metadata checked above must be the metadata of the bytes decrypted (the
        # file may have been replaced in between).
        if _unseal(public, opts["identities"], self._where(step)) != meta:
            raise CheckpointError(f"{self._where(step)} changed while it was being restored")
        if _digest(_to_storable(jax.device_get(state))[0]) != meta["sha256"]:
            raise CheckpointError(f"{self._where(step)} is corrupted: checksum mismatch")
        return state, meta
