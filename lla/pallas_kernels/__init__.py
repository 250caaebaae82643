"""Pallas kernels (GPU Triton/Mosaic and TPU), one folder per kernel family.

Kernels import only jax and each other: never `lla.attention`, layers or models.
"""
