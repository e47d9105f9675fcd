"""Shared test helpers: a relative-error assertion and cheap random variables."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def assert_rel_close(actual, expected, rel=1e-4):
  """max |actual - expected| <= rel * max |expected|."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert err <= rel, f"relative error {err:.2e} > {rel:.0e}"


def random_variables(model, images_shape, seed=0):
  """Random variables for ``model`` without ``model.init``.

  ``init`` compiles JAX's random-number kernels for every parameter shape, tens of seconds
  on a small CPU; NumPy draws the same kind of values instantly. Batch-norm variances are
  positive, kernels scaled by their fan-in so activations stay O(1).
  """
  images = jax.ShapeDtypeStruct(images_shape, jnp.float32)
  shapes = traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.key(0), images))
  rng = np.random.default_rng(seed)
  variables = {}
  for path, spec in shapes.items():
    if path[-1] == "var":
      value = rng.uniform(0.5, 1.5, spec.shape)
    elif path[-1] == "scale":
      value = rng.uniform(0.5, 1.5, spec.shape)
    elif path[-1] == "kernel":
      value = rng.normal(size=spec.shape) / np.sqrt(np.prod(spec.shape[:-1]))
    else:
      value = 0.1 * rng.normal(size=spec.shape)
    variables[path] = value.astype(spec.dtype)
  return traverse_util.unflatten_dict(variables)
