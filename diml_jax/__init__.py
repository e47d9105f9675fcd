"""diml_jax: deep interpretable metric learning by structural matching, in JAX.

The public entry point for other pipelines is :mod:`diml_jax.matching`.
"""

from diml_jax import matching
from diml_jax.errors import UsageError

__version__ = "0.1.0"
__all__ = ["UsageError", "matching"]
