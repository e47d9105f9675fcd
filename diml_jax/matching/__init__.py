"""Structural matching: DIML's optimal-transport similarity between the parts of two images.

Each image is a set of ``r`` local feature vectors (its parts) and one global vector. DIML
(Zhao et al., ICCV 2021, Sec. 3; TPAMI 2023, Sec. 3) compares two images ``a`` and ``b`` by
the optimal-transport flow ``T`` between their parts:

.. math::

  S_{ij} = \\langle x_i, y_j \\rangle, \\qquad
  T = \\arg\\min_{T \\mathbf{1} = \\mu,\\; T^\\top \\mathbf{1} = \\nu}
      \\langle T, 1 - S \\rangle - \\varepsilon H(T), \\qquad
  s(a, b) = \\sum_{ij} T_{ij} S_{ij},

with cross-correlation marginals ``mu_i ∝ relu(<x_i, g_b>)``, ``nu_j ∝ relu(<y_j, g_a>)``
(a part weighs as much as it resembles the *other* image as a whole; ``"cross"``), the
published training criteria's form with the two images' roles swapped (``"cross_swapped"``),
uniform ones, or given part weights; with ``mass = p < 1`` only ``p`` of each image's
weight is matched (partial similarity, TPAMI 2023) and ``s`` is divided by ``p``.
``T ⊙ S`` decomposes the similarity into part-to-part contributions: the explanation.

The modules, each importing only those above it:

- :mod:`~diml_jax.matching.types`: the :class:`Matching` result and :class:`SinkhornOptions`;
- :mod:`~diml_jax.matching.checks`: argument checks at the public boundary;
- :mod:`~diml_jax.matching.problem`: features -> similarities, distances, marginals;
- :mod:`~diml_jax.matching.sinkhorn`: a flat batch of problems through OTT-JAX's Sinkhorn;
- :mod:`~diml_jax.matching.partial`: the dummy-point construction of partial transport;
- :mod:`~diml_jax.matching.tiles`: many pairs in tiles (two sets, one set, candidates);
- :mod:`~diml_jax.matching.api`: the public functions.
"""
from diml_jax.matching.api import (diml_distance, diml_similarity, match, pairwise, rerank,
                                   structural_similarity, transport)
from diml_jax.matching.checks import check_mass, check_options
from diml_jax.matching.partial import DUMMY_SIMILARITY
from diml_jax.matching.problem import (DIML_DISTANCE_FLOOR, DISTANCE_FLOOR, default_global,
                                       normalize, probabilities, unit_distance)
from diml_jax.matching.types import (MARGINAL_KINDS, Marginals, Matching, Quantity,
                                     SinkhornOptions)

__all__ = [
    "DIML_DISTANCE_FLOOR",
    "DISTANCE_FLOOR",
    "DUMMY_SIMILARITY",
    "MARGINAL_KINDS",
    "Marginals",
    "Matching",
    "Quantity",
    "SinkhornOptions",
    "check_mass",
    "check_options",
    "default_global",
    "diml_distance",
    "diml_similarity",
    "match",
    "normalize",
    "pairwise",
    "probabilities",
    "rerank",
    "structural_similarity",
    "transport",
    "unit_distance",
]
