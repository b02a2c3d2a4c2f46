"""Envelope files: round trips for every recipient kind, and every tampering refused.

The adversary holds the file (and other files for the same recipients), may
flip, cut, reorder or splice bytes, and sees every error message. Each attack
must raise ``DecryptionError`` and leave no plaintext anywhere.
"""

import hashlib
import io
import json
import os
import tracemalloc

import pytest

from dpjax.crypto import (
    DecryptionError,
    Passphrase,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    envelope,
    generate_private_key,
    read_header,
)

from .conftest import TEST_LOG_N

CHUNK = 16 * 1024  # Cobblestone plaintext chunk
CT_CHUNK = CHUNK + 16  # ciphertext chunk: plaintext + GCM tag
META = {"privacy": {"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp"}}


def _payload_start(blob: bytes) -> int:
    return len(read_header(io.BytesIO(blob)).raw)


def _dir_entries(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 4 * CHUNK, 5 * CHUNK + 7])
def test_file_round_trip_every_recipient_kind(tmp_path, pair, size):
    recipient, identity = pair
    data = os.urandom(size)
    (tmp_path / "plain").write_bytes(data)
    header = encrypt_file(tmp_path / "plain", tmp_path / "enc", [recipient], metadata=META)
    assert header.metadata == META
    assert (os.stat(tmp_path / "enc").st_mode & 0o777) == 0o600
    got = decrypt_file(tmp_path / "enc", tmp_path / "out", [identity])
    assert (tmp_path / "out").read_bytes() == data
    assert got.metadata == META
    assert (os.stat(tmp_path / "out").st_mode & 0o777) == 0o600
    assert _dir_entries(tmp_path) == ["enc", "out", "plain"]  # no temp files left


def test_multiple_recipients_each_can_decrypt(x25519_key, rsa_key):
    other = generate_private_key("x25519")
    blob = encrypt_bytes(
        b"weights", [x25519_key.public_key(), rsa_key.public_key(), other.public_key()]
    )
    for ident in (x25519_key, rsa_key, other):
        assert decrypt_bytes(blob, [ident]) == b"weights"
    assert len(read_header(io.BytesIO(blob)).fields["recipients"]) == 3


def test_fresh_data_key_per_file(x25519_key):
    a = encrypt_bytes(b"same", [x25519_key.public_key()])
    b = encrypt_bytes(b"same", [x25519_key.public_key()])
    assert a != b and a[_payload_start(a) :] != b[_payload_start(b) :]


@pytest.mark.parametrize("kind", ["x25519", "rsa3072", "passphrase"])
def test_wrong_key_is_refused(kind, recipient_pairs, x25519_key):
    recipient, _ = recipient_pairs[kind]
    blob = encrypt_bytes(b"secret", [recipient])
    wrong = {
        "x25519": generate_private_key("x25519"),
        "rsa3072": x25519_key,  # a key of another kind opens nothing
        "passphrase": Passphrase("incorrect horse"),
    }[kind]
    with pytest.raises(DecryptionError, match="no identity given can open this file"):
        decrypt_bytes(blob, [wrong])


def _blob(identity_pair, n_chunks=3, tail=100):
    recipient, identity = identity_pair
    data = os.urandom(n_chunks * CHUNK + tail)
    return encrypt_bytes(data, [recipient], metadata=META), identity, data


def _positions(blob):
    """Every header byte, both sides of every chunk boundary, a stride through the payload."""
    start = _payload_start(blob)
    pos = set(range(start))
    for b in range(start, len(blob) + 1, CT_CHUNK):
        pos.update(p for p in range(b - 20, b + 20) if start <= p < len(blob))
    pos.update(range(start, len(blob), 211))
    pos.update(range(len(blob) - 40, len(blob)))  # last chunk and its tag
    return sorted(pos)


def test_flipped_byte_anywhere_is_refused(x25519_key):
    blob, identity, _ = _blob((x25519_key.public_key(), x25519_key))
    positions = _positions(blob)
    assert len(positions) > 400
    for p in positions:
        bad = bytearray(blob)
        bad[p] ^= 0x01
        with pytest.raises(DecryptionError):
            decrypt_bytes(bytes(bad), [identity])


