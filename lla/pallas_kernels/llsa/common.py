"""Static description of one LLSA call, shared by the GPU and TPU kernels."""

from __future__ import annotations

import dataclasses
import math

from lla.pallas_kernels.common import HeadRows


@dataclasses.dataclass(frozen=True)
class Hierarchy(HeadRows):
    """Shape of an LLSA call: B = block_size, K = topk, L = levels, H and Hkv heads, N tokens,
    D head_dim. Kernel grids run over rows r = batch·H + head.

    The ablations of `lla.attention.llsa` are static too: `enrich_levels` (Lₑ; None = L)
    coarse levels 1..Lₑ join the softmax (level 0 always does), and `reweight` False drops the
    log(B^l) bias. The defaults are today's kernels: their branches are Python `if`s on these
    fields, so a default config traces exactly the code it did before they existed.
    `causal` selects the causal kernels (docs/llsa_causal.md) where a backend has them.
    """

    block_size: int
    topk: int
    levels: int
    heads: int
    kv_heads: int
    tokens: int
    head_dim: int
    enrich_levels: int | None = dataclasses.field(default=None, kw_only=True)
    reweight: bool = dataclasses.field(default=True, kw_only=True)
    causal: bool = dataclasses.field(default=False, kw_only=True)

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    def level_tokens(self, level: int) -> int:
        """N_l = N / B^l."""
        return self.tokens // self.block_size ** level

    def attends(self, level: int) -> bool:
        """Whether level `level` (0..L) is in the KV set: level 0 and levels 1..Lₑ."""
        return level <= (self.levels if self.enrich_levels is None else self.enrich_levels)

    def log2_weight(self, level: int) -> float:
        """log2 of the level's softmax weight: B^l, or 1 without reweighting."""
        return level * math.log2(self.block_size) if self.reweight else 0.0
