"""ViT: parity with an independent PyTorch forward pass in timm's layout (patch tokens, class
token, every block's attention, position embeddings resampled for other image sizes), weight
import and its errors, the standard variants' sizes, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from diml_jax.models import (EmbeddingModel, VisionTransformer, ViTB16, ViTS16, ViTTiny,
                             resample_pos_embed, vit_variables)
from diml_jax.models.vit import bicubic_matrix
from tests.models.helpers import assert_rel_close
from tests.models.torch_reference import TorchViT


def _reference(model: VisionTransformer, num_classes: int, seed: int = 0) -> TorchViT:
  """A PyTorch twin of ``model`` with random weights, layer norms included."""
  torch.manual_seed(seed)
  reference = TorchViT(model.hidden_size, model.depth, model.num_heads, model.mlp_dim,
                       model.patch_size, model.image_size, num_classes).eval()
  with torch.no_grad():
    for name, p in reference.named_parameters():
      if ".norm" in name or name.startswith("norm"):
        p.copy_(0.3 * torch.randn_like(p) + (1.0 if name.endswith("weight") else 0.0))
  return reference


def _state_dict(reference: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
  model = ViTTiny(num_classes=10)
  reference = _reference(model, num_classes=10)
  return model, vit_variables(_state_dict(reference), model), reference


# 64x64 is the grid the position embeddings were learned for (4x4); 80x48 resamples them
# to 5x3 (up along one axis, down along the other).
@pytest.mark.parametrize("height, width", [(64, 64), (80, 48)])
def test_tiny_matches_torch_reference(tiny, height, width):
  model, variables, reference = tiny
  images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
  pooled, aux = jax.jit(model.apply)(variables, images)
  with torch.no_grad():
    tokens, attentions, logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  grid = (height // 16, width // 16)
  assert aux["feature_map"].shape == (2, *grid, model.hidden_size)
  assert_rel_close(pooled, tokens[:, 0].numpy())
  assert_rel_close(aux["feature_map"], tokens[:, 1:].reshape(2, *grid, -1).numpy())
  assert_rel_close(aux["logits"], logits.numpy())
  assert isinstance(aux["attentions"], tuple) and len(aux["attentions"]) == model.depth
  for ours, theirs in zip(aux["attentions"], attentions):
    assert ours.shape == (2, model.num_heads, 1 + grid[0] * grid[1], 1 + grid[0] * grid[1])
    assert_rel_close(ours, theirs.numpy())


@pytest.mark.parametrize("in_size, out_size", [(4, 5), (4, 3), (14, 24), (14, 9), (7, 7),
                                               (2, 1)])
def test_bicubic_matrix_matches_torch_interpolate(in_size, out_size):
  signal = torch.randn(1, 1, 1, in_size, dtype=torch.float64)
  expected = F.interpolate(signal, size=(1, out_size), mode="bicubic", align_corners=False)
  np.testing.assert_allclose(bicubic_matrix(in_size, out_size) @ signal[0, 0, 0].numpy(),
                             expected[0, 0, 0].numpy(), atol=1e-12)


def test_resample_pos_embed_keeps_class_token_and_rejects_non_square_grids():
  pos = np.random.default_rng(0).normal(size=(1, 17, 3)).astype(np.float32)
  assert resample_pos_embed(pos, (4, 4)) is pos
  out = resample_pos_embed(pos, (6, 2))
  assert out.shape == (1, 13, 3)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  with pytest.raises(ValueError, match=r"square grid; got shape \(1, 13, 3\)"):
    resample_pos_embed(out, (4, 4))


def test_timm_key_names_and_layouts(tiny):
  model, variables, reference = tiny
  state_dict = _state_dict(reference)
  # The reference's keys are timm's VisionTransformer keys.
  for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.2.attn.qkv.bias",
              "blocks.0.attn.proj.weight", "blocks.1.mlp.fc2.weight", "blocks.0.norm1.weight",
              "norm.bias", "head.weight"):
    assert key in state_dict, key
  params = variables["params"]
  np.testing.assert_array_equal(params["patch_embed"]["proj"]["kernel"],
                                state_dict["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["blocks_2"]["attn"]["qkv"]["kernel"],
                                state_dict["blocks.2.attn.qkv.weight"].T)
  np.testing.assert_array_equal(params["pos_embed"], state_dict["pos_embed"])


def test_weight_import_reports_every_problem(tiny):
  model, _, reference = tiny
  state_dict = _state_dict(reference)
  del state_dict["cls_token"]
  del state_dict["blocks.1.norm2.bias"]
  state_dict["pos_embed"] = np.zeros((1, 26, 24), np.float32)
  state_dict["dist_token"] = np.zeros((1, 1, 24), np.float32)
  with pytest.raises(ValueError) as error:
    vit_variables(state_dict, model)
  message = str(error.value)
  assert "missing blocks.1.norm2.bias: the model expects shape (24,)" in message
  assert "unexpected dist_token with shape (1, 1, 24)" in message
  assert "missing cls_token: the model expects shape (1, 1, 24)" in message
  assert ("pos_embed: the file has shape (1, 26, 24), the model expects (1, 17, 24)"
          " (position embeddings for another image size") in message


def test_token_problems_alone_are_reported(tiny):
  model, _, reference = tiny
  state_dict = _state_dict(reference)
  state_dict["cls_token"] = np.zeros((1, 24), np.float32)
  with pytest.raises(ValueError, match=r"\(1 problems\):\n  cls_token: the file has shape"
                     r" \(1, 24\), the model expects \(1, 1, 24\)"):
    vit_variables(state_dict, model)


def test_classifier_is_dropped_only_on_request(tiny):
  _, _, reference = tiny
  model = ViTTiny()  # no classifier
  with pytest.raises(ValueError, match="unexpected head.weight with shape"):
    vit_variables(_state_dict(reference), model)
  variables = vit_variables(_state_dict(reference), model, ignore=("head.",))
  assert "head" not in variables["params"]
  with pytest.raises(ValueError, match="must be a VisionTransformer; got EmbeddingModel"):
    vit_variables(_state_dict(reference), EmbeddingModel(backbone=model))


@pytest.mark.parametrize("ctor, parameters, width, heads", [
    (ViTS16, 22_050_664, 384, 6), (ViTB16, 86_567_656, 768, 12)])
def test_standard_variants_have_deit_sizes(ctor, parameters, width, heads):
  model = ctor(num_classes=1000)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  pooled, aux = jax.eval_shape(model.apply, variables, images)
  assert sum(x.size for x in jax.tree.leaves(variables)) == parameters
  assert pooled.shape == (2, width)
  assert aux["feature_map"].shape == (2, 14, 14, width)
  assert [a.shape for a in aux["attentions"]] == [(2, heads, 197, 197)] * 12


def test_embedding_model_takes_the_patch_tokens_as_its_map():
  model = EmbeddingModel(backbone=ViTTiny(), embed_dim=8, grid_size=2)
  images = jax.ShapeDtypeStruct((3, 64, 96, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  global_, aux = jax.eval_shape(model.apply, variables, images)
  assert global_.shape == (3, 8) and aux["local"].shape == (3, 4, 8)
  assert aux["feature_map"].shape == (3, 4, 6, 24) and aux["pooled"].shape == (3, 24)
  # The attentions pass through, for the rollout marginals.
  assert [a.shape[:2] for a in aux["attentions"]] == [(3, ViTTiny().num_heads)] * ViTTiny().depth


def test_bfloat16_computation_keeps_float32_parameters_and_attention():
  model = ViTTiny(dtype=jnp.bfloat16)
  images = jax.ShapeDtypeStruct((1, 32, 48, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  pooled, aux = jax.eval_shape(model.apply, variables, images)
  assert pooled.dtype == aux["feature_map"].dtype == jnp.bfloat16
  assert all(a.dtype == jnp.float32 for a in aux["attentions"])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


@pytest.mark.parametrize("shape, message", [
    ((1, 60, 64, 3), r"multiples of the patch size 16; got shape \(1, 60, 64, 3\)"),
    ((1, 3, 64, 64), "NCHW"), ((64, 64, 3), "batch axis")])
def test_bad_images_raise_value_error(shape, message):
  model = ViTTiny()
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match=message):
    model.apply(variables, jnp.zeros(shape))


def test_bad_configurations_raise_value_error():
  images = jnp.zeros((1, 64, 64, 3))
  with pytest.raises(ValueError, match=r"`hidden_size` \(24\) must be divisible by `num_heads`"
                     r" \(5\)"):
    ViTTiny(num_heads=5).init(jax.random.key(0), images)
  with pytest.raises(ValueError, match=r"`image_size` \(60\) must be a multiple of"
                     r" `patch_size` \(16\)"):
    ViTTiny(image_size=60).init(jax.random.key(0), images)


@pytest.mark.slow
def test_vit_b16_matches_torch_reference():
  model = ViTB16(num_classes=1000)
  reference = _reference(model, num_classes=1000)
  variables = vit_variables(_state_dict(reference), model)
  images = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype(np.float32)
  pooled, aux = jax.jit(model.apply)(variables, images)
  with torch.no_grad():
    tokens, attentions, logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert_rel_close(pooled, tokens[:, 0].numpy())
  assert_rel_close(aux["feature_map"], tokens[:, 1:].reshape(2, 14, 14, -1).numpy())
  assert_rel_close(aux["attentions"][-1], attentions[-1].numpy())
  assert_rel_close(aux["logits"], logits.numpy())
