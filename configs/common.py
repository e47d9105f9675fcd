"""The configuration of every run: the papers' protocol, and the knobs to vary it.

Each file in ``configs/`` is one experiment: ``get_config()`` returns :func:`paper` with
its data set and loss filled in, plus overrides. Values can be changed on the command
line, e.g. ``--config.batch_size=64``; a key that does not exist is an error.
"""
import ml_collections

# The papers' data sets: name in diml_jax.data and the directory you point `data.root` at.
DATASETS = {
    "cub": "cub200",
    "cars": "cars196",
    "sop": "sop",
}


def paper(dataset: str, loss: str, *, diml: bool) -> ml_collections.ConfigDict:
  """The training protocol of the DIML papers (ICCV 2021, Sec. 4; TPAMI 2023) for one data set and loss.

  Args:
    dataset: ``"cub"``, ``"cars"`` or ``"sop"``.
    loss: ``"margin"``, ``"multisimilarity"``, ``"proxyanchor"``, ``"triplet"`` or
      ``"contrastive"``.
    diml: train on DIML's structural quantity (``margin_diml`` / ``multisimilarity_diml``)
      instead of the global embedding. Evaluation re-ranks structurally either way
      (test-time DIML).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = DATASETS[dataset]
  c.data.root = ""           # the extracted archive (local or gs://); set on the command line
  c.data.source = "files"    # or "tfds"
  c.data.fallback = ""       # data set to use when `name` is not installed ("" = fail)
  c.data.image_size = 224    # random resized crop (train) / centre crop (test)
  c.data.resize_size = 256   # test images: shorter side before the centre crop
  c.data.num_workers = -1    # decoding processes; -1: one per core
  c.data.max_test_per_class = 0  # evaluate on at most this many images a class (0 = all)

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet50"  # resnet18/34/50/101, efficientnet_lite0, resnet_tiny, ...
  c.model.pretrained = True      # ImageNet weights (torchvision ResNet-50, packaged Lite0)
  c.model.frozen_bn = True       # batch norm in inference mode, as in the papers
  c.model.freeze_backbone = False
  c.model.embed_dim = 128
  c.model.grid_size = 4
  # The reference DIML code trains with the mean of the local embeddings as the global one.
  c.model.global_from = "grid" if diml else "feature_map"
  c.model.compute_dtype = "float32"  # or "bfloat16": parameters stay float32
  c.model.weights = ""           # a backbone weight file (timm/DeiT .pth for ViTs), or ""
  c.model.weights_key = ""       # its top-level key if it nests the state dict ("model": DeiT)
  c.model.rollout_blocks = 0     # ViTs: the last L blocks of the attention rollout (0 = all)
  c.model.head = "embedding"     # DIML's embedding head, or "grouping" (DGML)
  c.model.num_groups = 3         # DGML: groups, each of embed_dim // num_groups dimensions

  c.loss = ml_collections.ConfigDict()
  c.loss.name = loss
  c.loss.diml = diml
  c.loss.diversity_weight = 0.0  # DGML's diversity loss (model.head="grouping")
  # nonzero_loss_cutoff: 0 = off, as in the published code (Wu et al. use 1.4).
  c.loss.margin = dict(margin=0.2, beta=1.2, beta_lr=5e-4, cutoff=0.5, nonzero_loss_cutoff=0.0)
  c.loss.multisimilarity = dict(pos_weight=2.0, neg_weight=40.0, margin=0.1, threshold=0.5)
  c.loss.proxyanchor = dict(alpha=32.0, margin=0.1, lr_multiplier=100.0)
  c.loss.triplet = dict(margin=0.2)
  c.loss.contrastive = dict(pos_margin=0.0, neg_margin=1.0)

  # Structural matching (diml_jax.matching), as training, its losses, re-ranking, the
  # evaluation and the report all use it.
  c.matching = ml_collections.ConfigDict()
  c.matching.marginals = "cross"   # or "uniform", or "weights" (ViTs: attention rollout)
  c.matching.mass = 1.0            # p: matched fraction of part weight (partial similarity)
  c.matching.epsilon = 0.05        # the rest: matching.SinkhornOptions, the papers' values
  c.matching.threshold = 1e-3
  c.matching.max_iterations = 100
  c.matching.check_every = 10
  c.matching.gradient = "constant"  # or "implicit" / "unroll": through the solver

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-5           # backbone and embedding layer
  c.optimizer.weight_decay = 4e-4  # L2 added to the gradients, as torch.optim.Adam does
  c.optimizer.decoupled_weight_decay = False  # True: AdamW
  c.optimizer.decay_epochs = ()    # multi-step decay: epochs at which lr *= decay_factor
  c.optimizer.decay_factor = 0.3

  c.batch_size = 112               # global batch, all devices and hosts
  c.images_per_class = 2           # 56 classes x 2 images
  c.num_epochs = 150
  c.steps_per_epoch = 0            # 0: len(train split) // batch_size

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 5          # and after the last epoch; 0: never
  c.eval.batch_size = 128
  c.eval.ks = (0, 5, 10, 50, 100, 500, 1000)  # re-ranking depths K (0 = global only)
  c.eval.include_query_in_r = False  # True: the original code's R-Precision / MAP@R
  c.eval.with_nmi = True

  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  return c


# DGML's diversity-loss weights in the reference configs.
DIVERSITY_WEIGHTS = {"cub": 0.02, "cars": 0.01, "sop": 0.03}


def vit_diml(dataset: str, loss: str) -> ml_collections.ConfigDict:
  """DIML with a Vision Transformer (TPAMI 2023): rollout marginals, partial similarity.

  ViT-S/16 (DeiT layout) whose patch tokens are the feature map; the part weights of the
  transport problem are the truncated attention rollout of the last 4 blocks, pooled to
  the 4x4 grid; half of each image's part weight is matched (partial similarity, p = 0.5)
  in training and in re-ranking. The global embedding is the class token's. DeiT-S's
  ImageNet weights are a file you download once
  (https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth) and pass as
  ``--config.model.weights``.
  """
  c = paper(dataset, loss, diml=True)
  c.model.backbone = "vit_s16"
  c.model.weights_key = "model"   # DeiT's .pth nests the state dict under "model"
  c.model.global_from = "feature_map"  # for a ViT: the embedded class token
  c.model.rollout_blocks = 4
  c.matching.marginals = "weights"
  c.matching.mass = 0.5
  return c


def dgml(dataset: str, loss: str) -> ml_collections.ConfigDict:
  """DGML (Xu et al.): attentive grouping on ResNet-50, 3 groups of 170 dimensions.

  The metric loss runs on each group's embedding and is averaged over the groups, plus
  the diversity loss weighted by the data set's reference weight; retrieval ranks by the
  concatenated (normalised) group embeddings, so evaluation is global (``eval.ks=(0,)``).
  """
  c = paper(dataset, loss, diml=False)
  c.model.head = "grouping"
  c.model.embed_dim = 512         # 3 x 170, the reference's full_dim // k
  c.loss.diversity_weight = DIVERSITY_WEIGHTS[dataset]
  c.eval.ks = (0,)
  return c
