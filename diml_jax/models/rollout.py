"""Truncated attention rollout: how much each patch feeds a ViT's class token.

Attention rollout (Abnar & Zuidema, ACL 2020) follows information through the residual
stream of a transformer: each block's attention ``A`` (heads fused) gets the residual
connection added and its rows renormalised, ``Â = (A + I) / rowsum(A + I)``, and the blocks
are composed, ``R = Â_L Â_(L-1) ... Â_1``. Row 0 of ``R`` says how much of each input
token reaches the class token.

DIML's journal version (Zhao et al., TPAMI 2023, the extension to ViTs) uses the rollout as
the *marginal* of the transport problem instead of the cross-correlation marginal, and
*truncates* it to the last ``L`` blocks: the early blocks of a ViT mix tokens almost
uniformly, so composing them washes the relevance out; the later blocks alone keep it
localised (ablated over ``L`` in {1, 2, 4, all}).

:func:`attention_rollout` gives ``R`` over the last ``num_blocks`` blocks,
:func:`patch_relevance` its class-token row over the patches, and :func:`pool_relevance`
pools that map to the part grid of :class:`~diml_jax.models.EmbeddingModel`, so that each
local embedding gets the relevance of its cell::

  _, aux = vit.apply(variables, images)              # aux["attentions"]: depth x [b, H, n, n]
  relevance = patch_relevance(aux["attentions"], num_blocks=4)
  mu = pool_relevance(relevance.reshape(aux["feature_map"].shape[:3]), grid_size=4)
  matching.match(x, y, marginals=(mu_x, mu_y))       # mass=p: partial matching
"""
from typing import Literal, Sequence

import jax.numpy as jnp

from diml_jax.models.grid import RESIZE_TO, grid_pool

HeadFusion = Literal["mean", "max", "min"]
_FUSIONS = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}


def _check_attentions(attentions) -> list[jnp.ndarray]:
  """A sequence of ``[b, heads, n, n]`` (or one stacked ``[depth, ...]`` array) -> list."""
  blocks = list(attentions)
  if not blocks:
    raise ValueError("`attentions` must hold at least one block's attention weights.")
  shape = jnp.shape(blocks[0])
  for i, a in enumerate(blocks):
    s = jnp.shape(a)
    if len(s) != 4 or s[-1] != s[-2] or s != shape:
      raise ValueError(
          "`attentions` must be a sequence of equally shaped [b, heads, n, n] arrays (or one"
          f" [depth, b, heads, n, n] array); block {i} has shape {s}, block 0 {shape}.")
  return [jnp.asarray(a) for a in blocks]


def attention_rollout(attentions: Sequence[jnp.ndarray] | jnp.ndarray, *,
                      num_blocks: int | None = None,
                      head_fusion: HeadFusion = "mean") -> jnp.ndarray:
  """Attention rollout over the last ``num_blocks`` blocks.

  Args:
    attentions: each block's attention weights, first block first: a sequence of ``depth``
      arrays ``[b, heads, n, n]`` (rows are queries, each summing to 1), e.g. a
      :class:`~diml_jax.models.VisionTransformer`'s ``aux["attentions"]``, or one array
      ``[depth, b, heads, n, n]``.
    num_blocks: ``L``, how many of the last blocks to compose; ``None`` for all of them
      (plain rollout).
    head_fusion: how the heads are fused: ``"mean"`` (Abnar & Zuidema), ``"max"`` or
      ``"min"`` (variants of jacobgil's ``vit-explain``).

  Returns:
    ``R = Â_depth ... Â_(depth-L+1)``, ``[b, n, n]`` float32 (float64 for float64 input),
    row-stochastic: ``R[:, i, j]`` is the share of token ``j`` in output token ``i``.

  Raises:
    ValueError: badly shaped ``attentions``, ``num_blocks`` outside ``1..depth`` or an
      unknown ``head_fusion``.

  References:
    Abnar, Zuidema. Quantifying Attention Flow in Transformers. ACL 2020.
  """
  blocks = _check_attentions(attentions)
  depth = len(blocks)
  if num_blocks is None:
    num_blocks = depth
  if not isinstance(num_blocks, int) or not 1 <= num_blocks <= depth:
    raise ValueError(f"`num_blocks` must be an integer in 1..{depth} (the number of blocks)"
                     f" or None; got {num_blocks!r}.")
  if head_fusion not in _FUSIONS:
    raise ValueError(f"`head_fusion` must be 'mean', 'max' or 'min'; got {head_fusion!r}.")
  dtype = jnp.promote_types(blocks[0].dtype, jnp.float32)
  n = blocks[0].shape[-1]
  rollout = None
  for a in blocks[depth - num_blocks:]:
    a = _FUSIONS[head_fusion](a.astype(dtype), axis=1) + jnp.eye(n, dtype=dtype)
    a = a / a.sum(-1, keepdims=True)
    rollout = a if rollout is None else a @ rollout  # later blocks act on the left
  return rollout


def patch_relevance(attentions: Sequence[jnp.ndarray] | jnp.ndarray, *,
                    num_blocks: int | None = None, head_fusion: HeadFusion = "mean"
                    ) -> jnp.ndarray:
  """Each patch's share in the class token after the last ``num_blocks`` blocks.

  Args:
    attentions: as in :func:`attention_rollout`, with token 0 the class token and tokens
      ``1..n`` the patches.
    num_blocks: ``L`` of the truncated rollout; ``None`` for all blocks.
    head_fusion: as in :func:`attention_rollout`.

  Returns:
    ``R[:, 0, 1:]``, ``[b, n]``: non-negative, summing to at most 1 (the rest stays with the
    class token itself). Reshape to the patch grid with the feature map's shape.
  """
  return attention_rollout(attentions, num_blocks=num_blocks, head_fusion=head_fusion)[:, 0, 1:]


def pool_relevance(relevance: jnp.ndarray, grid_size: int, *,
                   resize_to: int | None = RESIZE_TO) -> jnp.ndarray:
  """Pools a relevance map to the part grid of :class:`~diml_jax.models.EmbeddingModel`.

  The same resize-then-average pooling as the local embeddings (:func:`grid_pool`), so cell
  ``k`` of the result weighs local embedding ``k`` (row-major); usable as a marginal of
  :func:`diml_jax.matching.match` (it normalises the weights).

  Args:
    relevance: ``[b, h, w]`` non-negative, e.g. :func:`patch_relevance` reshaped to the
      patch grid.
    grid_size: ``g``, the embedding model's ``grid_size``.
    resize_to: the embedding model's ``resize_to``.

  Returns:
    ``[b, g * g]``.
  """
  if jnp.ndim(relevance) != 3:
    raise ValueError(f"`relevance` must be a map [b, h, w]; got shape {jnp.shape(relevance)}.")
  pooled = grid_pool(jnp.asarray(relevance)[..., None], grid_size, resize_to=resize_to)
  return pooled.reshape(pooled.shape[0], grid_size * grid_size)
