"""Sparse-flash kernels: flash attention over per-query-block lists of key blocks, the kernel
family every block-sparse op shares (seed-papers K1).

`metadata.py` builds the backend-neutral block lists (query-major lists with counts, and
their key-major CSR transpose for dK/dV); `gpu.py` holds the Pallas (Triton lowering)
forward, dQ and dK/dV kernels. The custom VJP around them is
`lla.attention.common.block_sparse_pallas`, the plain-JAX definition
`lla.attention.common.block_sparse`.
"""
