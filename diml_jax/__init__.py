"""diml_jax: deep interpretable metric learning by structural matching, in JAX.

The public entry point for other pipelines is :mod:`diml_jax.matching`.
"""

__version__ = "0.1.0"
