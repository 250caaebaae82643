"""LLSA's ablation switches (paper Tables 1a and 5a): `enrich_levels` (Lₑ, the coarse levels
1..Lₑ in each query block's KV set; 0 = plain top-K) and `reweight` (the log(B^l) count bias).

The reference is held to the oracle, which implements the switches from the spec, for every
Lₑ in 0..L and both reweight values at L = 1 and 2 (forward); the Pallas kernels (GPU and TPU, in
interpret mode, forward and VJP) to the reference on the same grid, less two corners that
trace no new kernel code: the defaults (`test_llsa.py`) and Lₑ = 0 with reweighting (the
same kernels as without: level 0 has weight 1 either way, checked on the traced program).
Lₑ = 0 is compared with dense attention masked to the selected fine blocks, and the
defaults with passing them explicitly, bit for bit, with unchanged kernel code. Interpret
mode costs seconds per configuration, so the kernels run on the smallest shapes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.pallas_kernels.llsa import gpu, tpu
from tests.attention.llsa import oracle
from tests.attention.llsa.test_llsa import assert_interpret_matches_reference
from tests.attention.llsa.test_reference import (
    BOUND,
    MIN_MARGIN,
    normal,
    structured_qkv,
)
from tests.attention.op_test_base import random_qkv, relative_error

# (shape [batch, N, N, H, Hkv, D], static) per L for the reference against the oracle: L = 1
# with GQA 2:1 and an odd topk, L = 2 with a block size that is not a power of two (both
# from test_llsa.py).
SHAPES = {
    1: ((1, 32, 32, 4, 2, 8), dict(block_size=4, topk=3, levels=1)),
    2: ((1, 72, 72, 2, 2, 8), dict(block_size=6, topk=2, levels=2)),
}
# The kernels' shapes (TPU interpret time grows with rows x query blocks x steps): 32 tokens,
# GQA 2:1; L = 1 with an odd topk, L = 2 with K = N / B^L (the whole coarsest level
# selected, as in test_reference.py).
KERNEL_SHAPES = {
    1: ((1, 32, 32, 2, 1, 8), dict(block_size=4, topk=3, levels=1)),
    2: ((1, 32, 32, 2, 1, 8), dict(block_size=4, topk=2, levels=2)),
}
ABLATIONS = [(levels, enrich, reweight) for levels in (1, 2) for enrich in range(levels + 1)
             for reweight in (True, False)]

# The kernels skip the corners that trace no new kernel code (see the module docstring).
KERNEL_ABLATIONS = [(levels, enrich, reweight) for levels, enrich, reweight in ABLATIONS
                    if (enrich, reweight) not in ((levels, True), (0, True))]


def ablation_id(case):
    levels, enrich, reweight = case
    return f"L{levels}-Le{enrich}-{'reweight' if reweight else 'unweighted'}"


def level_inputs(levels, seed=0):
    """Level-structured inputs of SHAPES[levels] (no near-ties) and its static arguments."""
    (batch, tokens, _, heads, kv_heads, dim), static = SHAPES[levels]
    q, k, v = structured_qkv(batch, tokens, heads, kv_heads, dim, static["block_size"],
                             levels, seed)
    assert oracle.selection_margin(q, k, **static) > MIN_MARGIN
    return (q, k, v), static


@pytest.mark.parametrize("case", ABLATIONS, ids=ablation_id)
def test_xla_matches_oracle_with_ablations(case):
    """Forward only (gradients: the reference is autodiff of this forward; the kernels' VJPs
    are held to it below)."""
    levels, enrich, reweight = case
    qkv, static = level_inputs(levels)
    ablation = dict(static, enrich_levels=enrich, reweight=reweight)
    with jax.default_matmul_precision("highest"):
        out = attention.llsa(*qkv, **ablation, implementation="xla")
        expected = oracle.llsa_oracle(*qkv, **ablation)
    assert relative_error(out, expected) < BOUND


@pytest.mark.parametrize("implementation", ["pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize("case", KERNEL_ABLATIONS, ids=ablation_id)
def test_pallas_interpret_matches_reference_with_ablations(implementation, case):
    levels, enrich, reweight = case
    shape, static = KERNEL_SHAPES[levels]
    assert_interpret_matches_reference(implementation, shape,
                                       dict(static, enrich_levels=enrich, reweight=reweight))


def masked_dense_top_k(q, k, v, fine_picks, block_size):
    """Dense softmax attention, each query restricted to the tokens of its query block's
    selected fine blocks (`fine_picks` [Bt][H] of int [N / b, K], from `oracle.select`)."""
    batch, tokens, heads, dim = q.shape
    group = heads // k.shape[2]
    mask = np.zeros((batch, heads, tokens, tokens), bool)
    for n in range(batch):
        for h in range(heads):
            for query in range(tokens):
                for block in fine_picks[n][h][query // block_size]:
                    mask[n, h, query, block * block_size:(block + 1) * block_size] = True
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(dim)
    probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhnm,bmhd->bnhd", probs, v)


@pytest.mark.parametrize("levels", [1, 2])
def test_no_enrichment_is_plain_top_k(levels):
    """Lₑ = 0: attention over the selected fine blocks only (the reference, with and
    without reweighting, and the oracle)."""
    (q, k, v), static = level_inputs(levels, seed=1)
    selections = oracle.select(q, k, static["block_size"], static["topk"], levels)
    fine_picks = [[s.picks[1] for s in row] for row in selections]
    cotangent = normal(q.shape, seed=3)
    with jax.default_matmul_precision("highest"):
        expected, expected_vjp = jax.vjp(
            lambda *x: masked_dense_top_k(*x, fine_picks, static["block_size"]), q, k, v)
        out, vjp = jax.vjp(lambda *x: attention.llsa(*x, **static, enrich_levels=0,
                                                     implementation="xla"), q, k, v)
        assert relative_error(out, expected) < BOUND
        for grad, expected_grad in zip(vjp(cotangent), expected_vjp(cotangent), strict=True):
            assert relative_error(grad, expected_grad) < BOUND
        unweighted = attention.llsa(q, k, v, **static, enrich_levels=0, reweight=False,
                                    implementation="xla")
        assert relative_error(unweighted, expected) < BOUND
        assert relative_error(oracle.llsa_oracle(q, k, v, **static, enrich_levels=0),
                              expected) < BOUND


@pytest.mark.parametrize("levels", [1, 2])
def test_each_switch_changes_the_output(levels):
    """reweight=False and each Lₑ < L give visibly different outputs (not a flag ignored)."""
    (q, k, v), static = level_inputs(levels)

    def run(**ablation):
        with jax.default_matmul_precision("highest"):
            return attention.llsa(q, k, v, **static, **ablation, implementation="xla")

    full = run()
    assert relative_error(run(reweight=False), full) > 1e-2
    assert relative_error(run(enrich_levels=levels - 1), full) > 1e-2


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu", "pallas_tpu"])
def test_defaults_equal_explicit_full_llsa_bit_for_bit(implementation):
    shape, static = KERNEL_SHAPES[2]
    q, k, v = random_qkv(shape)
    interpret = {} if implementation == "xla" else {"interpret": True}

    def run(**ablation):
        return attention.llsa(q, k, v, **static, **ablation, **interpret,
                              implementation=implementation)

    np.testing.assert_array_equal(run(), run(enrich_levels=2, reweight=True))


@pytest.mark.parametrize("kernels", [gpu, tpu], ids=["gpu", "tpu"])
def test_default_switches_trace_the_same_kernels(kernels):
    """A config without the switches (as before they existed) and one with Lₑ = L and
    reweighting trace identical forward programs (the switches are static Python branches);
    so do Lₑ = 0 with and without reweighting (level 0 has weight 1 either way)."""
    shape, static = KERNEL_SHAPES[2]
    batch, tokens, _, heads, kv_heads, dim = shape
    size, topk, levels = static["block_size"], static["topk"], static["levels"]
    counts = [tokens // size ** level for level in range(levels + 1)]  # N_l
    picks = [jnp.zeros((batch * heads, count, topk), jnp.int32) for count in counts[1:]]
    if kernels is gpu:  # layouts of `gpu`: token-major, blocks below the coarsest level
        q = jnp.zeros((batch, tokens, heads, dim))
        k_levels = [jnp.zeros((batch, count // size, size, kv_heads, dim))
                    for count in counts[:-1]] + [jnp.zeros((batch, counts[-1], kv_heads, dim))]
    else:  # layouts of `tpu`: heads-major rows
        q = jnp.zeros((batch * heads, tokens, dim))
        k_levels = [jnp.zeros((batch * kv_heads, count, dim)) for count in counts]

    def trace(**ablation):
        config = kernels.make_config(size, topk, levels, heads, kv_heads, tokens, dim,
                                     **ablation)
        return str(jax.make_jaxpr(lambda *x: kernels.forward(*x, config))(
            q, k_levels, k_levels, picks))

    assert trace() == trace(enrich_levels=levels, reweight=True)
    assert trace() != trace(reweight=False)
    assert trace(enrich_levels=0) == trace(enrich_levels=0, reweight=False) != trace()


@pytest.mark.parametrize(
    ("ablation", "message"),
    [
        (dict(enrich_levels=-1), r"enrich_levels must be None \(all 2 levels\) or an int in "
                                 r"0\.\.levels = 0\.\.2"),
        (dict(enrich_levels=3), "enrich_levels"),
        (dict(enrich_levels=1.0), "enrich_levels"),
        (dict(enrich_levels=True), "enrich_levels"),
        (dict(reweight=1), "reweight must be True or False"),
        (dict(reweight=None), "reweight"),
    ],
)
def test_rejects_bad_ablation_arguments(ablation, message):
    q = k = v = jnp.zeros((1, 32, 2, 8))
    with pytest.raises(ValueError, match=message):
        attention.llsa(q, k, v, block_size=4, topk=2, levels=2, **ablation)
