"""ResNet: parity with an independent PyTorch forward pass in torchvision's layout, batch-norm
modes, shapes and parameter counts of the standard variants, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from diml_jax.models import (BasicBlock, BottleneckBlock, ResNet, ResNet18, ResNet34, ResNet50,
                             ResNet101, ResNetTiny, backbone_variables)
from tests.models.helpers import assert_rel_close
from tests.models.torch_reference import (TorchBasicBlock, TorchBottleneck, TorchResNet,
                                          randomize_batch_norm)

# (2, 1, 1, 2): identity shortcuts in layer1 and layer4 besides the projections.
LAYERS = (2, 1, 1, 2)


def _pair(flax_block, torch_block, *, layers=LAYERS, width=8, num_classes=10, seed=0):
  torch.manual_seed(seed)
  reference = randomize_batch_norm(TorchResNet(torch_block, layers, width, num_classes), seed)
  model = ResNet(stage_sizes=layers, block_cls=flax_block, width=width, num_classes=num_classes)
  state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
  return model, backbone_variables(state_dict, model), reference


@pytest.mark.parametrize("flax_block, torch_block, height, width", [
    (BottleneckBlock, TorchBottleneck, 37, 50), (BottleneckBlock, TorchBottleneck, 64, 33),
    (BasicBlock, TorchBasicBlock, 45, 38)])
def test_matches_torch_reference(flax_block, torch_block, height, width):
  model, variables, reference = _pair(flax_block, torch_block)
  images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
  pooled, aux = model.apply(variables, images)
  with torch.no_grad():
    ref_map, ref_logits = reference.eval()(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert_rel_close(aux["feature_map"], ref_map.permute(0, 2, 3, 1).numpy())
  assert_rel_close(pooled, ref_map.mean((2, 3)).numpy())
  assert_rel_close(aux["logits"], ref_logits.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("flax_ctor, torch_block, layers", [
    (ResNet18, TorchBasicBlock, (2, 2, 2, 2)), (ResNet50, TorchBottleneck, (3, 4, 6, 3))])
def test_full_size_matches_torch_reference(flax_ctor, torch_block, layers):
  torch.manual_seed(0)
  reference = randomize_batch_norm(TorchResNet(torch_block, layers)).eval()
  model = flax_ctor(num_classes=1000)
  variables = backbone_variables({k: v.numpy() for k, v in reference.state_dict().items()},
                                 model)
  images = np.random.default_rng(1).normal(size=(2, 97, 64, 3)).astype(np.float32)
  _, aux = jax.jit(model.apply)(variables, images)
  with torch.no_grad():
    ref_map, ref_logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert_rel_close(aux["feature_map"], ref_map.permute(0, 2, 3, 1).numpy())
  assert_rel_close(aux["logits"], ref_logits.numpy())


def test_frozen_bn_uses_running_statistics_in_training_and_still_trains():
  model, variables, reference = _pair(BottleneckBlock, TorchBottleneck, layers=(1, 1, 1, 1))
  images = np.random.default_rng(0).normal(size=(4, 32, 40, 3)).astype(np.float32)
  # Not passing mutable=["batch_stats"]: frozen batch norm must not try to update them.
  train_out, _ = model.apply(variables, images, train=True)
  eval_out, _ = model.apply(variables, images, train=False)
  np.testing.assert_array_equal(train_out, eval_out)

  # The affine parameters get the gradients of PyTorch's batch norm in eval mode.
  @jax.jit
  def grads(params):
    logits = lambda p: model.apply({**variables, "params": p}, images, train=True)[1]["logits"]
    return jax.grad(lambda p: jnp.sum(logits(p)))(params)

  flax_grads = grads(variables["params"])
  reference.eval()
  reference(torch.from_numpy(images).permute(0, 3, 1, 2))[1].sum().backward()
  for name in ("bn1", "bn2", "bn3"):
    torch_bn = getattr(reference.layer2[0], name)
    assert_rel_close(flax_grads["layer2_0"][name]["scale"], torch_bn.weight.grad.numpy())
    assert_rel_close(flax_grads["layer2_0"][name]["bias"], torch_bn.bias.grad.numpy())


def test_ordinary_bn_uses_batch_statistics_like_torch_train_mode():
  model, variables, reference = _pair(BottleneckBlock, TorchBottleneck, layers=(1, 1, 1, 1))
  model = model.clone(frozen_bn=False)
  images = np.random.default_rng(0).normal(size=(4, 40, 36, 3)).astype(np.float32)
  (_, aux), updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  reference.train()
  with torch.no_grad():
    ref_map, _ = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert_rel_close(aux["feature_map"], ref_map.permute(0, 2, 3, 1).numpy())
  # Both update the running mean with momentum 0.1 in PyTorch's convention. (The running
  # variance differs by design: Flax averages the biased batch variance, PyTorch the unbiased.)
  np.testing.assert_allclose(updates["batch_stats"]["layer1_0"]["bn2"]["mean"],
                             reference.layer1[0].bn2.running_mean.numpy(), rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(Exception, match="batch_stats"):
    model.apply(variables, images, train=True)  # batch_stats not mutable


@pytest.mark.parametrize("ctor, parameters, channels", [
    (ResNet18, 11_689_512, 512), (ResNet34, 21_797_672, 512), (ResNet50, 25_557_032, 2048),
    (ResNet101, 44_549_160, 2048)])
def test_standard_variants_have_torchvision_sizes(ctor, parameters, channels):
  model = ctor(num_classes=1000)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  (pooled, aux) = jax.eval_shape(model.apply, variables, images)
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == parameters
  assert aux["feature_map"].shape == (2, 7, 7, channels)
  assert pooled.shape == (2, channels)


def test_feature_map_size_is_ceil_of_input_over_32():
  model = ResNetTiny()
  images = jax.ShapeDtypeStruct((1, 225, 320, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  _, aux = jax.eval_shape(model.apply, variables, images)
  assert aux["feature_map"].shape == (1, 8, 10, 8 * 8 * 4)
  assert "logits" not in aux


def test_bfloat16_computation_keeps_float32_parameters():
  model = ResNetTiny(dtype=jnp.bfloat16)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  pooled, aux = jax.eval_shape(model.apply, variables, images)
  assert aux["feature_map"].dtype == pooled.dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


@pytest.mark.parametrize("shape, hint", [((2, 3, 32, 32), "NCHW"), ((32, 32, 3), "batch axis"),
                                         ((2, 32, 32, 1), r"\[b, h, w, 3\]")])
def test_bad_images_raise_value_error(shape, hint):
  model = ResNetTiny()
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=hint):
    model.apply(variables, jnp.zeros(shape))
