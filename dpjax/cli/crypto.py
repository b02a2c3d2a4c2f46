"""``dpjax keygen | encrypt | decrypt | sign | verify``: keys, encrypted and signed files.

The logic is ``dpjax.crypto`` (docs/crypto.md); these commands read
arguments and key files and print results. No command prints a private key,
a passphrase or a data key: ``keygen`` prints the one-line public key only.
Passphrases are read from a file (``--passphrase-file``, first line) or typed
at a prompt (``--ask-passphrase``), never from the command line (which other
users can see in the process list).

Bad input, a wrong key, a modified file or a signature that does not verify
exit with status 2 and ``dpjax COMMAND: error: MESSAGE``; outputs are written
atomically (a temporary file renamed once everything is checked), so a failed
command leaves no partial output and an existing file as it was.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
import warnings
from pathlib import Path
from typing import Any

from dpjax.cli._output import add_json_flag, print_json

__all__ = ["public_key_arg", "register"]

_KINDS = ("x25519", "ed25519", "rsa3072")


def _refusals(func):
    """Errors of ``dpjax.crypto`` and of the files named become exit status 2 (``ValueError``).

    Key-permission warnings are printed as ``dpjax COMMAND: warning: ...``.
    """

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from dpjax.crypto import CryptoError, KeyPermissionWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", KeyPermissionWarning)
            try:
                return func(args)
            except (CryptoError, OSError) as e:
                msg = str(e)
                if isinstance(e, OSError) and e.filename and e.strerror:
                    msg = f"{e.filename}: {e.strerror}"
                raise ValueError(msg) from None
            finally:
                for w in caught:
                    if issubclass(w.category, KeyPermissionWarning):
                        print(f"dpjax {args.command}: warning: {w.message}", file=sys.stderr)
                    else:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    return run


def _read_passphrase_file(path: str, what: str = "--passphrase-file") -> str:
    from dpjax.crypto.keys import read_passphrase_file

    return read_passphrase_file(path, what)


def _passphrase(args: argparse.Namespace, confirm: bool = False) -> str | None:
    """The passphrase from ``--passphrase-file`` or ``--ask-passphrase``, or ``None``."""
    if getattr(args, "passphrase_file", None) and getattr(args, "ask_passphrase", False):
        raise ValueError("give --passphrase-file or --ask-passphrase, not both")
    if getattr(args, "passphrase_file", None):
        return _read_passphrase_file(args.passphrase_file)
    if getattr(args, "ask_passphrase", False):
        pw = getpass.getpass("passphrase: ")
        if confirm and getpass.getpass("passphrase again: ") != pw:
            raise ValueError("the passphrases typed differ")
        if not pw:
            raise ValueError("passphrase must be non-empty")
        return pw
    return None


def _key_passphrase(args: argparse.Namespace) -> str | None:
    path = getattr(args, "key_passphrase_file", None)
    return _read_passphrase_file(path, "--key-passphrase-file") if path else None


def public_key_arg(text: str) -> Any:
    """A public key from a one-line key or a ``.pub`` file (``keys.read_public_key``)."""
    from dpjax.crypto.keys import read_public_key

    return read_public_key(text)


def _private_key(path: str, args: argparse.Namespace) -> Any:
    from dpjax.crypto import KeyFileError, load_private_key

    try:
        return load_private_key(path, passphrase=_key_passphrase(args))
    except KeyFileError as e:
        if "give passphrase=" in str(e):
            raise KeyFileError(
                f"key file {path} is passphrase-protected: give --key-passphrase-file"
            ) from None
        raise


def _privacy(args: argparse.Namespace) -> dict[str, Any] | None:
    given = [args.epsilon is not None, args.delta is not None, args.accountant is not None]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("--epsilon, --delta and --accountant go together (the guarantee)")
    from dpjax.crypto import privacy_guarantee

    return privacy_guarantee(args.epsilon, args.delta, args.accountant)


# --- commands ---------------------------------------------------------------------------------


@_refusals
def _keygen(args: argparse.Namespace) -> int:
    from dpjax.crypto import keygen

    path = Path(args.path)
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):  # before asking for a passphrase
        if p.exists() or p.is_symlink():
            raise ValueError(f"refusing to overwrite existing key file {p}")
    line = keygen(args.kind, path, passphrase=_passphrase(args, confirm=True))
    if args.json:
        print_json({"kind": args.kind, "private_key_file": str(path), "public_key": line,
                    "public_key_file": str(pub)})  # fmt: skip
    else:
        print(f"dpjax keygen: wrote {path} (mode 0600) and {pub}", file=sys.stderr)
        print(line)
    return 0


@_refusals
def _encrypt(args: argparse.Namespace) -> int:
    from dpjax.crypto import Passphrase, encrypt_file

    pw = _passphrase(args, confirm=True)
    if bool(pw) == bool(args.to):
        raise ValueError("give recipients (--to, repeatable) or a passphrase, one of the two")
    recipients = [Passphrase(pw)] if pw else [public_key_arg(t) for t in args.to]
    signer = _private_key(args.sign_with, args) if args.sign_with else None
    metadata = {"privacy": p} if (p := _privacy(args)) else None
    header = encrypt_file(
        args.input, args.output, recipients, metadata=metadata, sign_with=signer,
        overwrite=args.force,
    )  # fmt: skip
    kinds = [s["type"] for s in header.fields["recipients"]]
    if args.json:
        print_json({"output": args.output, "recipients": kinds, "signed": signer is not None,
                    "metadata": header.metadata})  # fmt: skip
    else:
        signed = f", signed ({args.output}.sig)" if signer is not None else ""
        print(f"dpjax encrypt: wrote {args.output} for {len(kinds)} recipient(s){signed}")
    return 0


@_refusals
def _decrypt(args: argparse.Namespace) -> int:
    from dpjax.crypto import Passphrase, decrypt_file

    pw = _passphrase(args)
    if bool(pw) == bool(args.identity):
        raise ValueError("give key files (-i, repeatable) or a passphrase, one of the two")
    identities = [Passphrase(pw)] if pw else [_private_key(p, args) for p in args.identity]
    trusted = [public_key_arg(t) for t in args.verify_with] if args.verify_with else None
    header = decrypt_file(
        args.input, args.output, identities, verify_with=trusted, overwrite=args.force
    )
    if args.json:
        print_json({"output": args.output, "verified": trusted is not None,
                    "metadata": header.metadata})  # fmt: skip
    else:
        checked = ", signature verified" if trusted is not None else ""
        print(f"dpjax decrypt: wrote {args.output}{checked}")
    return 0


@_refusals
def _sign(args: argparse.Namespace) -> int:
    from dpjax.crypto import public_key_line
    from dpjax.crypto.sign import sign_file

    key = _private_key(args.key, args)
    path = sign_file(args.input, key, overwrite=args.force)
    if args.json:
        print_json({"signature": str(path), "signer": public_key_line(key)})
    else:
        print(f"dpjax sign: wrote {path} (signer {public_key_line(key)})")
    return 0


@_refusals
def _verify(args: argparse.Namespace) -> int:
    from dpjax.crypto.sign import verify_file

    trusted = [public_key_arg(t) for t in args.trusted]
    header = verify_file(args.input, trusted, sig_path=args.signature)
    kinds = [s.get("type") for s in header.fields["recipients"]]
    if args.json:
        print_json({"verified": True, "metadata": header.metadata, "recipients": kinds})
        return 0
    print(f"dpjax verify: {args.input}: signature OK (signed by a trusted key)")
    privacy = header.metadata.get("privacy")
    if isinstance(privacy, dict):
        print(
            f"  privacy    epsilon = {privacy.get('epsilon')}, delta = {privacy.get('delta')} "
            f"({privacy.get('accountant')})"
        )
    ck = header.metadata.get("checkpoint")
    if isinstance(ck, dict):
        print(f"  checkpoint step {ck.get('step')}, privacy configuration {ck.get('privacy')}")
    print(f"  recipients {len(kinds)} ({', '.join(map(str, kinds))})")
    return 0


# --- parsers ----------------------------------------------------------------------------------


def _passphrase_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--passphrase-file", help=f"{what}: the first line of this file")
    p.add_argument("--ask-passphrase", action="store_true", help=f"{what}: typed at a prompt")


def _key_passphrase_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-passphrase-file",
        help="passphrase of the private key file(s) given, from the first line of this file",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="make a key pair (x25519: encryption, ed25519: signing, rsa3072)",
        description="Writes PATH (private key, mode 0600, never over a file) and PATH.pub; "
        "prints the one-line public key to paste into a config (--encrypt-to, --to).",
    )
    p.add_argument("kind", choices=_KINDS)
    p.add_argument("path", help="private key file to create")
    _passphrase_flags(p, "protect the private key with a passphrase (scrypt)")
    add_json_flag(p)
    p.set_defaults(func=_keygen)

    p = subparsers.add_parser(
        "encrypt",
        help="encrypt a file to recipients' public keys or a passphrase",
        description="Envelope encryption (docs/crypto.md): the header (metadata, recipient "
        "kinds) is public and authenticated; the content is encrypted.",
    )
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="encrypted file to write (0600)")
    p.add_argument("--to", action="append", help="recipient public key (line or .pub file)")
    _passphrase_flags(p, "encrypt to a passphrase instead of --to")
    p.add_argument("--sign-with", help="Ed25519 private key file: also write OUTPUT.sig")
    _key_passphrase_flag(p)
    p.add_argument("--epsilon", type=float, help="privacy guarantee to record (public)")
    p.add_argument("--delta", type=float, help="its delta")
    p.add_argument("--accountant", help="its accountant (rdp, pld, ...)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    add_json_flag(p)
    p.set_defaults(func=_encrypt)

    p = subparsers.add_parser(
        "decrypt",
        help="decrypt a file (optionally checking its signature first)",
        description="Writes OUTPUT (0600) only once every byte is authenticated; on a wrong "
        "key or a modified file nothing is written.",
    )
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="plaintext file to write (0600)")
    p.add_argument("-i", "--identity", action="append", help="private key file (repeatable)")
    _passphrase_flags(p, "decrypt with a passphrase instead of -i")
    _key_passphrase_flag(p)
    p.add_argument(
        "--verify-with", action="append", help="trusted Ed25519 public key; INPUT.sig must verify"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    add_json_flag(p)
    p.set_defaults(func=_decrypt)

    p = subparsers.add_parser("sign", help="sign an encrypted file (writes FILE.sig)")
    p.add_argument("input")
    p.add_argument("--key", required=True, help="Ed25519 private key file")
    _key_passphrase_flag(p)
    p.add_argument("--force", action="store_true", help="replace an existing signature")
    add_json_flag(p)
    p.set_defaults(func=_sign)

    p = subparsers.add_parser(
        "verify",
        help="check who signed an encrypted file, and show its privacy guarantee",
        description="Checks FILE.sig over FILE's header and every payload byte against the "
        "trusted keys (the signer named in the .sig file is not trusted); needs no "
        "decryption key. Exit 0: verified; 2: not.",
    )
    p.add_argument("input")
    p.add_argument(
        "--trusted", action="append", required=True, help="trusted Ed25519 public key (repeatable)"
    )
    p.add_argument("--signature", help="signature file (default INPUT.sig)")
    add_json_flag(p)
    p.set_defaults(func=_verify)
