"""The published LLSA kernels' call and its gate, for `experiments.bench_published_llsa`
(kept free of flags so that tests import them beside the other tools): how the published
kernel package is called, how one forward and forward+backward are timed, and how one
call's output is held to lla's reference."""

from __future__ import annotations

# [B, N, H, D]. The published L = 2 forward reads the coarsest level in tiles of 64 tokens and
# skips a remainder (its loop runs N / B² // 64 times), so it computes all of LLSA only where
# N is a multiple of 64·B² = 16,384 at B = 16; at N = 4,096 it drops the coarsest level.
CHECK_SHAPE = (1, 16384, 2, 64)
GATE_BOUND = 0.03


def published_pyramids(kernel, q, k, v, levels: int, block_size: int):
    """The published pooling (its `mean_pool1d`, bf16 sums) of q, k and v [B, H, N, D]:
    ([q_1 .. q_L], [k_1 .. k_L], [v_1 .. v_L]), level l of shape [B, H, N / B^l, D]."""
    pool = kernel.triton.mean_pool.mean_pool1d
    pyramids = []
    for x in (q, k, v):
        pooled = [pool(x, block_size)]
        for _ in range(levels - 1):
            pooled.append(pool(pooled[-1], block_size))
        pyramids.append(pooled)
    return tuple(pyramids)


def published_picks(kernel, q_pyramid, k_pyramid, levels: int, topk: int, block_size: int):
    """The published selection of `published_pyramids`' q and k: {l: int [B, H, N / B^l, K]},
    lla's `hierarchy.select` layout (the level-l tokens each level-l query token picks)."""
    select = kernel.triton.topk
    coarsest = select.gen_sparse_indices(q_pyramid[-1], k_pyramid[-1], topk)
    if levels == 1:
        return {1: coarsest}
    return {2: coarsest, 1: select.compute_topk_indices_sparse(
        q_pyramid[0], k_pyramid[0], coarsest, topk, topk, block_size)}


def published_call(kernel, levels: int, topk: int, block_size: int):
    """q, k, v [B, H, N, D] -> out [B, H, N, D] through the published kernels (`kernel`: its
    imported `llsa.kernel` package), pooling included."""
    ops = kernel.torch_op
    if levels == 1:
        op = ops.flash_sparse_attention_res_1.flash_sparse_residual_attention_l1_op
    else:
        op = ops.flash_sparse_attention_res_2.flash_sparse_residual_attention_l2_op

    def call(q, k, v):
        pyramids = published_pyramids(kernel, q, k, v, levels, block_size)
        if levels == 1:
            return op(q, k, v, *(x[0] for x in pyramids), topk, block_size, block_size)
        return op(q, k, v, *(x[0] for x in pyramids), *(x[1] for x in pyramids), topk, topk,
                  block_size, block_size ** 2, block_size)
    return call


def time_one(call, shape, torch, triton) -> tuple[float, float]:
    """Median ms of `call` forward, and forward plus backward, at `shape` [B, N, H, D]."""
    batch, tokens, heads, dim = shape
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, cotangent = (torch.randn(batch, heads, tokens, dim, generator=generator,
                                      device="cuda", dtype=torch.bfloat16) for _ in range(4))
    fwd_ms = triton.testing.do_bench(lambda: call(q, k, v), return_mode="median")
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        call(*leaves).backward(cotangent)

    return fwd_ms, triton.testing.do_bench(forward_backward, return_mode="median")


def gate(npz_path: str, levels: int, topk: int, block_size: int) -> dict:
    """The published call saved in `npz_path` against lla's "xla" code, float32.

    The npz holds q, k, v and out [B, N, H, D], the published pooled keys and values
    k1, v1 (.. kL, vL) [B, N / B^l, H, D] and picks p1 (.. pL) [B, H, N / B^l, K]. It
    passes when out is within GATE_BOUND of `reference.attend` over the published pooling and
    picks ("error", the kernels' arithmetic). Also reported: the error against lla's whole
    reference ("error_reference": bf16 pooling flips a few near-tied picks) and the share of
    published picks that lla's float32 `hierarchy.select` makes too, per level.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lla.attention as attention
    from experiments.benchmarking import relative_error
    from lla.attention.llsa import hierarchy, reference

    saved = {name: jnp.asarray(x) for name, x in np.load(npz_path).items()}
    q, k, v, out = (saved[x] for x in ("q", "k", "v", "out"))
    heads = q.shape[2]
    published_picks = {level: saved[f"p{level}"] for level in range(1, levels + 1)}
    with jax.default_matmul_precision("highest"):
        same_selection = reference.attend(
            reference.query_blocks(q, block_size), published_picks,
            reference.heads_major_levels([k] + [saved[f"k{l}"] for l in range(1, levels + 1)],
                                         heads),
            reference.heads_major_levels([v] + [saved[f"v{l}"] for l in range(1, levels + 1)],
                                         heads),
            block_size=block_size, enrich_levels=levels, reweight=True)
        expected = attention.llsa(q, k, v, block_size=block_size, topk=topk, levels=levels,
                                  implementation="xla")
        lla_picks = hierarchy.select(hierarchy.pyramid(q, block_size, levels),
                                     hierarchy.pyramid(k, block_size, levels), block_size, topk)
    agreement = {}
    for level, picks in published_picks.items():
        ours, theirs = np.asarray(lla_picks[level]), np.asarray(picks)
        shared = (ours[..., :, None] == theirs[..., None, :]).any(-1)
        agreement[str(level)] = float(shared.mean())
    error = float(relative_error(out, same_selection))
    return {"shape": list(q.shape), "error": error, "bound": GATE_BOUND,
            "passed": error < GATE_BOUND,
            "error_reference": float(relative_error(out, expected)),
            "pick_agreement": agreement}
