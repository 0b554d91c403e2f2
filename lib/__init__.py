"""Nonlocal blocks (SNL and the blocks it is compared against) and the training utilities around them."""
from lib.errors import ConfigError
from lib.registry import NONLOCAL_BLOCKS, build_nonlocal

__all__ = ["ConfigError", "NONLOCAL_BLOCKS", "build_nonlocal"]
