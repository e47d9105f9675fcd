"""Miners: which pairs or triplets of a batch a metric loss looks at, as fixed-shape masks.

pytorch-metric-learning decomposes a metric loss into similarity -> miner -> per-element loss
-> reduction, with miners returning index lists. Index lists have data-dependent lengths and
do not compile under ``jit``, so the miners here return boolean masks over all candidates
(``[b, b]`` for pairs, ``[b, b, b]`` for triplets) or, for samplers that pick one partner
per anchor, fixed-length ``[b]`` index arrays with a validity flag. Mining never passes
gradients: every miner reads its similarities or distances through ``stop_gradient``.

The modules, one per family, each importing only those above it:

- :mod:`~diml_jax.miners.types`: the results, :class:`PairMasks` and :class:`Sampled`;
- :mod:`~diml_jax.miners.checks`: :func:`check_labels`, :func:`check_square`,
  :func:`check_rows`, the label and matrix checks every loss shares;
- :mod:`~diml_jax.miners.pairs`: :func:`all_pairs` (every positive and negative pair, self
  excluded) and :func:`multi_similarity` (Wang et al.'s pair mining);
- :mod:`~diml_jax.miners.triplets`: triplet masks ``[b, b, b]``: :func:`all_triplets`,
  :func:`semihard_triplets`, and :func:`random_triplets` (the published DIML / Roth et al.
  ``batchminer/random.py``);
- :mod:`~diml_jax.miners.sampling`: random partners, a fixed number per anchor:
  :func:`distance_weighted` (Wu et al.: one positive and one negative), :func:`semihard`
  and :func:`softhard` (the published ``batchminer/semihard.py``, ``softhard.py``),
  :func:`npair` (one positive, every other class as negatives: N-pair and angular losses)
  and :func:`quadruplet_negatives` (the quadruplet loss's second negative).

The published code's lifted-structure miner (``batchminer/lifted.py``) selects every
positive and every negative of each anchor: :func:`all_pairs`.
"""
from diml_jax.miners.checks import check_labels, check_rows, check_square
from diml_jax.miners.pairs import all_pairs, multi_similarity
from diml_jax.miners.sampling import (distance_weighted, npair, quadruplet_negatives, semihard,
                                      softhard)
from diml_jax.miners.triplets import all_triplets, random_triplets, semihard_triplets
from diml_jax.miners.types import PairMasks, Sampled

__all__ = [
    "PairMasks",
    "Sampled",
    "all_pairs",
    "multi_similarity",
    "all_triplets",
    "semihard_triplets",
    "distance_weighted",
    "random_triplets",
    "semihard",
    "softhard",
    "npair",
    "quadruplet_negatives",
    "check_labels",
    "check_rows",
    "check_square",
]
