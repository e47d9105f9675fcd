"""diml_jax: deep interpretable metric learning by structural matching, in JAX.

The public entry point for other pipelines is :mod:`diml_jax.matching`.
"""
import importlib

from diml_jax.errors import UsageError

__version__ = "0.1.0"
__all__ = ["UsageError", "matching"]


def __getattr__(name: str):
  # `diml_jax.matching` on first use: the entry points report a mistake in their flags
  # without importing JAX first.
  if name == "matching":
    return importlib.import_module("diml_jax.matching")
  raise AttributeError(f"module 'diml_jax' has no attribute {name!r}")
