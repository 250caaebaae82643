"""The "pallas_tpu" implementation of neighbourhood attention: the glue of `pallas.py` around
the kernels of `lla.pallas_kernels.neighborhood.tpu`; tiles are its `Config`."""

from lla.attention.neighborhood import pallas
from lla.pallas_kernels.neighborhood import tpu

IMPLEMENTATION = pallas.implementation("pallas_tpu", tpu)
