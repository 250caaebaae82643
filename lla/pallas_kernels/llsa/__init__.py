"""LLSA kernels: sparse-source flash attention over a fine, intermediate and coarsest level.

`metadata.py` builds the backend-neutral sparse metadata (key-major CSR transposes of the
selection); `gpu.py` holds the Pallas (Triton lowering) forward and backward kernels.
"""
