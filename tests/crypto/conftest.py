"""Keys shared by the crypto tests (RSA-3072 generation is slow: once per session)."""

import pytest

from dpjax.crypto import Passphrase, generate_private_key

# scrypt work factor for tests only; production uses recipients.SCRYPT_LOG_N.
TEST_LOG_N = 10


@pytest.fixture(scope="session")
def x25519_key():
    return generate_private_key("x25519")


@pytest.fixture(scope="session")
def ed25519_key():
    return generate_private_key("ed25519")


@pytest.fixture(scope="session")
def rsa_key():
    return generate_private_key("rsa3072")


@pytest.fixture(scope="session")
def recipient_pairs(x25519_key, rsa_key):
    """(kind, recipient for encryption, identity for decryption)."""
    return {
        "x25519": (x25519_key.public_key(), x25519_key),
        "x25519-line": (None, x25519_key),
        "rsa3072": (rsa_key.public_key(), rsa_key),
        "passphrase": (Passphrase("correct horse", log_n=TEST_LOG_N), Passphrase("correct horse")),
    }


@pytest.fixture(params=["x25519", "x25519-line", "rsa3072", "passphrase"])
def pair(request, recipient_pairs):
    from dpjax.crypto import public_key_line

    recipient, identity = recipient_pairs[request.param]
    if recipient is None:
        recipient = public_key_line(identity)
    return recipient, identity
