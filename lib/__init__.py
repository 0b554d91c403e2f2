"""Nonlocal blocks (SNL, the blocks it is compared against, the spectral filter family of docs/spectral.md) and the
training utilities around them."""
from .errors import ConfigError
from .registry import NONLOCAL_BLOCKS, build_nonlocal

__all__ = ["ConfigError", "NONLOCAL_BLOCKS", "build_nonlocal"]
