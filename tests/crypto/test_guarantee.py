"""privacy_guarantee: the header's privacy record is checked before it is written."""

import pytest

from dpjax.crypto import privacy_guarantee


@pytest.mark.parametrize(
    "args, err, match",
    [
        ((-1.0, 1e-5, "rdp"), ValueError, "epsilon must be >= 0"),
        ((float("inf"), 1e-5, "rdp"), ValueError, "epsilon must be"),
        ((float("nan"), 1e-5, "rdp"), ValueError, "epsilon must be"),
        ((1.0, 1.5, "rdp"), ValueError, r"delta must be in \[0.0, 1.0\], got "),
        ((1.0, -1e-9, "rdp"), ValueError, r"delta must be in \[0.0, 1.0\], got "),
        ((1.0, 1e-5, ""), ValueError, "accountant must be a non-empty str"),
        ((1.0, 1e-5, None), ValueError, "accountant must be a non-empty str"),
    ],
)
def test_bad_guarantee_refused(args, err, match):
    with pytest.raises(err, match=match):
        privacy_guarantee(*args)


@pytest.mark.parametrize("eps, delta", [(0.0, 0.0), (8.0, 1e-5), (1, 1)])
def test_guarantee_values(eps, delta):
    g = privacy_guarantee(eps, delta, "pld")
    assert g == {"epsilon": float(eps), "delta": float(delta), "accountant": "pld"}
    assert all(type(g[k]) is float for k in ("epsilon", "delta"))
