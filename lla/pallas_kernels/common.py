"""Small pieces every kernel family shares: tiling arithmetic and the row layout of grids."""

from __future__ import annotations


def largest_divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of n that is <= cap (at least 1)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


class HeadRows:
    """Row arithmetic of kernel grids that run over rows r = batch·H + head, for configs with
    `heads` (H query heads) and `kv_heads` (Hkv, dividing H) fields."""

    heads: int
    kv_heads: int

    def batch(self, row):
        """The batch element of grid row `row` (= batch·H + head)."""
        return row // self.heads

    def head(self, row):
        """The query head of grid row `row`."""
        return row % self.heads

    def kv_head(self, row):
        """The kv head read by query row `row` (GQA: H / Hkv query heads per kv head)."""
        return (row % self.heads) // (self.heads // self.kv_heads)

    def kv_row(self, row):
        """The kv row (batch·Hkv + kv head) read by query row `row`."""
        return self.batch(row) * self.kv_heads + self.kv_head(row)


def sum_query_heads(grad, kv_heads: int):
    """[Bt, T, H, D] gradients per query head -> [Bt, T, Hkv, D], summed over each GQA group
    (H / Hkv consecutive query heads share a kv head)."""
    heads = grad.shape[2]
    if heads == kv_heads:
        return grad
    return grad.reshape(*grad.shape[:2], kv_heads, heads // kv_heads, grad.shape[-1]).sum(3)
