"""Pure Python core (numpy, torch, GDAL): never imports Qt or QGIS.

Importing any core module first blocks ``triton`` (see :mod:`.torch_import`: its LLVM crashes
the QGIS desktop), so every path into the core — the Processing algorithms, the CLI, the Dask
client and workers — imports torch without it.
"""

from .torch_import import block_triton as _block_triton

_block_triton()
