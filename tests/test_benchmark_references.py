"""The benchmarks' PyTorch references (``benchmarks/reference.py``, the published DIML code's
forms) solve DIML's problem: run to convergence in float64, they agree with the float64
NumPy reference of tests/test_matching.py pair by pair."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import reference as published  # noqa: E402
from test_matching import _unit, batch, reference  # noqa: E402

# An image against itself (the diagonal) converges slowly: after 20,000 iterations it can
# still be ~4e-6 from the converged value, which the tolerance covers.
CONVERGED = dict(max_iterations=20_000, stop=1e-12)
TOLERANCE = 1e-5


def test_the_criterions_all_pairs_form_is_the_float64_reference():
  xs, _ = batch("relu", 5, seed=21, r1=9, r2=9)
  structural, similarity, iterations = published.criterion_all_pairs(
      torch.from_numpy(xs).double(), **CONVERGED)
  assert iterations > 100
  for a in range(5):
    for b in range(5):
      want = reference(xs[a], xs[b])[0]
      assert abs(float(structural[a, b]) - want) < TOLERANCE, (a, b)
      cos = _unit(xs[a].astype(np.float64).mean(0)) @ _unit(xs[b].astype(np.float64).mean(0))
      assert abs(float(similarity[a, b]) - (want + cos) / 2) < TOLERANCE, (a, b)


def test_the_per_anchor_form_is_the_float64_reference():
  # CNN-like features: the published marginals divide by (sum + 1e-5), a relative error
  # of 1e-5 / sum that is small only when the correlations' sum is not.
  xs, _ = batch("relu", 4, seed=22, r1=9, r2=9)
  structural, iterations = published.per_anchor(torch.from_numpy(xs).double(), **CONVERGED)
  assert len(iterations) == 4
  for a in range(4):
    for b in range(4):
      assert abs(float(structural[a, b]) - reference(xs[a], xs[b])[0]) < TOLERANCE, (a, b)


def test_the_published_stop_rule_stops_early():
  """At the published 0.1 the loop stops long before convergence on CNN-like features."""
  xs, _ = batch("relu", 6, seed=23)
  _, _, iterations = published.criterion_all_pairs(torch.from_numpy(xs))
  assert iterations < 30
