"""Known-answer tests for the primitives dpjax.crypto composes, from published vectors.

A wrong parameter order (salt vs info, key vs nonce, AD vs plaintext) makes
these fail. Vectors used:

- HKDF-SHA256: RFC 5869, Appendix A.1 (Test Case 1).
- AES-256-GCM: McGrew, Viega, "The Galois/Counter Mode of Operation (GCM)",
  2005, Test Cases 13, 14 and 16 (256-bit key; 16 has associated data).
- X25519: RFC 7748, Section 6.1 (Alice and Bob).
- Ed25519: RFC 8032, Section 7.1, TEST 1 (empty message).
- ChaCha20 (secure-aggregation masks): RFC 8439, Section 2.3.2 (block
  function) and Appendix A.1 Test Vector #1 (all-zero key and nonce), and
  that ``secagg_masks.expand_mask`` is that keystream read as little-endian
  uint32 words; the secure-aggregation pairwise seed is HKDF-SHA256 of the
  X25519 secret (RFC 7748 6.1 keys) with the documented info.

Not covered by a KAT here: Cobblestone-256 and HPKE (``cryptography``'s HPKE
API draws the ephemeral key itself, so RFC 9180 Appendix A vectors cannot be
replayed through it); both are covered by ``cryptography``'s own test suite
(Wycheproof c2sp_chunked_encryption and RFC 9180 vectors).
"""

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from dpjax.crypto import envelope, secagg_masks

h = bytes.fromhex


def test_hkdf_sha256_rfc5869_case1():
    ikm = h("0b" * 22)
    salt = h("000102030405060708090a0b0c")
    info = h("f0f1f2f3f4f5f6f7f8f9")
    prk = h("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
    okm = h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    assert HKDF(algorithm=hashes.SHA256(), length=42, salt=salt, info=info).derive(ikm) == okm
    assert HKDFExpand(algorithm=hashes.SHA256(), length=42, info=info).derive(prk) == okm


def test_envelope_key_derivation_is_hkdf_sha256_as_documented():
    """envelope._derive(k, info) == HKDF-SHA256(ikm=k, salt=None, info), checked via RFC 5869's
    extract with a zero salt (HashLen zero bytes), written out with HMAC."""
    import hashlib
    import hmac

    k = bytes(range(32))
    info = b"dpjax-envelope-v1 payload"
    prk = hmac.new(b"\x00" * 32, k, hashlib.sha256).digest()
    t1 = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    assert envelope._derive(k, info) == t1


@pytest.mark.parametrize(
    "key, iv, pt, aad, ct, tag",
    [
        (  # Test Case 13
            "00" * 32,
            "00" * 12,
            "",
            "",
            "",
            "530f8afbc74536b9a963b4f1c4cb738b",
        ),
        (  # Test Case 14
            "00" * 32,
            "00" * 12,
            "00" * 16,
            "",
            "cea7403d4d606b6e074ec5d3baf39d18",
            "d0d1c8a799996bf0265b98b5d48ab919",
        ),
        (  # Test Case 16
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        ),
    ],
)
def test_aes256_gcm_mcgrew_viega(key, iv, pt, aad, ct, tag):
    aead = AESGCM(h(key))
    out = aead.encrypt(h(iv), h(pt), h(aad) if aad else None)
    assert out == h(ct) + h(tag)
    assert aead.decrypt(h(iv), out, h(aad) if aad else None) == h(pt)


def test_x25519_rfc7748_section_6_1():
    a = x25519.X25519PrivateKey.from_private_bytes(
        h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    b = x25519.X25519PrivateKey.from_private_bytes(
        h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert a.public_key().public_bytes(*raw) == h(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert b.public_key().public_bytes(*raw) == h(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert a.exchange(b.public_key()) == shared == b.exchange(a.public_key())


def test_ed25519_rfc8032_test1():
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(
        h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert sk.public_key().public_bytes(*raw) == h(
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    sig = h(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert sk.sign(b"") == sig
    sk.public_key().verify(sig, b"")


# RFC 8439 2.3.2 (key 00..1f, counter 1, nonce 000000090000004a00000000) and
# A.1 #1 (zero key, counter 0, zero nonce): the first 64 keystream bytes.
# cryptography's ChaCha20 nonce is the 4-byte little-endian counter + the 12-byte nonce.
CHACHA20_VECTORS = [
    (
        bytes(range(32)),
        "01000000" + "000000090000004a00000000",
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e",
    ),
    (
        bytes(32),
        "00" * 16,
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
    ),
]


@pytest.mark.parametrize("key, nonce, stream", CHACHA20_VECTORS)
def test_chacha20_rfc8439(key, nonce, stream):
    enc = Cipher(algorithms.ChaCha20(key, h(nonce)), mode=None).encryptor()
    assert enc.update(bytes(64)) == h(stream)


def test_secagg_mask_is_the_chacha20_keystream():
    words = secagg_masks.expand_mask(bytes(32), 16, 32)
    assert words.tobytes() == h(CHACHA20_VECTORS[1][2])  # little-endian words
    assert np.array_equal(secagg_masks.expand_mask(bytes(32), 16, 12), words & 0xFFF)


def test_secagg_pair_seed_is_hkdf_of_x25519_as_documented():
    """Pairwise mask seed = HKDF-SHA256(X25519 secret, no salt, info = label || round || ids)."""
    a = x25519.X25519PrivateKey.from_private_bytes(
        h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    b = x25519.X25519PrivateKey.from_private_bytes(
        h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")  # RFC 7748
    info = b"dpjax-secagg-v1 pairwise mask" + (7).to_bytes(8, "big")
    info += (2).to_bytes(8, "big") + (5).to_bytes(8, "big")
    expected = HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)
    assert secagg_masks.pair_seed(a, b.public_key(), 7, 5, 2) == expected
    assert secagg_masks.pair_seed(b, a.public_key(), 7, 2, 5) == expected
