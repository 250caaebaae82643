"""Video-BLADE's adaptive block-sparse attention, registered as "asa" and "asa_gt".

ASA cuts the tokens into blocks of B (default 128) and lets a cheap prober choose, for each
query block, the key blocks that hold a fraction `tau` of its attention mass (`prober.py`):
`samples` tokens per block, their softmax max-pooled to block importances, the smallest set
of blocks reaching `tau`, its size clamped to [min_keep, max_keep] of the key blocks. Query
block b then attends, in one softmax with scale 1/sqrt(D), to all tokens of its blocks.
ASA_GT (the training variant) adds global tokens (`globals.py`): keys and values
mean-pooled over windows of `pool` tokens, always visible with logit bias ln(window), in the
same softmax (seed-papers K2). Selection has no gradient; ASA_GT's k and v also get
gradients through the pooling.

Token order: "gilbert". As in the paper, models feed 2-D and 3-D grids along the generalized
Hilbert curve (`lla.attention.token_order.gilbert_3d`), so that a block of B consecutive
tokens is a compact, connected region of the image or video for any grid size, not only
powers of two (e.g. 21 x 30 x 52 latents). The prober's samples are drawn once from
`seed` (static), so a call is deterministic. `min_keep` and `max_keep` are lla's defaults
(the spec names the clamps but not their values).

Implementations: "pallas_gpu" and "pallas_tpu" (both: the sparse-flash kernels, ASA_GT's
global tokens as their summary tokens), "xla" (both, `reference.py`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax

from lla.attention import registry
from lla.attention.asa import pallas_gpu, pallas_tpu, prober, reference
from lla.attention.common.validation import check_flag, check_int, check_qkv


def asa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block_size: int = 128,
    samples: int = 16,
    tau: float = 0.9,
    min_keep: float = 0.05,
    max_keep: float = 0.5,
    seed: int = 0,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Adaptive block-sparse attention with a sampled-token prober.

    Args:
      q: [B, Nq, H, D] float32, bfloat16 or float16, tokens in Gilbert-curve order
        (`lla.attention.token_order.for_op("asa", grid)`).
      k, v: [B, Nk, Hkv, D], Hkv dividing H.
      block_size: tokens per query and key block.
      samples: tokens sampled per block by the prober.
      tau: attention mass each query block keeps, in (0, 1].
      min_keep, max_keep: the kept key blocks, as fractions of all key blocks (at least one
        block; 0 <= min_keep <= max_keep <= 1, max_keep > 0).
      seed: the prober's sample positions.
      implementation: None (best available), "pallas_gpu", "pallas_tpu", "xla", or a
        sequence of names.
      interpret: run the Pallas kernels in interpret mode (any platform, for tests).

    Returns:
      [B, Nq, H, D] in q's dtype.
    """
    static = _check("asa", q, k, v, block_size, samples, tau, min_keep, max_keep, seed,
                    interpret)
    return registry.call(ASA, implementation, q, k, v, **static)


def asa_gt(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block_size: int = 128,
    samples: int = 16,
    tau: float = 0.9,
    min_keep: float = 0.05,
    max_keep: float = 0.5,
    seed: int = 0,
    pool: int = 128,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """`asa` plus always-visible global tokens: keys and values mean-pooled over windows of
    `pool` tokens, logit bias ln(window size). Arguments as `asa`; implementations
    "pallas_gpu", "pallas_tpu" and "xla"."""
    static = _check("asa_gt", q, k, v, block_size, samples, tau, min_keep, max_keep, seed,
                    interpret)
    static["pool"] = check_int("asa_gt", "pool", pool, 1)
    return registry.call(ASA_GT, implementation, q, k, v, **static)


def _check(op, q, k, v, block_size, samples, tau, min_keep, max_keep, seed, interpret):
    """The static arguments checked, as a dict; ValueError saying what would work."""
    check_qkv(op, q, k, v)

    def fraction(name, value, low_open=False):
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and (0 < value <= 1 if low_open else 0 <= value <= 1))
        if not ok:
            interval = "(0, 1]" if low_open else "[0, 1]"
            raise ValueError(f"{op}: {name} must be a number in {interval}; got {value!r}")
        return float(value)

    tau = fraction("tau", tau, low_open=True)
    max_keep = fraction("max_keep", max_keep, low_open=True)
    min_keep = fraction("min_keep", min_keep)
    if min_keep > max_keep:
        raise ValueError(f"{op}: min_keep {min_keep} exceeds max_keep {max_keep}; use "
                         f"min_keep <= max_keep")
    return dict(block_size=check_int(op, "block_size", block_size, 1),
                samples=check_int(op, "samples", samples, 1), tau=tau, min_keep=min_keep,
                max_keep=max_keep, seed=check_int(op, "seed", seed, 0),
                interpret=check_flag(op, "interpret", interpret))


CAPABILITIES = registry.Capabilities(token_order="gilbert", gqa=True)

ASA = registry.register(registry.AttentionOp(
    name="asa",
    fn=asa,
    capabilities=CAPABILITIES,
    implementations=(pallas_gpu.ASA, pallas_tpu.ASA,
                     registry.Implementation("xla", reference.asa_xla)),
    summary="Video-BLADE ASA: sampled-token prober, blocks up to a cumulative mass tau",
    default_kwargs={"block_size": 128},
    keys_per_query=prober.keys_per_query,
    example_kwargs={"block_size": 4, "samples": 2, "tau": 0.6, "max_keep": 0.5},
))

ASA_GT = registry.register(registry.AttentionOp(
    name="asa_gt",
    fn=asa_gt,
    capabilities=CAPABILITIES,
    implementations=(pallas_gpu.ASA_GT, pallas_tpu.ASA_GT,
                     registry.Implementation("xla", reference.asa_gt_xla)),
    summary="ASA plus always-visible mean-pooled global tokens with bias ln n (ASA_GT)",
    default_kwargs={"block_size": 128, "pool": 128},
    keys_per_query=prober.keys_per_query,
    example_kwargs={"block_size": 4, "samples": 2, "tau": 0.6, "max_keep": 0.5, "pool": 4},
))
