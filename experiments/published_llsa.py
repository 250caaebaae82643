"""The published LLSA kernels' call and its gate, for `experiments.bench_published_llsa`
(kept free of flags so that tests import them beside the other tools): how the published
kernel package is called, how one forward and forward+backward are timed, and how one
call's output is held to lla's reference."""

from __future__ import annotations

CHECK_SHAPE = (1, 4096, 2, 64)  # [B, N, H, D]: L = 2 has 16 coarsest tokens at B = 16
GATE_BOUND = 0.03


def published_call(kernel, levels: int, topk: int, block_size: int):
    """q, k, v [B, H, N, D] -> out [B, H, N, D] through the published kernels (`kernel`: its
    imported `llsa.kernel` package)."""
    pool = kernel.triton.mean_pool.mean_pool1d
    if levels == 1:
        op = kernel.torch_op.flash_sparse_attention_res_1.flash_sparse_residual_attention_l1_op

        def call(q, k, v):
            return op(q, k, v, pool(q, block_size), pool(k, block_size), pool(v, block_size),
                      topk, block_size, block_size)
        return call
    op = kernel.torch_op.flash_sparse_attention_res_2.flash_sparse_residual_attention_l2_op

    def call(q, k, v):
        pooled = [pool(x, block_size) for x in (q, k, v)]
        coarsest = [pool(x, block_size) for x in pooled]
        return op(q, k, v, *pooled, *coarsest, topk, topk, block_size, block_size ** 2,
                  block_size)
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
    """The published output in `npz_path` against lla's "xla" reference, float32."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lla.attention as attention
    from experiments.benchmarking import relative_error

    saved = np.load(npz_path)
    with jax.default_matmul_precision("highest"):
        expected = attention.llsa(*(jnp.asarray(saved[x]) for x in "qkv"),
                                  block_size=block_size, topk=topk, levels=levels,
                                  implementation="xla")
    error = float(relative_error(jnp.asarray(saved["out"]), expected))
    return {"shape": list(saved["q"].shape), "error": error, "bound": GATE_BOUND,
            "passed": error < GATE_BOUND}
