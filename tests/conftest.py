import jax
import pytest

# Strict dtype promotion and no silent rank promotion: bugs surface in tests.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True)
def _private_ledger(tmp_path, monkeypatch):
    """No test charges the user's real privacy ledger: each gets its own, in tmp_path."""
    monkeypatch.setenv("DPJAX_LEDGER", str(tmp_path / "ledger.sqlite"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