@pytest.mark.parametrize("kind", ["rsa3072", "passphrase"])
def test_flipped_header_byte_is_refused_other_stanzas(kind, recipient_pairs):
    blob, identity, _ = _blob(recipient_pairs[kind], n_chunks=1)
    for p in range(0, _payload_start(blob), 3):
        bad = bytearray(blob)
        bad[p] ^= 0x80
        with pytest.raises((DecryptionError, ValueError)):
            decrypt_bytes(bytes(bad), [identity])


def test_truncation_is_refused_including_at_chunk_boundaries(x25519_key):
    blob, identity, _ = _blob((x25519_key.public_key(), x25519_key), tail=0)  # ends on a boundary
    start = _payload_start(blob)
    cuts = {0, 5, start - 1, start, len(blob) - 1, len(blob) - 16}
    cuts.update(range(start + CT_CHUNK, len(blob), CT_CHUNK))  # drop whole trailing chunks
    for cut in sorted(cuts):
        with pytest.raises(DecryptionError):
            decrypt_bytes(blob[:cut], [identity])
    for extra in (b"x", bytes(16), blob[-CT_CHUNK:]):  # appended data, a repeated last chunk
        with pytest.raises(DecryptionError, match="payload authentication failed"):
            decrypt_bytes(blob + extra, [identity])


def test_reordered_or_duplicated_chunks_are_refused(x25519_key):
    blob, identity, _ = _blob((x25519_key.public_key(), x25519_key), n_chunks=4)
    start = _payload_start(blob)
    salt_etc = blob[start : start + 56]  # Cobblestone's fixed prefix (56 bytes)
    body = blob[start + 56 :]
    chunks = [body[i : i + CT_CHUNK] for i in range(0, len(body), CT_CHUNK)]
    head = blob[:start] + salt_etc
    for order in ([1, 0, 2, 3, 4], [0, 1, 3, 2, 4], [0, 0, 1, 2, 3, 4], [0, 1, 2, 4]):
        with pytest.raises(DecryptionError, match="payload authentication failed"):
            decrypt_bytes(head + b"".join(chunks[i] for i in order), [identity])


def test_header_swapped_between_files_is_refused(x25519_key):
    r = [x25519_key.public_key()]
    a = encrypt_bytes(os.urandom(3 * CHUNK), r, metadata={"privacy": {"epsilon": 8.0}})
    b = encrypt_bytes(os.urandom(3 * CHUNK), r, metadata={"privacy": {"epsilon": 0.5}})
    sa, sb = _payload_start(a), _payload_start(b)
    for spliced in (b[:sb] + a[sa:], a[:sa] + b[sb:]):
        with pytest.raises(DecryptionError, match="payload authentication failed"):
            decrypt_bytes(spliced, [x25519_key])


def test_metadata_edit_is_refused(x25519_key):
    """Claim a smaller epsilon in the header (re-encoded, length fixed): refused."""
    blob = encrypt_bytes(b"w" * 1000, [x25519_key.public_key()], metadata=META)
    header = read_header(io.BytesIO(blob))
    fields = json.loads(header.raw[13:-32])
    fields["metadata"]["privacy"]["epsilon"] = 0.01
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    forged = envelope.MAGIC + bytes([1]) + len(body).to_bytes(4, "big") + body + header.raw[-32:]
    with pytest.raises(DecryptionError, match="header authentication failed"):
        decrypt_bytes(forged + blob[len(header.raw) :], [x25519_key])


def test_failed_decrypt_leaves_no_plaintext_and_keeps_existing_output(tmp_path, x25519_key):
    data = os.urandom(4 * CHUNK)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()])
    blob = (tmp_path / "enc").read_bytes()
    (tmp_path / "enc").write_bytes(blob[:-1])  # last chunk truncated: first chunks authenticate
    with pytest.raises(DecryptionError):
        decrypt_file(tmp_path / "enc", tmp_path / "out", [x25519_key])
    assert _dir_entries(tmp_path) == ["enc", "plain"]
    (tmp_path / "out").write_bytes(b"previous")
    with pytest.raises(DecryptionError):
        decrypt_file(tmp_path / "enc", tmp_path / "out", [x25519_key], overwrite=True)
    assert (tmp_path / "out").read_bytes() == b"previous"
    assert _dir_entries(tmp_path) == ["enc", "out", "plain"]


