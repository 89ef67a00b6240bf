"""The installed version of alphagrad (from the package metadata, so pyproject.toml is its one source)."""

import importlib.metadata

__all__ = ["VERSION"]

try:
    VERSION: str = importlib.metadata.version("alphagrad")
except importlib.metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    VERSION = "unknown"
