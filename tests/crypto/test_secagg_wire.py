"""Byte encoding of secure-aggregation messages: a whole round over bytes, malformed input."""

import numpy as np
import pytest

from dpjax.crypto import secagg
from dpjax.crypto.secagg import SecAggAbort, SecAggConfig
from dpjax.crypto.secagg_wire import Inbox, decode, encode


def _wire(msg, bits=None):
    data = encode(msg, bits)
    assert isinstance(data, bytes)
    return decode(data)


def test_a_round_carried_as_bytes_gives_the_plain_sum():
    n, d, bits, t = 5, 7, 12, 3
    x = np.arange(n * d, dtype=np.uint32).reshape(n, d) * 37 % 2**bits
    cfg = SecAggConfig(9, d, bits, t)
    states, adverts = zip(*(secagg.client_advertise(cfg, i) for i in range(n)), strict=True)
    states = list(states)
    adverts = [_wire(m) for m in adverts]
    server, bcast = secagg.server_collect_keys(cfg, adverts)
    shares = []
    for i in range(n):
        states[i], m = secagg.client_share_keys(cfg, states[i], _wire(bcast[i]))
        shares.append(_wire(m))
    server, inboxes = secagg.server_collect_shares(server, shares)
    masked = []
    survivors = [0, 2, 3, 4]
    for i in survivors:
        inbox = _wire(Inbox(inboxes[i])).ciphertexts
        states[i], m = secagg.client_masked_input(cfg, states[i], inbox, x[i])
        got = _wire(m, bits)
        assert len(encode(m, bits)) == 1 + 13 + -(-d * bits // 8)  # packed to 12 bits
        assert got.client == m.client and np.array_equal(got.masked, m.masked)
        assert got.masked.dtype == np.uint32
        masked.append(got)
    server, request = secagg.server_collect_masked(server, masked)
    request = _wire(request)
    assert request == secagg.UnmaskRequest((0, 2, 3, 4), (1,))
    answers = []
    for i in survivors:
        states[i], m = secagg.client_unmask(cfg, states[i], request)
        answers.append(_wire(m))
    total = secagg.server_unmask(server, answers)
    np.testing.assert_array_equal(total, x[survivors].sum(axis=0) % 2**bits)


def test_malformed_bytes_are_refused():
    cfg = SecAggConfig(0, 3, 8, 2)
    _, adv = secagg.client_advertise(cfg, 1)
    data = encode(adv)
    with pytest.raises(SecAggAbort, match="truncated"):
        decode(data[:-1])
    with pytest.raises(SecAggAbort, match="trailing"):
        decode(data + b"\x00")
    with pytest.raises(SecAggAbort, match="unknown"):
        decode(b"\x09" + data[1:])
    with pytest.raises(SecAggAbort, match="truncated"):
        decode(b"")
    inbox = encode(Inbox({1: b"ab", 2: b"cd"}))
    repeated = inbox[:1] + b"\x00\x00\x00\x02" + inbox[5:19] * 2  # entry 1 twice
    with pytest.raises(SecAggAbort, match="repeated or malformed"):
        decode(repeated)
    with pytest.raises(SecAggAbort, match="too many entries"):
        decode(b"\x04\xff\xff\xff\xff")
    with pytest.raises(TypeError, match="secure-aggregation message"):
        encode({"client": 1})


@pytest.mark.parametrize("bits", [2, 7, 12, 26, 31, 32])
def test_packed_masked_input_round_trip(bits):
    rng = np.random.default_rng(bits)
    words = rng.integers(0, 2**bits, size=1001, dtype=np.uint64).astype(np.uint32)
    words[:2] = [0, 2**bits - 1]
    msg = secagg.MaskedInputMsg(4, words)
    data = encode(msg, bits)
    assert len(data) == 14 + (-(-1001 * bits // 8) if bits < 32 else 4 * 1001)
    got = decode(data)
    assert got.client == 4 and got.masked.dtype == np.uint32
    np.testing.assert_array_equal(got.masked, words)


def test_packing_refuses_words_too_wide_and_dirty_padding():
    msg = secagg.MaskedInputMsg(1, np.array([8, 1, 2], np.uint32))
    with pytest.raises(ValueError, match="must be < 2\\^3"):
        encode(msg, 3)
    with pytest.raises(ValueError, match="MaskedInputMsg only"):
        encode(secagg.UnmaskRequest((1,), ()), 8)
    data = bytearray(encode(secagg.MaskedInputMsg(1, np.array([1, 2, 3], np.uint32)), 3))
    data[-1] |= 0x80  # a padding bit (9 bits used of 16)
    with pytest.raises(SecAggAbort, match="non-zero padding"):
        decode(bytes(data))