def test_streaming_memory_is_bounded(tmp_path, x25519_key):
    size = 8 * 1024 * 1024
    with open(tmp_path / "plain", "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        encrypt_file(tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()])
        decrypt_file(tmp_path / "enc", tmp_path / "out", [x25519_key])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 8, f"peak Python allocation {peak} bytes for an {size}-byte file"
    h = hashlib.sha256
    assert (
        h((tmp_path / "out").read_bytes()).digest() == h((tmp_path / "plain").read_bytes()).digest()
    )


@pytest.mark.parametrize(
    "recipients, err, match",
    [
        ([], ValueError, "recipients must hold at least 1"),
        ("dpjax-x25519:AAAA", TypeError, "recipients must be a list"),
        (["ed25519"], ValueError, "got an Ed25519"),
        (["pw", "x25519"], ValueError, "Passphrase must be the only recipient"),
    ],
)
def test_bad_recipients_refused_before_any_write(
    tmp_path, ed25519_key, x25519_key, recipients, err, match
):
    sub = {
        "ed25519": ed25519_key.public_key(),
        "x25519": x25519_key.public_key(),
        "pw": Passphrase("pw", log_n=TEST_LOG_N),
    }
    if isinstance(recipients, list):
        recipients = [sub[r] for r in recipients]
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(err, match=match):
        encrypt_file(tmp_path / "plain", tmp_path / "enc", recipients)
    assert _dir_entries(tmp_path) == ["plain"]


def test_bad_metadata_and_paths_refused(tmp_path, x25519_key):
    r = [x25519_key.public_key()]
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(ValueError, match="metadata must be JSON"):
        encrypt_file(tmp_path / "plain", tmp_path / "enc", r, metadata={"epsilon": float("nan")})
    with pytest.raises(FileNotFoundError, match="input file"):
        encrypt_file(tmp_path / "nope", tmp_path / "enc", r)
    with pytest.raises(ValueError, match="output must differ from the input"):
        encrypt_file(tmp_path / "plain", tmp_path / "plain", r, overwrite=True)
    (tmp_path / "enc").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        encrypt_file(tmp_path / "plain", tmp_path / "enc", r)
    assert (tmp_path / "enc").read_bytes() == b"keep"


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"", "not a dpjax envelope"),
        (b"PK\x03\x04 zip file", "not a dpjax envelope"),
        (envelope.MAGIC + b"\x02" + b"\x00" * 4, "version must be 1"),
        (envelope.MAGIC + b"\x01" + b"\xff" * 4, "header length must be at most"),
        (envelope.MAGIC + b"\x01" + b"\x00\x00\x00\x10" + b"{}", "truncated inside the header"),
    ],
)
def test_not_an_envelope(blob, match, x25519_key):
    with pytest.raises(DecryptionError, match=match):
        decrypt_bytes(blob, [x25519_key])


def _forge(fields, mac=bytes(32)):
    body = json.dumps(fields).encode()
    return envelope.MAGIC + b"\x01" + len(body).to_bytes(4, "big") + body + mac


def test_deeply_nested_header_is_a_clear_error(x25519_key):
    deep = b"[" * 100_000 + b"]" * 100_000
    blob = envelope.MAGIC + b"\x01" + len(deep).to_bytes(4, "big") + deep + bytes(32)
    with pytest.raises(DecryptionError, match="header is not valid JSON"):
        decrypt_bytes(blob, [x25519_key])


