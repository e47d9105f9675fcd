"""The configuration of every run: the papers' protocol, and the knobs to vary it.

Each file in ``configs/`` is one experiment: ``get_config()`` returns :func:`paper` with
its data set and loss filled in, plus overrides. Values can be changed on the command
line, e.g. ``--config.batch_size=64``; a key that does not exist is an error.
"""
import ml_collections
from ml_collections import config_dict

# The papers' data sets: name in diml_jax.data and the directory you point `data.root` at.
DATASETS = {
    "cub": "cub200",
    "cars": "cars196",
    "sop": "sop",
}
# And In-Shop Clothes Retrieval, outside the papers' tables (the reference DGML code trains
# on it), a benchmark of queries against a gallery (Dataset.is_query).
ALL_DATASETS = {**DATASETS, "inshop": "inshop"}
# Recall@k cut-offs the literature reports for each (Oh Song et al. 2016 and since):
# SOP's gallery has 60,502 images, so its cut-offs go to 1000; In-Shop's are those of its
# benchmark (Liu et al. 2016) as DGML and the DML literature report them.
RECALL_KS = {
    "cub": (1, 2, 4, 8),
    "cars": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
}


def paper(dataset: str, loss: str, *, diml: bool) -> ml_collections.ConfigDict:
  """The training protocol of the DIML papers (ICCV 2021, Sec. 4; TPAMI 2023) for one data set and loss.

  Args:
    dataset: ``"cub"``, ``"cars"``, ``"sop"`` or ``"inshop"``.
    loss: a name of ``diml_jax.losses.registry.LOSSES`` (``"margin"``,
      ``"multisimilarity"``, ``"proxyanchor"``, ``"triplet"``, ...).
    diml: train on DIML's structural quantity (``margin_diml`` / ``multisimilarity_diml``)
      instead of the global embedding. Evaluation re-ranks structurally either way
      (test-time DIML).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = ALL_DATASETS[dataset]
  c.data.root = ""           # the extracted archive (local or gs://); set on the command line
  c.data.source = "files"    # or "tfds"
  c.data.fallback = ""       # data set to use when `name` is not installed ("" = fail)
  c.data.image_size = 224    # random resized crop (train) / centre crop (test)
  c.data.resize_size = 256   # test images: shorter side before the centre crop
  c.data.num_workers = -1    # decoding processes; -1: one per core
  c.data.max_test_per_class = 0  # evaluate on at most this many images a class (0 = all;
                                 # In-Shop: this many queries and gallery images a class)

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet50"  # resnet18/34/50/101, efficientnet_lite0, bninception, ...
  c.model.pretrained = True      # ImageNet weights (ResNet-50, Lite0, BN-Inception)
  c.model.frozen_bn = True       # batch norm in inference mode, as in the papers
  # True: embed the images once (test transform, no augmentation), cache the feature
  # maps in $DIML_JAX_CACHE/features and train only the head on them (feature_cache).
  c.model.freeze_backbone = False
  c.model.embed_dim = 128
  c.model.normalize = True       # L2-normalised embeddings (the published *_normalize nets)
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
  c.loss.name = loss             # a name of diml_jax.losses.registry.LOSSES
  c.loss.diml = diml
  c.loss.miner = "distance"      # tuple losses: distance, semihard, softhard, random, all
  c.loss.diversity_weight = 0.0  # DGML's diversity loss (model.head="grouping")
  # DGML: each group its own loss parameters (margin's beta [num_groups, n_classes]), as
  # the reference DGML code; False: one set shared by the groups (runs before this key).
  c.loss.per_group_params = True
  # Each loss's settings, the published code's defaults (parameters.py of the DIML code).
  # Distance-weighted miner: nonzero_loss_cutoff 0 = off, as in the published code (Wu et
  # al. use 1.4); dim, the sphere's dimension, 0 = the embedding's.
  c.loss.mining = dict(cutoff=0.5, nonzero_loss_cutoff=0.0, dim=0, semihard_margin=0.2)
  c.loss.margin = dict(margin=0.2, beta=1.2, beta_lr=5e-4)
  c.loss.multisimilarity = dict(pos_weight=2.0, neg_weight=40.0, margin=0.1, threshold=0.5)
  c.loss.triplet = dict(margin=0.2, squared=True, reduction="mean")
  c.loss.contrastive = dict(pos_margin=0.0, neg_margin=1.0, reduction="mean")
  c.loss.quadruplet = dict(margin_1=0.2, margin_2=0.2)
  c.loss.histogram = dict(num_bins=65)
  c.loss.snr = dict(margin=0.2, reg_weight=0.0)
  c.loss.npair = dict(l2_weight=0.005)
  c.loss.angular = dict(alpha=45.0, angular_weight=2.0, l2_weight=0.005)
  c.loss.lifted = dict(margin=1.0, l2_weight=0.005)
  c.loss.proxyanchor = dict(alpha=32.0, margin=0.1, lr_multiplier=100.0)
  c.loss.proxynca = dict(scale=3.0, lr_multiplier=50.0)
  c.loss.softtriple = dict(n_centroids=2, gamma=0.1, lam=8.0, margin=0.01, reg_weight=0.2,
                           lr_multiplier=1.0)
  c.loss.arcface = dict(margin=0.5, scale=16.0, lr=5e-4)
  c.loss.softmax = dict(temperature=0.05, lr=1e-5)

  # Structural matching (diml_jax.matching), as training, its losses, re-ranking, the
  # evaluation and the report all use it.
  c.matching = ml_collections.ConfigDict()
  # "cross": the paper's cross-correlation marginals (and the published evaluation's);
  # "cross_swapped": the published training criteria's form, the two images' roles
  # swapped, with which the published models were trained; "uniform"; or "weights"
  # (ViTs: attention rollout). README, "Differences from the original code".
  c.matching.marginals = "cross"
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
  # DGML's group queries (model.head="grouping"); None: weight_decay, like the rest.
  c.optimizer.query_weight_decay = config_dict.placeholder(float)

  c.batch_size = 112               # global batch, all devices and hosts
  c.images_per_class = 2           # 56 classes x 2 images
  c.num_epochs = 150
  c.steps_per_epoch = 0            # 0: len(train split) // batch_size

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 5          # and after the last epoch; 0: never
  c.eval.batch_size = 128
  c.eval.ks = (0, 5, 10, 50, 100, 500, 1000)  # re-ranking depths K (0 = global only)
  c.eval.recall_ks = RECALL_KS[dataset]  # Recall@k cut-offs (1 must be one: it picks the best)
  c.eval.include_query_in_r = False  # True: the original code's R-Precision / MAP@R (not In-Shop)
  c.eval.with_nmi = True

  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  return c


# The reference DGML code's recipe per data set (XinyiXuXD/DGML-master, configs/<data
# set>.yaml over configs/defaults.py, read by main.py and outline.set_lr): Adam at `lr`
# (ft_params_lr = new_params_lr), multiplied by 0.3 (gamma) at the epoch in `decay_epochs`
# (its tau; the second milestone, 1000, lies past the end); weight decay `weight_decay` on
# the backbone, keys and values (decay = key_val_decay) and `query_weight_decay` on the
# group queries (que_decay); the margin loss's beta at `beta_lr` (loss_margin_beta_lr);
# the diversity loss weighted by `diversity_weight` (lam_div).
DGML_RECIPES = {
    "cub": dict(num_epochs=100, lr=1e-5, decay_epochs=(55,), weight_decay=3e-3,
                query_weight_decay=1e-3, beta_lr=5e-5, diversity_weight=0.02),
    "cars": dict(num_epochs=200, lr=1e-5, decay_epochs=(100,), weight_decay=2e-3,
                 query_weight_decay=1e-3, beta_lr=5e-5, diversity_weight=0.01),
    "sop": dict(num_epochs=150, lr=9e-6, decay_epochs=(100,), weight_decay=3e-4,
                query_weight_decay=1e-4, beta_lr=1e-5, diversity_weight=0.03),
    # configs/in_shop.yaml: results the reference's README gives, not the paper.
    "inshop": dict(num_epochs=150, lr=1e-5, decay_epochs=(100,), weight_decay=3e-4,
                   query_weight_decay=1e-4, beta_lr=5e-5, diversity_weight=0.03),
}


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


def dgml(dataset: str) -> ml_collections.ConfigDict:
  """DGML (Xu et al.): attentive grouping on ResNet-50, with the reference code's recipe.

  Three groups of 170 dimensions (the reference's full_dim 512 // k), each L2-normalised;
  the margin loss (margin 0.2, beta 1.2, distance-weighted sampling with cutoff 0.5) runs
  on each group's embedding with the group's own beta (``loss.per_group_params``) and is
  averaged over the groups, plus the diversity loss
  weighted per data set; the data set's epochs, learning rate, step decay and weight
  decays of :data:`DGML_RECIPES`. Retrieval ranks by the concatenated group embeddings,
  so evaluation is global (``eval.ks=(0,)``).

  Args:
    dataset: ``"cub"``, ``"cars"``, ``"sop"`` or ``"inshop"``.
  """
  recipe = DGML_RECIPES[dataset]
  c = paper(dataset, "margin", diml=False)
  c.model.head = "grouping"
  c.model.embed_dim = 512         # 3 x 170, the reference's full_dim // k
  c.num_epochs = recipe["num_epochs"]
  c.optimizer.lr = recipe["lr"]
  c.optimizer.decay_epochs = recipe["decay_epochs"]
  c.optimizer.decay_factor = 0.3
  c.optimizer.weight_decay = recipe["weight_decay"]
  c.optimizer.query_weight_decay = recipe["query_weight_decay"]
  c.loss.margin.beta_lr = recipe["beta_lr"]
  c.loss.diversity_weight = recipe["diversity_weight"]
  c.eval.ks = (0,)
  return c
