"""Nonlocal blocks (SNL, the blocks it is compared against, the spectral filter family of docs/spectral.md) and the
training utilities around them."""
from lib.errors import ConfigError
from lib.registry import NONLOCAL_BLOCKS, build_nonlocal

__all__ = ["ConfigError", "NONLOCAL_BLOCKS", "build_nonlocal"]
