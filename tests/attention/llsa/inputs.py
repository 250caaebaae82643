"""Inputs for LLSA tests whose selections are decided by signal, not by noise."""

from __future__ import annotations

import jax
import numpy as np


def with_level_structure(arrays, block_size: int, levels: int, seed: int = 0) -> tuple:
    """Each of `arrays` ([B, N, h, D]) plus 0.7 x a unit-normal component constant over each
    level-l block (B^l tokens), l = 1..L, as float32.

    Without it, pooled tokens at level l are ~b^(-l/2) times smaller than level-0 tokens and
    coarse selections are decided by noise, so near-ties abound: a bfloat16 kernel and the
    float32 reference may then break them differently. With it every level's scores carry
    signal.
    """
    rng = np.random.default_rng(1000 + seed)
    out = []
    for x in arrays:
        x = np.asarray(x, np.float32)
        batch, tokens = x.shape[:2]
        for level in range(1, levels + 1):
            span = block_size ** level
            coarse = rng.standard_normal((batch, tokens // span, *x.shape[2:]))
            x = x + 0.7 * np.repeat(coarse, span, axis=1).astype(np.float32)
        out.append(jax.numpy.asarray(x))
    return tuple(out)
