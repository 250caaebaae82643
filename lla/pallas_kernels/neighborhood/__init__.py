"""Neighbourhood-attention kernels: `windows.py` (the window arithmetic), `tiling.py` (tiled
layout, tile lists, tile configs), `gpu.py` (Triton lowering) and `tpu.py` (Mosaic)."""
