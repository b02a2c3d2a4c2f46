"""Encryption and signatures for artifacts trained on private data.

Built on the ``cryptography`` package (OpenSSL / Rust); no cipher is written
here. See docs/crypto.md for the file format and what each check defends.
"""

from dpjax.crypto.envelope import decrypt_bytes as decrypt_bytes
from dpjax.crypto.envelope import decrypt_file as decrypt_file
from dpjax.crypto.envelope import encrypt_bytes as encrypt_bytes
from dpjax.crypto.envelope import encrypt_file as encrypt_file
from dpjax.crypto.envelope import read_header as read_header
from dpjax.crypto.errors import CryptoError as CryptoError
from dpjax.crypto.errors import DecryptionError as DecryptionError
from dpjax.crypto.errors import KeyFileError as KeyFileError
from dpjax.crypto.errors import KeyPermissionWarning as KeyPermissionWarning
from dpjax.crypto.errors import SignatureError as SignatureError
from dpjax.crypto.guarantee import privacy_guarantee as privacy_guarantee
from dpjax.crypto.keys import generate_private_key as generate_private_key
from dpjax.crypto.keys import keygen as keygen
from dpjax.crypto.keys import load_private_key as load_private_key
from dpjax.crypto.keys import load_public_key as load_public_key
from dpjax.crypto.keys import public_key_line as public_key_line
from dpjax.crypto.keys import write_private_key as write_private_key
from dpjax.crypto.recipients import Passphrase as Passphrase

__all__ = [
    "CryptoError",
    "DecryptionError",
    "KeyFileError",
    "KeyPermissionWarning",
    "Passphrase",
    "SignatureError",
    "decrypt_bytes",
    "decrypt_file",
    "encrypt_bytes",
    "encrypt_file",
    "generate_private_key",
    "keygen",
    "load_private_key",
    "load_public_key",
    "privacy_guarantee",
    "public_key_line",
    "read_header",
    "write_private_key",
]
