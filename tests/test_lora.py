"""dpjax.lora: adapters on a GPT, clipped sums against a naive loop, frozen base, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpjax
from dpjax import flax_ghost
from dpjax.gpt import GPT, GPTConfig, next_token_loss
from dpjax.lora import LORA, LoRALinear, add_lora, lora_params, merge_lora
from tests.test_gpt import assert_tree_close, naive_clipped_sum, tokens

SMALL = dict(context=12, d_model=16, n_heads=2, n_layers=2, d_ff=32)
PROJECTIONS = ("attention/q", "attention/k", "attention/v", "attention/o", "mlp/fc1", "mlp/fc2")


def adapted(seed=0, rank=2, randomize=True, **kw):
    """A tiny GPT with adapters; ``randomize`` gives B non-zero values so both A and B learn."""
    model = GPT(GPTConfig(**{**SMALL, **kw}), rngs=nnx.Rngs(seed))
    add_lora(model, rank=rank, alpha=4.0, rngs=nnx.Rngs(seed + 100))
    if randomize:
        state = lora_params(model)
        keys = iter(jax.random.split(jax.random.key(seed + 7), len(jax.tree.leaves(state))))
        nnx.update(
            model, jax.tree.map(lambda x: 0.3 * jax.random.normal(next(keys), x.shape), state)
        )
    return model


def base_state(model):
    return nnx.state(model, nnx.All(nnx.Param, nnx.Not(LORA)))


def _np(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def snapshot(*nodes):
    return [_np(x) for n in nodes for x in jax.tree.leaves(nnx.state(n))]


def paths(state):
    return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}


def test_starts_equal_to_base_and_adapts_only_targets():
    plain = GPT(GPTConfig(**SMALL), rngs=nnx.Rngs(0))
    x = tokens(3, 10)
    before = np.asarray(next_token_loss(plain, x))
    model = add_lora(plain, rank=2, rngs=nnx.Rngs(1))
    assert model is plain
    np.testing.assert_array_equal(np.asarray(next_token_loss(model, x)), before)  # B = 0
    expected = {
        f"blocks/{i}/{p}/{ab}/kernel"
        for i in range(2)
        for p in PROJECTIONS
        for ab in ("lora_a", "lora_b")
    }
    assert paths(lora_params(model)) == expected  # the head and embeddings are not adapted
    q = model.blocks[0].attention.q
    assert isinstance(q, LoRALinear) and q.lora_a.kernel.shape == (16, 2)
    assert q.lora_b.kernel.shape == (2, 16) and not np.any(np.asarray(q.lora_b.kernel))
    assert isinstance(model.head, nnx.Linear)


@pytest.mark.parametrize(
    "targets,count", [(("q", "v"), 2), (("mlp",), 2), (("fc1", "attention"), 5), (("head",), 0)]
)
def test_targets_select_by_path_name(targets, count):
    model = GPT(GPTConfig(**SMALL), rngs=nnx.Rngs(0))
    add_lora(model, rank=2, targets=targets, rngs=nnx.Rngs(1))
    per_block = [
        n
        for n in PROJECTIONS
        if isinstance(
            model.blocks[0].attention if n.startswith("a") else model.blocks[0].mlp, nnx.Module
        )
        and isinstance(
            getattr(getattr(model.blocks[0], n.split("/")[0]), n.split("/")[1]), LoRALinear
        )
    ]
    assert len(per_block) == count
    assert isinstance(model.head, LoRALinear) == (targets == ("head",))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(rank=0), ValueError, "rank must be >= 1"),
        (dict(rank=2.5), TypeError, "rank must be an integer"),
        (dict(rank=17), ValueError, "rank must be in \\[1, 16\\]"),
        (dict(rank=2, alpha=-1.0), ValueError, "alpha must be > 0"),
        (dict(rank=2, alpha=float("nan")), ValueError, "alpha must be > 0"),
        (dict(rank=2, targets="attention"), TypeError, "targets must be a non-empty tuple"),
        (dict(rank=2, targets=()), TypeError, "targets must be a non-empty tuple"),
        (dict(rank=2, targets=("attention", "nope")), ValueError, "targets: 'nope' selects no"),
        (dict(rank=2, targets=("",)), TypeError, "non-empty strings"),
    ],
)
def test_bad_arguments_raise_and_change_nothing(kwargs, error, match):
    model = GPT(GPTConfig(**SMALL), rngs=nnx.Rngs(0))
    before, graph = snapshot(model), nnx.graphdef(model)
    with pytest.raises(error, match=match):
        add_lora(model, rngs=nnx.Rngs(1), **kwargs)
    assert nnx.graphdef(model) == graph
    for a, b in zip(snapshot(model), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_adding_twice_raises():
    model = adapted(randomize=False)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, rank=2, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("method", ["vmap", "ghost", "auto"])
def test_clipped_sum_over_adapters_matches_naive_loop(method):
    model, x, clip = adapted(seed=3), tokens(4, 10, seed=5), 0.05
    grad_fn = dpjax.nnx.clipped_grad(next_token_loss, clip, wrt=LORA, method=method)
    g, stats = grad_fn(model, x)
    assert paths(g) == paths(lora_params(model))
    assert float(stats.frac_clipped) == 1.0  # the clip binds for every example
    ref = naive_clipped_sum(next_token_loss, model, LORA, x, clip)
    assert_tree_close(g, ref, rtol=1e-4, atol=1e-7)


def test_plan_ghost_for_every_adapter_and_no_base_sites():
    """Every adapter takes a ghost kernel; the frozen base layers are not ghost sites."""
    model, x = adapted(), tokens(3, 10)
    grad_fn = dpjax.nnx.clipped_grad(next_token_loss, 1.0, wrt=LORA, method="ghost")
    plan = grad_fn.plan(model, x)
    assert set(plan) == paths(lora_params(model))
    assert all(m.startswith("ghost:dense") for m in plan.values()), plan
    graphdef, params, rest = nnx.split(model, LORA, ...)
    ghost = flax_ghost.discover(
        lambda p, t: next_token_loss(nnx.merge(graphdef, p, rest), t), params, (x,)
    )
    # Two adapter layers per projection, nothing else: no base Linear, Embed or LayerNorm.
    assert len(ghost.sites) == 2 * 2 * len(PROJECTIONS)
    assert ghost.fallback == () and ghost.ghost_fraction == 1.0


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_bf16_compute_within_rounding_of_naive_loop(method):
    model, x, clip = adapted(seed=1), tokens(3, 10, seed=2), 0.05
    grad_fn = dpjax.nnx.clipped_grad(
        next_token_loss, clip, wrt=LORA, method=method, compute_dtype=jnp.bfloat16
    )
    g, stats = grad_fn(model, x)
    assert {a.dtype for a in jax.tree.leaves(g)} == {jnp.dtype("float32")}
    ref = naive_clipped_sum(next_token_loss, model, LORA, x, clip)
    total = np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in jax.tree.leaves(g)))
    assert total <= 3 * clip * (1 + 1e-6)  # three examples, each within C
    err = max(
        np.max(np.abs(np.asarray(a) - b))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref), strict=True)
    )
    assert err < 3 * clip * 2e-2


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-6), (jnp.bfloat16, 3e-3)])
def test_gpt_dtype_and_remat_ghost_match_naive_loop(dtype, atol):
    """A bf16 GPT with remat: ghost equals the loop to bf16 rounding (atol vs C = 0.05)."""
    model, x, clip = adapted(seed=2, dtype=dtype, remat=True), tokens(3, 10), 0.05
    g, _ = dpjax.nnx.clipped_grad(next_token_loss, clip, wrt=LORA, method="ghost")(model, x)
    ref = naive_clipped_sum(next_token_loss, model, LORA, x, clip)
    assert_tree_close(g, ref, rtol=1e-4, atol=atol)


def _private_setup(seed=0):
    model = adapted(seed=seed, randomize=False)
    grad_fn = dpjax.nnx.clipped_grad(next_token_loss, 1.0, wrt=LORA, method="ghost")
    tx = dpjax.dp_adam(
        1e-2, sensitivity=grad_fn, noise_multiplier=1.0, expected_batch_size=4,
        sampling_rate=0.01, key=jax.random.key(seed),
    )  # fmt: skip
    opt = nnx.Optimizer(model, tx, wrt=LORA)
    return model, opt, nnx.jit(dpjax.nnx.make_train_step(grad_fn))


def test_base_bit_identical_after_private_steps():
    model, opt, step = _private_setup()
    base0 = [np.asarray(a) for a in jax.tree.leaves(base_state(model))]
    lora0 = [np.asarray(a) for a in jax.tree.leaves(lora_params(model))]
    for i in range(4):
        step(model, opt, tokens(4, 10, seed=10 + i))
    for a, b in zip(jax.tree.leaves(base_state(model)), base0, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    changed = [
        not np.array_equal(np.asarray(a), b)
        for a, b in zip(jax.tree.leaves(lora_params(model)), lora0, strict=True)
    ]
    assert all(changed)
    assert dpjax.privacy_spent(opt.opt_state, 1e-5).steps == 4
    # The optimizer holds moments for the adapters only.
    assert paths(nnx.state(opt, nnx.OptState)) and not any(
        "embed" in p or "head" in p or "/base/" in p for p in paths(nnx.state(opt, nnx.OptState))
    )


@pytest.mark.parametrize(
    "batch,mask,match",
    [
        ((jnp.zeros((4, 14), jnp.int32),), None, "time <= context"),
        ((jnp.zeros((4, 10), jnp.int32),), jnp.ones(3), "mask must have shape"),
    ],
)
def test_failed_step_changes_nothing(batch, mask, match):
    model, opt, step = _private_setup(seed=1)
    step(model, opt, tokens(4, 10))  # one good step, so the state is not the initial one
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=match):
        step(model, opt, *batch, mask=mask)
    for a, b in zip(snapshot(model, opt), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_merge_lora_same_function_and_base_paths():
    model, x = adapted(seed=4), tokens(3, 10)
    plain_paths = paths(nnx.state(GPT(GPTConfig(**SMALL), rngs=nnx.Rngs(0)), nnx.Param))
    before = np.asarray(model(x))
    assert merge_lora(model) is model
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-4, atol=1e-4)
    assert paths(nnx.state(model, nnx.Param)) == plain_paths
    assert not jax.tree.leaves(lora_params(model))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(model)
