"""Shared op-suite settings of the ops on the sparse-flash kernels (topk_block, vsa, ...):
mix one into an `AttentionOpTestBase` subclass of the op."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

ON_GPU = jax.default_backend() == "gpu"


class SparseFlashInterpretCase:
    """The GPU kernels in interpret mode: key tiles of 2 list slots with K = 4 (several
    tiles, the last one holding empty slots where lists are short); partial last blocks on
    the odd shapes."""

    implementation = "pallas_gpu"
    op_kwargs = dict(block_size=4, topk=4, interpret=True)  # noqa: RUF012
    tuning = dict(chunk=2)  # noqa: RUF012
    boundary_shape = (1, 45, 45, 2, 1, 8)

    def crossed_boundaries(self, config, shape):
        return {"several key tiles": config.topk > config.chunk,
                "a partial last block": config.padded}


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="compiled Pallas kernels need a GPU")
class SparseFlashGpuCase:
    """The compiled GPU kernels at blocks of 64, bf16."""

    implementation = "pallas_gpu"
    op_kwargs = dict(block_size=64, topk=4)  # noqa: RUF012
    shapes = ((1, 1024, 1024, 2, 2, 64), (2, 1000, 1000, 3, 3, 64), (1, 512, 768, 4, 2, 64))
    boundary_shape = (1, 4096, 4096, 2, 1, 64)
    dtypes = (jnp.bfloat16,)

    def crossed_boundaries(self, config, shape):
        return {"several key tiles or one full one": config.topk >= config.chunk}