def test_passphrase_stanza_with_others_is_refused_on_reading(x25519_key):
    """A file mixing a passphrase stanza with key stanzas (which we never write) is refused."""
    a = encrypt_bytes(b"x", [Passphrase("pw", log_n=TEST_LOG_N)])
    b = encrypt_bytes(b"x", [x25519_key.public_key()])
    fields = json.loads(read_header(io.BytesIO(b)).raw[13:-32])
    fields["recipients"] += json.loads(read_header(io.BytesIO(a)).raw[13:-32])["recipients"]
    with pytest.raises(DecryptionError, match="malformed or unsupported"):
        decrypt_bytes(_forge(fields), [x25519_key])


def test_scrypt_work_factor_in_file_is_bounded():
    """A file asking for 2**40 scrypt work is refused before any work (denial of service)."""
    blob = encrypt_bytes(b"x", [Passphrase("pw", log_n=TEST_LOG_N)])
    header = read_header(io.BytesIO(blob))
    fields = json.loads(header.raw[13:-32])
    fields["recipients"][0]["log_n"] = 40
    body = json.dumps(fields).encode()
    forged = envelope.MAGIC + b"\x01" + len(body).to_bytes(4, "big") + body + header.raw[-32:]
    with pytest.raises(ValueError, match=r"scrypt log_n in the file must be in \[1, 22\], got 40"):
        decrypt_bytes(forged, [Passphrase("pw")])


def test_no_message_contains_the_data_key_or_passphrase(monkeypatch, x25519_key):
    data_key = bytes(range(32))
    monkeypatch.setattr(envelope, "_new_data_key", lambda: data_key)
    blob = encrypt_bytes(b"secret plaintext", [x25519_key.public_key()], metadata=META)
    forms = [data_key.hex(), data_key.hex().upper(), repr(data_key), data_key.decode("latin-1")]
    import base64

    forms.append(base64.b64encode(data_key).decode())
    messages = []
    for cut in (len(blob) - 1, len(blob) - 20):
        try:
            decrypt_bytes(blob[:cut], [x25519_key])
        except DecryptionError as e:
            messages.append(str(e) + repr(e))
    bad = bytearray(blob)
    bad[_payload_start(blob) - 1] ^= 1
    try:
        decrypt_bytes(bytes(bad), [x25519_key])
    except DecryptionError as e:
        messages.append(str(e) + repr(e))
    try:
        decrypt_bytes(blob, [Passphrase("hunter2-secret")])
    except DecryptionError as e:
        messages.append(str(e) + repr(e))
    messages.append(repr(Passphrase("hunter2-secret")))
    assert len(messages) == 5
    for m in messages:
        assert "secret plaintext" not in m and "hunter2-secret" not in m
        assert not any(f in m for f in forms)


@pytest.mark.parametrize("bad", ["public-line", "ed25519", "path", "empty"])
def test_bad_identities_refused_before_any_write(tmp_path, x25519_key, ed25519_key, bad):
    from dpjax.crypto import public_key_line

    (tmp_path / "plain").write_bytes(b"x")
    encrypt_file(tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()])
    ident = {
        "public-line": public_key_line(x25519_key),
        "ed25519": ed25519_key,
        "path": tmp_path / "id",
        "empty": [],
    }[bad]
    err = ValueError if bad == "empty" else TypeError
    with pytest.raises(err, match="identities must"):
        decrypt_file(tmp_path / "enc", tmp_path / "out", ident)
    assert _dir_entries(tmp_path) == ["enc", "plain"]


READ = envelope.READ_SIZE  # bytes per streaming step (a multiple of CHUNK)


@pytest.mark.parametrize("size", [READ - 1, READ, READ + 1, 2 * READ + CHUNK + 3])
def test_file_and_bytes_paths_interoperate_across_read_blocks(tmp_path, x25519_key, size):
    """write_from (readinto) and write (slices of one buffer) make the same, readable format."""
    data = os.urandom(size)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()])
    assert decrypt_bytes((tmp_path / "enc").read_bytes(), [x25519_key]) == data
    (tmp_path / "enc2").write_bytes(encrypt_bytes(data, [x25519_key.public_key()]))
    decrypt_file(tmp_path / "enc2", tmp_path / "out", [x25519_key])
    assert (tmp_path / "out").read_bytes() == data
    assert os.path.getsize(tmp_path / "enc") == os.path.getsize(tmp_path / "enc2")


