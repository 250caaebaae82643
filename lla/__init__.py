"""lla: efficient attention over very long token sequences in JAX and Pallas.

Layers depend on `lla.attention`, which depends on `lla.pallas_kernels`; models sit on top.
"""

__version__ = "0.1.0"
