"""The ``dpjax finetune`` job: bad input, the privacy spent, frozen base, canary exposure."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from dpjax.cli import main
from dpjax.finetune import canaries as cm
from dpjax.finetune import job
from dpjax.finetune.config import FinetuneConfig, parse_canaries, parse_epsilons, validate_config
from dpjax.lora import LORA
from tests.oracles.accounting import dp_pld

# A tiny but real configuration: a 1-layer GPT pretrained for 30 steps on the public text,
# 8 three-digit canaries each inserted 16 times among 200 records, and 8 references.
TINY = FinetuneConfig(
    context=48,
    d_model=32,
    n_heads=2,
    n_layers=1,
    d_ff=64,
    pretrain_steps=30,
    pretrain_batch_size=16,
    num_records=200,
    num_held_out=50,
    canaries=(("id", 16),) * 8,
    num_references=8,
    id_digits=3,
    lora_rank=4,
    epochs=8.0,
    batch_size=32,
    learning_rate=0.02,
    seed=0,
    progress=False,
)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lora_rank": 0}, "lora_rank must be >= 1"),
        ({"epochs": 0.0}, "epochs must be > 0"),
        ({"batch_size": 500}, r"batch_size must be in \[1, 200\] \(num_records\)"),
        ({"l2_clip": -1.0}, "l2_clip must be > 0"),
        ({"epsilons": ()}, "epsilons must list at least one"),
        ({"epsilons": (0.0,)}, "epsilons must be > 0"),
        ({"epsilons": (8.0, 8.0)}, "epsilons must be distinct"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"id_digits": 7}, r"id_digits must be in \[1, 6\]"),
        ({"canaries": (("ssn", 2),)}, "canary kind must be one of"),
        ({"canaries": (("id", 0),)}, "canary repeats must be >= 1"),
        ({"d_model": 33}, "d_model must be a multiple of n_heads = 2"),
        ({"pretrain_steps": 0}, "pretrain_steps must be >= 1 unless pretrained"),
        ({"pretrained": "/nonexistent/base.npz"}, "pretrained /nonexistent/base.npz: no such"),
        ({"exposure_samples": 5}, r"exposure_samples must be in \[10, 1000000\]"),
        ({"accountant": "moments"}, "accountant must be one of"),
        ({"method": "loop"}, "method must be one of"),
        ({"seed": 2**32}, "seed"),
        ({"corpus_seed": -1}, "corpus_seed must be >= 0"),
        ({"public_bytes": 10}, r"public_bytes must be in \[49, 100000000\]"),
    ],
)
def test_bad_input_names_the_parameter_and_range(change, match):
    with pytest.raises(ValueError, match=match):
        validate_config(dataclasses.replace(TINY, **change))


def test_a_refused_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["finetune", "--lora-rank", "0", "--output", str(out), "--no-progress"])
    assert code == 2
    assert "lora_rank must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_context_too_short_for_the_canaries_is_refused(tmp_path):
    cfg = dataclasses.replace(TINY, context=20, output=str(tmp_path / "r.json"))
    with pytest.raises(ValueError, match="context must be >= 3"):
        job.finetune(cfg)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("text", "want"), [("1,8,inf", (1.0, 8.0, math.inf)), ("8", (8.0,))])
def test_parse_epsilons(text, want):
    assert parse_epsilons(text) == want


def test_parse_canaries():
    assert parse_canaries("id:1, card:16") == (("id", 1), ("card", 16))
    with pytest.raises(ValueError, match="canaries must be KIND:REPEATS"):
        parse_canaries("id")


@pytest.fixture(scope="module")
def base():
    return job.pretrain(TINY, jax.random.key(0))


@pytest.mark.slow
def test_save_and_load_base_round_trip(base, tmp_path):
    path = tmp_path / "base.npz"
    job.save_base(path, base, TINY)
    loaded = job.load_base(path, TINY)
    assert job.leaf_digest(loaded.state) == job.leaf_digest(base.state)
    with pytest.raises(FileExistsError):
        job.save_base(path, base, TINY)  # never overwrites
    with pytest.raises(ValueError, match="holds a model of shape"):
        job.load_base(path, dataclasses.replace(TINY, d_model=64))


@pytest.fixture(scope="module")
def runs(base):
    private = cm.private_corpus(
        TINY.corpus_seed,
        num_records=TINY.num_records,
        num_held_out=TINY.num_held_out,
        canaries=TINY.canaries,
        num_references=TINY.num_references,
        id_digits=TINY.id_digits,
    )
    out = {}
    for eps, k in ((8.0, 1), (math.inf, 2)):
        model, run = job.finetune_once(TINY, base, private, eps, jax.random.key(k))
        run.update(job.measure(TINY, model, private))
        out[eps] = (model, run)
    return out


@pytest.mark.slow
def test_the_dp_run_spends_at_most_the_requested_epsilon(runs):
    _, run = runs[8.0]
    assert run["dp"] and run["epsilon"] <= 8.0
    # dp_accounting's PLD accountant on the same mechanism (an independent, tighter bound).
    ref = dp_pld(
        run["sampling_rate"], run["noise_multiplier"], run["steps"], run["accountant_delta"]
    )
    print(f"reported epsilon {run['epsilon']:.4f} (rdp), dp_accounting PLD {ref:.4f}")
    assert ref <= run["epsilon"] + 1e-6
    assert ref > 0.5 * run["epsilon"]  # the same mechanism, not a vacuous bound
    assert run["delta"] <= TINY.delta


@pytest.mark.slow
@pytest.mark.parametrize("eps", [8.0, math.inf])
def test_base_parameters_bit_identical_after_fine_tuning(base, runs, eps):
    model, run = runs[eps]
    after = jax.tree.leaves(nnx.state(model, nnx.Not(LORA)))
    before = jax.tree.leaves(base.state)
    assert len(after) == len(before) > 0
    for a, b in zip(after, before, strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert run["base_params_unchanged"] is True
    adapters = jax.tree.leaves(nnx.state(model, LORA))
    assert adapters and any(np.any(np.asarray(x) != 0) for x in adapters)  # they did train


def _gamma_tail(mean_exposure, k):
    # Under "the model is independent of the secret" a secret's rank is uniform, exposure
    # ~ -log2 U (at most; the discrete rank only lowers it): the sum of k is below
    # Gamma(k, 1) / ln 2 in distribution.
    return float(stats.gamma.sf(k * mean_exposure * math.log(2), k))


@pytest.mark.slow
def test_non_private_fine_tuning_exposes_canaries_and_dp_does_not(runs):
    """The headline: the same fine-tuning memorizes without DP and not at epsilon 8.

    Eight 3-digit canaries (|R| = 1000, log2 |R| = 9.97 bits), each 16 records. Without DP
    the mean exposure must reach 3.5 bits and the best canary 0.9 log2 |R| (its rank in the
    top 2). At epsilon 8 the mean must stay below 3.5 bits: were the model independent of
    the secrets (the ideal), the mean of 8 exposures exceeds 3.5 bits with probability
    P(Gamma(8, 1) > 8 * 3.5 * ln 2) = 2e-4, the false-positive rate of the DP assertion.
    Never-inserted references give the random-candidate distribution, printed beside.
    """
    rows = {}
    for eps, (_, run) in runs.items():
        can = [c["exposure"] for c in run["canaries"]]
        ref = [c["exposure"] for c in run["references"]]
        rows[eps] = (np.mean(can), max(can), np.mean(ref))
        print(
            f"epsilon {eps:g}: canaries {np.round(can, 2).tolist()} mean {np.mean(can):.2f}; "
            f"never inserted {np.round(ref, 2).tolist()} mean {np.mean(ref):.2f}; "
            f"held-out {run['held_out_bits_per_byte']:.3f} bits/byte"
        )
    log2r = math.log2(1000)
    assert _gamma_tail(4.0, 8) < 2e-4
    no_dp_mean, no_dp_max, _ = rows[math.inf]
    assert no_dp_mean >= 4.0 and no_dp_max >= 0.9 * log2r
    dp_mean, _, _ = rows[8.0]
    assert dp_mean < 4.0
    assert no_dp_mean > dp_mean + 2.0


@pytest.mark.slow
def test_record_and_plot_from_a_cli_run(tmp_path):
    """A full ``dpjax finetune`` run (tiny, two epsilons): record, plot, saved base model."""
    path = tmp_path / "base.npz"
    out = tmp_path / "run.json"
    argv = ["finetune", "--save-pretrained", str(path), "--pretrain-steps", "2",
            "--epsilons", "8,inf", "--context", "64",
            "--d-model", "32", "--n-heads", "2", "--n-layers", "1", "--d-ff", "64",
            "--num-records", "60", "--canaries", "id:2,card:2", "--num-references", "1",
            "--id-digits", "2", "--epochs", "1", "--batch-size", "16", "--lora-rank", "2",
            "--exposure-samples", "20", "--no-progress", "--output", str(out),
            "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert (out.stat().st_mode & 0o777) == 0o600
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert [run["dp"] for run in r["runs"]] == [True, False]
    assert r["runs"][0]["epsilon"] <= 8.0 and r["warning"] and r["noise_keys"] == "seed"
    assert [c["method"] for c in r["runs"][0]["canaries"]] == ["exact", "extrapolated"]
    assert all(run["base_params_unchanged"] for run in r["runs"])
    assert "secret" not in json.dumps(r["runs"])  # the record never holds the secrets
    cfg = dataclasses.replace(TINY, context=64)
    assert job.leaf_digest(job.load_base(path, cfg).state) == r["base_model"]["params_sha256"]


def test_score_fn_padding_changes_nothing():
    """Right-padding to one width (one compiled program) gives the unpadded log-probabilities."""
    model = job.GPT(job.gpt_config(TINY), rngs=nnx.Rngs(params=0))
    graphdef, state = nnx.split(model)
    score = job.score_fn(graphdef, state, TINY.context)
    tokens = np.random.default_rng(0).integers(0, 256, size=(3, 17)).astype(np.int32)
    targets, last = score(tokens)
    lp = np.asarray(jax.nn.log_softmax(model(tokens), axis=-1))
    want = np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(targets, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, lp[:, -1], rtol=1e-5, atol=1e-5)
