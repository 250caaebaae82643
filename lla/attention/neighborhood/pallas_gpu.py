"""The "pallas_gpu" implementation of neighbourhood attention: the glue of `pallas.py` around
the kernels of `lla.pallas_kernels.neighborhood.gpu`; tiles and Triton launch parameters are
its `Config`."""

from lla.attention.neighborhood import pallas
from lla.pallas_kernels.neighborhood import gpu

IMPLEMENTATION = pallas.implementation("pallas_gpu", gpu)