def test_decrypt_file_without_verification_refuses_every_tampering(
    tmp_path, x25519_key, monkeypatch
):
    """No verify_with: the payload is not hashed, and the AEAD alone refuses every change.

    Flips on both sides of every read block and chunk boundary, truncations at
    chunk boundaries, appended bytes: each raises, and no output or temp file appears.
    """
    data = os.urandom(2 * READ + 3 * CHUNK + 100)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()], metadata=META)
    blob = (tmp_path / "enc").read_bytes()
    start = _payload_start(blob)

    def no_hash(*args, **kwargs):
        raise AssertionError("payload hashed without a signature to check")

    monkeypatch.setattr(envelope.hashlib, "sha512", no_hash)
    positions = {0, 9, start - 1}
    for b in list(range(start, len(blob), CT_CHUNK)) + list(range(start, len(blob), READ)):
        positions.update(p for p in (b - 1, b, b + 1, b + 56) if start <= p < len(blob))
    positions.update(range(len(blob) - 17, len(blob)))
    variants = [bytes(blob[:p]) + bytes([blob[p] ^ 0x04]) + blob[p + 1 :] for p in positions]
    variants += [blob[:cut] for cut in range(start + CT_CHUNK, len(blob), CT_CHUNK)]
    variants += [blob + b"\x00", blob + blob[-CT_CHUNK:]]
    assert len(variants) > 100
    for bad in variants:
        (tmp_path / "enc").write_bytes(bad)
        with pytest.raises(DecryptionError):
            decrypt_file(tmp_path / "enc", tmp_path / "out", [x25519_key])
        assert _dir_entries(tmp_path) == ["enc", "plain"]
    (tmp_path / "enc").write_bytes(blob)  # the untouched file still decrypts, unhashed
    decrypt_file(tmp_path / "enc", tmp_path / "out", [x25519_key])
    assert (tmp_path / "out").read_bytes() == data


def test_decrypt_stream_chunks_are_views_a_sink_must_copy(x25519_key):
    """The sink contract: chunks are reused buffers; bytes(chunk) keeps them intact."""
    data = os.urandom(3 * READ + 5)
    blob = encrypt_bytes(data, [x25519_key.public_key()])
    kept: list[bytes] = []
    envelope.decrypt_stream(io.BytesIO(blob), [x25519_key], lambda c: kept.append(bytes(c)))
    assert b"".join(kept) == data
    assert len(kept) > 3  # streamed in several bounded pieces, not at once
    assert max(len(c) for c in kept) <= READ + CHUNK


def test_write_atomically_fsyncs_file_then_folder(tmp_path, x25519_key, monkeypatch):
    """Durability: the data is fsynced before the rename, the folder after it."""
    events = []
    real_replace = os.replace
    monkeypatch.setattr(envelope, "_sync", lambda fd: events.append(("sync", os.fstat(fd).st_ino)))
    monkeypatch.setattr(
        envelope.os, "replace", lambda a, b: (events.append(("replace",)), real_replace(a, b))
    )
    (tmp_path / "plain").write_bytes(b"weights")
    encrypt_file(tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()])
    assert events == [
        ("sync", os.stat(tmp_path / "enc").st_ino),
        ("replace",),
        ("sync", os.stat(tmp_path).st_ino),
    ]


def test_writer_accepts_any_sequence_of_write_sizes(x25519_key):
    """Reused output buffer: held-back input plus any write size never overflows it."""
    import random

    rng = random.Random(1)
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, READ - 1, READ, READ + 1]
    for _ in range(8):
        out, parts = io.BytesIO(), []
        data_key = envelope._new_data_key()
        header = envelope._header_block(data_key, [x25519_key.public_key()], {})
        w = envelope._Writer(out, data_key, header)
        for _ in range(rng.randint(1, 10)):
            part = os.urandom(rng.choice(sizes + [rng.randint(0, 3 * READ)]))
            parts.append(part)
            w.write(part)
        w.finish()
        assert decrypt_bytes(out.getvalue(), [x25519_key]) == b"".join(parts)
