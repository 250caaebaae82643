"""Every tiling of the LLSA kernels computes the same attention and gradients (interpret mode).

The default tiling is held to the reference by tests/attention/llsa/test_llsa.py (at these
small shapes it runs the masked-tile dK/dV of the levels below the coarsest); here other
`Config`s (query tiles of several blocks with masked fine tiles, other pick chunks, other
dK/dV row counts and coarsest splits, the masked-tile dK/dV with other tiles and splits) are
compared with the heuristic tiling on the key-major CSR dK/dV (`masked_levels=0`)."""

from __future__ import annotations

import jax
import pytest

from lla.attention.llsa.pallas_gpu import attend, prepare
from lla.pallas_kernels.llsa import gpu
from tests.attention.op_test_base import random_qkv, relative_error

STATIC = dict(block_size=4, topk=4, levels=2)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(query_blocks=1, fine_chunk=2, masked_levels=0),
        dict(query_blocks=2, fine_chunk=1),
        dict(query_blocks=4, fine_chunk=2, pick_chunk=1),
        dict(query_blocks=2, fine_chunk=4, coarse_tile=4, dkv_rows=8, coarse_splits=2),
        # level 1 (8 blocks of 4, K = 4) on the masked-tile grid: one tile of all 32 keys,
        # tiles of 2 blocks over 4 query splits, and steps of 8 rows (2 per reading group)
        dict(masked_levels=1),
        dict(masked_levels=1, masked_tile=8, masked_splits=4),
        dict(masked_levels=1, masked_tile=4, masked_splits=2, dkv_rows=8),
        # three levels: levels 1 (16 blocks) and 2 (4 blocks) both masked, or only 2
        dict(levels=3, masked_levels=2, masked_tile=16, masked_splits=4),
        dict(levels=3, masked_levels=1, masked_splits=1),
    ],
)
def test_tilings_agree_forward_and_backward(overrides):
    overrides = dict(overrides)
    static = {**STATIC, "levels": overrides.pop("levels", STATIC["levels"])}
    tokens = 128 if static["levels"] == 2 else 256
    q, k, v = random_qkv((1, tokens, tokens, 4, 2, 16))
    shape = dict(heads=4, kv_heads=2, tokens=tokens, head_dim=16, interpret=True)
    default = gpu.make_config(**static, **shape, masked_levels=0)
    variant = gpu.make_config(**static, **shape, **overrides)
    inputs = (q, *prepare(q, k, v, default))
    cotangent = jax.random.normal(jax.random.key(2), inputs[0].shape)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: attend(*x, inputs[3], variant), *inputs[:3])
        expected, expected_vjp = jax.vjp(lambda *x: attend(*x, inputs[3], default), *inputs[:3])
    assert relative_error(out, expected) < 1e-6
    grads, expected_grads = vjp(cotangent), expected_vjp(cotangent)
    for grad, expected_grad in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads),
                                   strict=True):
        assert relative_error(grad, expected_grad) < 1e-6


def test_default_masks_the_levels_whose_picks_cover_a_quarter_of_their_blocks():
    """256² DiT shape: level 2 of L = 3 (16 blocks, K = 8) masked, level 1 (256 blocks) not;
    never for causal calls, nor compiled with a K that is not a power of two."""
    def masked(levels=3, topk=8, **kwargs):
        return gpu.make_config(16, topk, levels, 6, 6, 65536, 64, **kwargs).masked_levels

    assert (masked(), masked(levels=2), masked(topk=4)) == (1, 0, 1)
    assert masked(causal=True) == masked(topk=6) == 0
    assert masked(topk=6, interpret=True) == 1  # interpret mode runs any K
    assert gpu.make_config(16, 8, 3, 6, 6, 262144, 64).masked_levels == 0  # 64 blocks
    # B = 4, K = 4 at L = 3: level 2 (4 blocks) and level 1 (16 blocks) both masked
    assert gpu.make_config(4, 4, 3, 2, 2, 256, 16, interpret=True).masked_levels == 2
    assert gpu.make_config(4, 4, 2, 2, 2, 128, 16, interpret=True).masked_levels == 1


def test_make_config_rejects_tilings_that_do_not_divide():
    with pytest.raises(ValueError, match="query_blocks 3 must divide block_size 4"):
        gpu.make_config(4, 4, 2, 2, 2, 128, 16, query_blocks=3)
    with pytest.raises(ValueError, match=r"masked_levels 2 must be in 0\.\.L-1 = 1"):
        gpu.make_config(4, 4, 2, 2, 2, 128, 16, masked_levels=2)
    with pytest.raises(ValueError, match="masked_levels needs causal=False"):
        gpu.make_config(4, 4, 2, 2, 2, 128, 16, masked_levels=1, causal=True)
    with pytest.raises(ValueError, match="masked_splits 3 must divide N = 128"):
        gpu.make_config(4, 4, 2, 2, 2, 128, 16, masked_levels=1, masked_splits=3)
    with pytest.raises(ValueError, match="masked_splits 16 must divide N = 128 into runs of "
                                         "whole 16-row steps"):
        gpu.make_config(4, 4, 2, 2, 2, 128, 16, masked_levels=1, masked_splits=16)  # 8 rows


def test_masked_tiles_need_power_of_two_sizes_compiled():
    config = gpu.make_config(16, 8, 3, 6, 6, 65536, 64, masked_levels=1)
    assert gpu.unsupported_reasons(config) == []
    # level 2 of 256 tokens in 4 tiles of 64 x 6 heads: 32 splits of 2,048 rows
    assert (config.masked_tile_tokens(2), config.masked_splits) == (64, 32)
    odd = gpu.make_config(16, 6, 2, 6, 6, 65536, 64, masked_levels=1)
    assert gpu.unsupported_reasons(odd) == ["masked_levels needs a power-of-two topk (got 6)"]
