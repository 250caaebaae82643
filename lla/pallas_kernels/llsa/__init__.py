"""LLSA kernels: sparse-source flash attention over a fine, intermediate and coarsest level.

`gpu.py` and `causal_gpu.py` hold the Pallas (Triton lowering) forward and backward kernels,
`tpu.py` the Mosaic TPU ones, `selection.py` the sparse-level selection kernel; the key-major
CSR transposes of the selection come from `lla.pallas_kernels.sparse_flash.metadata`.
"""
