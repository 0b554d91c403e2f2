"""Nonlocal blocks: SNL, the blocks it is compared against and the spectral filter family (docs/blocks.md,
docs/spectral.md). Installed on its own (`pip install .`) this package is `snl`; in the repository it is `lib`,
whose subpackages lib/data and lib/engine hold the training machinery (not installed).

    block = build_nonlocal("snl", inplanes=256, planes=128)   # (B, 256, *spatial) -> same shape
"""
from .arma import ARMA
from .cayley import Cayley
from .cc import CCStage, CrissCrossAttention
from .cgnl import CGNL
from .cheb import Cheb
from .dnl import DNL
from .errors import ConfigError
from .gsnl import GSNL
from .nl import A2, NL
from .ns import NS
from .registry import NONLOCAL_BLOCKS, build_nonlocal
from .snl import SNL
from .stage import NonlocalStage, NonlocalUnit

__version__ = "1.0.0"

__all__ = ["A2", "ARMA", "CCStage", "CGNL", "Cayley", "Cheb", "ConfigError", "CrissCrossAttention", "DNL", "GSNL",
           "NL", "NONLOCAL_BLOCKS", "NS", "NonlocalStage", "NonlocalUnit", "SNL", "build_nonlocal", "__version__"]
