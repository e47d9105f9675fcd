"""Independent PyTorch references: ResNet in torchvision's state-dict layout,
EfficientNet-Lite in EfficientNet-PyTorch's, BN-Inception in Cadene's pretrainedmodels',
NCHW, written from the papers' descriptions.

Used by the parity tests and, as the same-run reference, by ``benchmarks/backbone.py``.
torchvision is deliberately not a dependency; the key names here are those of the three
sources, so that real checkpoints load with ``load_state_dict(strict=True)``.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or in_planes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    out = planes * 4
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or in_planes != out:
      self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """Returns ``(feature_map NCHW, logits)``."""

  def __init__(self, block, layers, width: int = 64, num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_planes = width
    for i, num_blocks in enumerate(layers):
      blocks = []
      for j in range(num_blocks):
        blocks.append(block(in_planes, width * 2**i, 2 if i > 0 and j == 0 else 1))
        in_planes = width * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(in_planes, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x, self.fc(x.mean((2, 3)))


def _pad_same(x, kernel: int, stride: int):
  """TensorFlow SAME padding: the odd pixel of the total padding goes after."""
  pads = []
  for size in (x.shape[3], x.shape[2]):  # F.pad wants the last axis first
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    pads += [total // 2, total - total // 2]
  return F.pad(x, pads)


class TorchSameConv(nn.Conv2d):

  def forward(self, x):
    return super().forward(_pad_same(x, self.kernel_size[0], self.stride[0]))


def _bn(c):
  return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class TorchMBConv(nn.Module):

  def __init__(self, in_c, out_c, kernel, stride, expand):
    super().__init__()
    hidden = in_c * expand
    if expand != 1:
      self._expand_conv = TorchSameConv(in_c, hidden, 1, bias=False)
      self._bn0 = _bn(hidden)
    self._depthwise_conv = TorchSameConv(hidden, hidden, kernel, stride, groups=hidden,
                                         bias=False)
    self._bn1 = _bn(hidden)
    self._project_conv = TorchSameConv(hidden, out_c, 1, bias=False)
    self._bn2 = _bn(out_c)
    self.expand, self.skip = expand, stride == 1 and in_c == out_c

  def forward(self, x):
    y = x
    if self.expand != 1:
      y = F.relu6(self._bn0(self._expand_conv(y)))
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.skip else y


class TorchEfficientNetLite(nn.Module):
  """``stages``: (blocks, kernel, stride, expand, out) rows. Returns ``(map, logits)``."""

  def __init__(self, stages, stem=32, head=1280, num_classes=1000):
    super().__init__()
    self._conv_stem = TorchSameConv(3, stem, 3, 2, bias=False)
    self._bn0 = _bn(stem)
    blocks, in_c = [], stem
    for num_blocks, kernel, stride, expand, out_c in stages:
      for j in range(num_blocks):
        blocks.append(TorchMBConv(in_c, out_c, kernel, stride if j == 0 else 1, expand))
        in_c = out_c
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = TorchSameConv(in_c, head, 1, bias=False)
    self._bn1 = _bn(head)
    self._fc = nn.Linear(head, num_classes)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return x, self._fc(x.mean((2, 3)))


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every batch norm random statistics and affine parameters, so that parity tests
  see a wrong mapping of mean/var/scale/bias."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        c = module.num_features
        module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        module.weight.copy_(0.5 + torch.rand(c, generator=gen))
        module.bias.copy_(0.1 * torch.randn(c, generator=gen))
  return model


class TorchViTAttention(nn.Module):

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    d = c // self.heads
    q, k, v = self.qkv(x).view(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # 3 b h n d
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c)), weights


class TorchViTMlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class TorchViTBlock(nn.Module):

  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = TorchViTAttention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = TorchViTMlp(dim, hidden)

  def forward(self, x):
    y, weights = self.attn(self.norm1(x))
    x = x + y
    return x + self.mlp(self.norm2(x)), weights


class TorchViTPatchEmbed(nn.Module):

  def __init__(self, dim: int, patch: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, patch)

  def forward(self, x):
    return self.proj(x)


class TorchViT(nn.Module):
  """ViT in timm's state-dict layout (DeiT without distillation). Returns ``(tokens after the
  final norm [b, 1 + n, c], per-block attention weights, logits)``; inputs of another size
  than ``image_size`` get the grid of position embeddings resampled with
  ``F.interpolate(mode="bicubic", align_corners=False)``."""

  def __init__(self, dim, depth, heads, hidden, patch=16, image_size=224, num_classes=1000):
    super().__init__()
    self.side = image_size // patch
    self.patch_embed = TorchViTPatchEmbed(dim, patch)
    self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
    self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + self.side**2, dim))
    self.blocks = nn.ModuleList(TorchViTBlock(dim, heads, hidden) for _ in range(depth))
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    b, c, gh, gw = x.shape
    pos = self.pos_embed
    if (gh, gw) != (self.side, self.side):
      grid = pos[:, 1:].reshape(1, self.side, self.side, c).permute(0, 3, 1, 2)
      grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
      pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, c)], 1)
    x = torch.cat([self.cls_token.expand(b, 1, c), x.flatten(2).transpose(1, 2)], 1) + pos
    attentions = []
    for block in self.blocks:
      x, weights = block(x)
      attentions.append(weights)
    x = self.norm(x)
    return x, attentions, self.head(x[:, 0])


# BN-Inception in the state-dict layout of Cadene's pretrainedmodels port (Ioffe & Szegedy
# 2015): per block (name, input channels, 1x1, 3x3 reduce, 3x3, double reduce, double 3x3,
# pool kind, pool projection); None marks the stride-2 blocks' missing branches.
TORCH_BNINCEPTION_BLOCKS = [
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64),
    ("3c", 320, None, 128, 160, 64, 96, "max_s2", None),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128),
    ("4e", 608, None, 128, 192, 192, 256, "max_s2", None),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128),
]


class TorchBNInception(nn.Module):
  """BN-Inception on BGR input; returns ``(feature_map NCHW, logits)``. Modules are set
  by name (``inception_3a_double_3x3_1`` and ``..._bn``) so the keys are the port's."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self._unit("conv1_7x7_s2", 3, 64, 7, 2)
    self._unit("conv2_3x3_reduce", 64, 64, 1)
    self._unit("conv2_3x3", 64, 192, 3)
    for name, cin, c1, r3, c3, rd, d3, pool, proj in TORCH_BNINCEPTION_BLOCKS:
      p, stride = f"inception_{name}", 2 if pool == "max_s2" else 1
      if c1:
        self._unit(f"{p}_1x1", cin, c1, 1)
      self._unit(f"{p}_3x3_reduce", cin, r3, 1)
      self._unit(f"{p}_3x3", r3, c3, 3, stride)
      self._unit(f"{p}_double_3x3_reduce", cin, rd, 1)
      self._unit(f"{p}_double_3x3_1", rd, d3, 3)
      self._unit(f"{p}_double_3x3_2", d3, d3, 3, stride)
      if proj:
        self._unit(f"{p}_pool_proj", cin, proj, 1)
    self.last_linear = nn.Linear(1024, num_classes)

  def _unit(self, name, cin, cout, kernel, stride=1):
    setattr(self, name, nn.Conv2d(cin, cout, kernel, stride, kernel // 2))
    setattr(self, f"{name}_bn", nn.BatchNorm2d(cout))

  def _run(self, name, x):
    return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

  def forward(self, x):
    x = self._run("conv1_7x7_s2", x)
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = self._run("conv2_3x3", self._run("conv2_3x3_reduce", x))
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    for name, _, c1, _, _, _, _, pool, proj in TORCH_BNINCEPTION_BLOCKS:
      p = f"inception_{name}"
      out = [self._run(f"{p}_1x1", x)] if c1 else []
      out.append(self._run(f"{p}_3x3", self._run(f"{p}_3x3_reduce", x)))
      y = self._run(f"{p}_double_3x3_1", self._run(f"{p}_double_3x3_reduce", x))
      out.append(self._run(f"{p}_double_3x3_2", y))
      if pool == "max_s2":
        out.append(F.max_pool2d(x, 3, 2, ceil_mode=True))
      elif pool == "max":
        out.append(self._run(f"{p}_pool_proj", F.max_pool2d(x, 3, 1, 1, ceil_mode=True)))
      else:
        pooled = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
        out.append(self._run(f"{p}_pool_proj", pooled))
      x = torch.cat(out, 1)
    return x, self.last_linear(x.mean((2, 3)))
