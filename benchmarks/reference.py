"""DIML's published matching in PyTorch: the references the benchmarks time, in one place.

Written from the published DIML code, in its forms:

- :func:`criterion_all_pairs`: the multi-similarity criterion's all-pairs form
  (``criteria/multisimilarity_diml.py``): the batch repeated to ``b²`` pairs
  (``repeat_interleave`` / ``cat``), channel-first features ``[p, c, r]``, its einsum
  ``'bcs,bcm->bsm'`` and one batched Sinkhorn call whose loop stops when the largest
  per-pair mean change of the row scaling drops below 0.1 (at most 100 iterations). One
  difference: the criterion's ``cross_attention`` gives the first image's parts the weights
  of the *second* image's parts (``relu(<g_x, y_j>)``); here each part gets its own,
  ``relu(<x_i, g_y>)``, as the paper and the published evaluation code
  (``utilities/diml.py``) do, so that both sides solve the same problems.
- :func:`calc_similarity`: the published evaluation's form (``utilities/diml.py``): one
  anchor against ``n`` items, its einsum ``'cm,ncs->nsm'``, and a loop that stops when the
  mean change of the row scaling over all ``n`` pairs drops below 0.1. Called once per
  anchor, it is the per-anchor loop a user of the published code would write.

Both return the iterations their loop ran. ``max_iterations`` and ``stop`` default to the
published 100 and 0.1; ``tests/test_benchmark_references.py`` runs them to convergence and
compares them with the float64 references of the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPSILON = 0.05


def sinkhorn(K, u, v, *, max_iterations=100, stop=0.1, per_pair=False):
  """Kernel-mode Sinkhorn as published: ``(T [p, r1, r2], iterations)``.

  ``per_pair``: the criterion's stop rule (the largest per-pair mean change, NaN pairs
  left out); otherwise the evaluation's (the mean change over all pairs).
  """
  r, c = torch.ones_like(u), torch.ones_like(v)
  iterations = 0
  for _ in range(max_iterations):
    r0 = r
    r = u / torch.matmul(K, c.unsqueeze(-1)).squeeze(-1)
    c = v / torch.matmul(K.permute(0, 2, 1).contiguous(), r.unsqueeze(-1)).squeeze(-1)
    iterations += 1
    if per_pair:
      err = (r - r0).abs().mean(dim=1)
      err = err[~torch.isnan(err)]
      if len(err) == 0 or torch.max(err).item() < stop:
        break
    elif (r - r0).abs().mean().item() < stop:
      break
  return torch.matmul(r.unsqueeze(-1), c.unsqueeze(-2)) * K, iterations


def _marginal(att):
  att = F.relu(att)
  return att / (att.sum(dim=1, keepdims=True) + 1e-5)


def criterion_all_pairs(x, **loop):
  """Structural and DIML similarity of all ``b²`` ordered pairs of raw local features
  ``x [b, r, c]``: ``(structural [b, b], similarity [b, b], iterations)``."""
  b, r, c = x.shape
  batch = x.permute(0, 2, 1)  # the criterion's channel-first [b, c, h*w]
  xa = torch.repeat_interleave(batch, b, dim=0)
  xb = torch.cat([batch for _ in range(b)], dim=0)
  ga, gb = F.normalize(xa.mean(2), dim=1), F.normalize(xb.mean(2), dim=1)
  xa, xb = F.normalize(xa, dim=1), F.normalize(xb, dim=1)
  u = _marginal(torch.einsum("nc,ncr->nr", gb, xa))
  v = _marginal(torch.einsum("nc,ncr->nr", ga, xb))
  sim1 = torch.einsum("bcs,bcm->bsm", xa, xb).contiguous()
  sim2 = torch.einsum("bc,bc->b", ga, gb).reshape(-1, 1, 1)
  T, iterations = sinkhorn(torch.exp(-(1.0 - sim1) / EPSILON), u, v, per_pair=True, **loop)
  structural = torch.sum(T * sim1, dim=(1, 2))
  similarity = torch.sum(T * (sim1 + sim2) / 2, dim=(1, 2))
  return structural.view(b, b), similarity.view(b, b), iterations


def calc_similarity(anchor, anchor_center, fb, fb_center, **loop):
  """One anchor ``[c, r]`` (normalised parts, channel-first) against ``fb [n, c, r]``:
  ``(structural [n], iterations)``; ``anchor_center [c]``, ``fb_center [n, c]``
  normalised global vectors."""
  n, _, r = fb.size()
  sim = torch.einsum("cm,ncs->nsm", anchor, fb).contiguous().view(n, r, r)
  u = _marginal(torch.einsum("c,ncr->nr", anchor_center, fb).view(n, r))
  v = _marginal(torch.einsum("cr,nc->nr", anchor, fb_center).view(n, r))
  T, iterations = sinkhorn(torch.exp(-(1.0 - sim) / EPSILON), u, v, **loop)
  return torch.sum(T * sim, dim=(1, 2)), iterations


def per_anchor(x, **loop):
  """All ``b²`` ordered pairs of raw local features ``x [b, r, c]``, one anchor at a time:
  ``(structural [b, b], iterations of each anchor's call)``. Entry ``[a, b]`` is the
  problem of ``(x[a], x[b])`` (rows: ``a``'s parts), solved in anchor ``b``'s call."""
  g = F.normalize(x.mean(1), dim=-1)
  xc = F.normalize(x, dim=-1).permute(0, 2, 1).contiguous()  # [b, c, r]
  rows, iterations = [], []
  for i in range(x.shape[0]):
    s, k = calc_similarity(xc[i], g[i], xc, g, **loop)
    rows.append(s)
    iterations.append(k)
  # calc_similarity's flow is [item parts, anchor parts]: the problem of (item, anchor).
  return torch.stack(rows).T, iterations
