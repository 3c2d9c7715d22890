"""Validated configuration of a real SSL training run (one TOML table per dataclass).

Every dataclass checks its own values in ``__post_init__`` and raises
:class:`~stopgrad.dynamics.ConfigError` naming the key, the value and what is allowed, so a TOML file
(read by ``stopgrad.config.build``) and Python code are validated identically. :class:`TrainConfig`
adds the checks that involve several tables (a predictor rule needs a linear predictor, ...).

TOML layout::

    [method]     name, stop_gradient, ema, momentum, temperature, queue_size, ...
    [encoder]    arch, stem, width
    [projector]  layers, hidden_dim, out_dim, hidden_bn, last_bn, last_bn_affine, last_bias
    [predictor]  kind, hidden_dim, init, rho, freq, [predictor.rule] name, eps, power
    [data]       name, root, source, download, train_subset, test_subset, image_size
    [augment]    crop_scale, flip_p, jitter_p, brightness, ..., blur_p, solarize_p
    [optim]      name, lr, lr_scaling, momentum, weight_decay, predictor_lr_ratio, ...
    [train]      epochs, batch_size, seed, precision, channels_last, compile, checkpoint_every, ...
    [probe]      every, rho, max_samples
    [eval]       knn_every, knn_k, knn_temperature, linear_epochs, ...
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from stopgrad.dynamics import ConfigError, PredictorRule, RuleSpec, check, check_choice, check_range, check_seed

from .precision import PRECISIONS

__all__ = [
    "ARCHS",
    "AugmentConfig",
    "DataConfig",
    "EncoderConfig",
    "EvalConfig",
    "METHODS",
    "MethodConfig",
    "OptimConfig",
    "PredictorConfig",
    "ProbeConfig",
    "ProjectorConfig",
    "TrainConfig",
    "TrainSpec",
    "config_to_dict",
    "config_to_json",
    "config_to_toml",
]

METHODS = ("simsiam", "byol", "simsiam-gsg", "byol-gsg", "simclr", "mocov2")
#: methods whose loss regresses a prediction onto a target (they have a predictor and a stop-gradient).
PREDICTIVE = ("simsiam", "byol", "simsiam-gsg", "byol-gsg")
#: methods with a momentum (EMA) target encoder.
MOMENTUM = ("byol", "byol-gsg", "mocov2")
#: guided stop-gradient methods (four views; ``reverse`` applies to them only).
GSG_METHODS = ("simsiam-gsg", "byol-gsg")
ARCHS = ("resnet18", "resnet34", "resnet50", "convnet")
STEMS = ("cifar", "imagenet")
MAX_DIM = 65536  # a head wider than this is a typo, not an experiment
#: softmax temperatures (NT-Xent, InfoNCE, the kNN monitor): published values lie in [0.05, 0.5]. Below 1e-3
#: the logits cos/T exceed 1e3 and bf16 (8 bits of mantissa) no longer resolves their differences; above 100
#: every logit is within 1% of the others and the loss no longer depends on the embeddings.
TEMPERATURE_RANGE = (1e-3, 100.0)
#: weight decay (trunk and predictor): published recipes use 1e-6 to 5e-4; a decay of 1 already removes the
#: whole weight in one step of learning rate 1, so larger values are typos (1e300 overflows the update).
WEIGHT_DECAY_MAX = 1.0
#: LARS trust coefficient: published values 1e-3 (You et al. 2017) to 0.02; at 1 a layer's step is as large
#: as the layer's weights.
LARS_ETA_MAX = 1.0


def _dim(key: str, value: int) -> None:
    check_range(key, value, 1, MAX_DIM, integer=True)
    check(key, value, isinstance(value, int) and not isinstance(value, bool), "must be an integer")


def _pair(key: str, value, lo=None, hi=None) -> None:
    check(key, value, isinstance(value, tuple) and len(value) == 2, "must be a list of two numbers [low, high]")
    check_range(key, value, lo, hi)
    check(key, value, value[0] <= value[1], "must satisfy low <= high")


#: per-method defaults of the [method] keys left unset (None). Sources (reference/methods.md §1.1, §3.1):
#: SimCLR App. B.9 and lightly's NTXentLoss (T = 0.5); MoCo v2 (``--moco-t 0.2``; the CIFAR demo's
#: m = 0.99, fixed); BYOL with solo-learn's CIFAR schedule 0.99 -> 1 (cosine); BYOL-GSG's official code
#: (m = 0.99, fixed). Keys a method does not use get the neutral values of ``_OTHER``.
METHOD_DEFAULTS = {
    "simclr": dict(temperature=0.5),
    "mocov2": dict(temperature=0.2, momentum=0.99, momentum_schedule="constant"),
    "byol": dict(momentum=0.99, momentum_final=1.0, momentum_schedule="cosine"),
    "byol-gsg": dict(momentum=0.99, momentum_schedule="constant"),
}
_OTHER = dict(temperature=0.1, momentum=0.99, momentum_final=1.0, momentum_schedule="constant")


@dataclass(frozen=True)
class MethodConfig:
    """The SSL method and its switches.

    name: one of ``simsiam``, ``byol``, ``simsiam-gsg``, ``byol-gsg`` (guided stop-gradient, methods.md
    §1.1), ``simclr`` (NT-Xent), ``mocov2`` (InfoNCE with a queue).
    stop_gradient: False removes the stop-gradient on the target branch (ablation; only where the target
    comes from the online network: simsiam, simsiam-gsg, byol with ema = false).
    ema: byol family only; False takes the targets from the online network (no momentum encoder).
    momentum, momentum_final, momentum_schedule: EMA momentum m of the target encoder; "cosine" goes from
    ``momentum`` to ``momentum_final`` over the run (BYOL), "constant" keeps ``momentum``.
    temperature: NT-Xent / InfoNCE temperature. queue_size, symmetric, shuffle_bn: MoCo v2 (shuffle_bn:
    batch shuffling for the key encoder across all processes; it changes the keys only where BN
    statistics are per group: several processes and/or ``train.bn_splits > 1``).
    loss_scale: the loss is multiplied by this before the backward pass (the reported loss is not), e.g.
    4 for luckmatters' DirectPred loss sum_views -2 cos against the -(cos + cos)/2 used here.
    reverse: GSG only (simsiam-gsg, byol-gsg): the *farthest* negative pair gets the predictor (argmax of
    the four distances) instead of the closest (argmin); the ablation "reverse GSG" of docs/gsg_theory.md.

    momentum, momentum_final, momentum_schedule and temperature left unset take the method's own
    defaults (``METHOD_DEFAULTS``: simclr T 0.5; mocov2 T 0.2, m 0.99 constant; byol m 0.99 -> 1 cosine;
    byol-gsg m 0.99 constant), resolved when the config is built (so config.toml records them).
    """

    name: str = "simsiam"
    stop_gradient: bool = True
    ema: bool = True
    momentum: float | None = None
    momentum_final: float | None = None
    momentum_schedule: str | None = None
    temperature: float | None = None
    queue_size: int = 4096
    symmetric: bool = True
    shuffle_bn: bool = True
    loss_scale: float = 1.0
    reverse: bool = False

    def __post_init__(self):
        check_choice("name", self.name, METHODS)
        check("reverse", self.reverse, isinstance(self.reverse, bool), "must be true or false")
        check("reverse", self.reverse, not self.reverse or self.name in GSG_METHODS,
              f"reverse GSG needs method name {' or '.join(GSG_METHODS)} (got {self.name!r})")
        defaults = {**_OTHER, **METHOD_DEFAULTS.get(self.name, {})}
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        check_range("momentum", self.momentum, 0, 1)
        check_range("momentum_final", self.momentum_final, 0, 1)
        check_choice("momentum_schedule", self.momentum_schedule, ("cosine", "constant"))
        check_range("temperature", self.temperature, *TEMPERATURE_RANGE)
        check_range("queue_size", self.queue_size, 1, None, integer=True)
        check_range("loss_scale", self.loss_scale, 0, None, lo_open=True)

    @property
    def predictive(self) -> bool:
        return self.name in PREDICTIVE

    @property
    def has_momentum_encoder(self) -> bool:
        return self.name in MOMENTUM and (self.ema or self.name == "mocov2")


@dataclass(frozen=True)
class EncoderConfig:
    """Backbone. arch: torchvision ``resnet18``/``resnet34``/``resnet50`` (fc removed), or ``convnet``, a
    small 4-stage conv-BN-ReLU net (``width``, 2·width, 4·width, 8·width channels) for CPU tests.
    stem: ``cifar`` (3x3 stride-1 conv1, no max-pool) or ``imagenet`` (7x7 stride-2 conv1 + max-pool).
    zero_init_residual: zero-init the last BN gamma of each residual block (torchvision's flag)."""

    arch: str = "resnet18"
    stem: str = "cifar"
    width: int = 32
    zero_init_residual: bool = False

    def __post_init__(self):
        check_choice("arch", self.arch, ARCHS)
        check_choice("stem", self.stem, STEMS)
        _dim("width", self.width)


@dataclass(frozen=True)
class ProjectorConfig:
    """Projector MLP: ``layers`` Linear layers, hidden ones ``hidden_dim`` wide with BN (if hidden_bn) and
    ReLU, the last ``out_dim`` wide, followed by BN when ``last_bn`` (affine when ``last_bn_affine``).
    SimSiam CIFAR: layers 2, 2048/2048, last BN. BYOL: 4096 -> 256, no last BN, last_bias."""

    layers: int = 2
    hidden_dim: int = 2048
    out_dim: int = 2048
    hidden_bn: bool = True
    last_bn: bool = True
    last_bn_affine: bool = False
    last_bias: bool = False

    def __post_init__(self):
        check_range("layers", self.layers, 1, 8, integer=True)
        _dim("hidden_dim", self.hidden_dim)
        _dim("out_dim", self.out_dim)


PREDICTOR_KINDS = ("mlp", "linear", "symmetric", "none")


@dataclass(frozen=True)
class PredictorConfig:
    """Predictor. kind: ``mlp`` (d -> hidden_dim (BN, ReLU) -> d, SimSiam's bottleneck), ``linear``
    (bias-free d x d, the theory's W_p), ``symmetric`` (W_p = (A + A^T)/2), ``none`` (identity; for
    SimCLR/MoCo, or the no-predictor ablation). init: ``default`` or ``identity`` (linear kinds).

    rule: a DirectPred-family rule (``[predictor.rule] name = "directpred"``) or, from Python, any
    :class:`~stopgrad.dynamics.PredictorRule`; it overwrites a linear predictor's weight with
    rule(F-hat) every ``freq`` steps, F-hat being the rho-EMA of the online projector outputs'
    correlation (DirectPred Eq. 19)."""

    kind: str = "mlp"
    hidden_dim: int = 512
    hidden_bn: bool = True
    bias: bool = True
    init: str = "default"
    rule: RuleSpec | PredictorRule | None = None
    rho: float = 0.3
    freq: int = 1

    def __post_init__(self):
        check_choice("kind", self.kind, PREDICTOR_KINDS)
        _dim("hidden_dim", self.hidden_dim)
        check_choice("init", self.init, ("default", "identity"))
        check("init", self.init, self.init == "default" or self.kind in ("linear", "symmetric"),
              "'identity' needs kind = 'linear' or 'symmetric'")
        check("rule", self.rule, self.rule is None or isinstance(self.rule, (RuleSpec, PredictorRule)),
              "must be a [predictor.rule] table or a PredictorRule")
        if self.rule is not None:
            check("kind", self.kind, self.kind in ("linear", "symmetric"),
                  "a predictor rule overwrites a linear predictor: use kind = 'linear' or 'symmetric'")
        check_range("rho", self.rho, 0, 1, hi_open=True)
        check_range("freq", self.freq, 1, None, integer=True)

    def predictor_rule(self) -> PredictorRule | None:
        if self.rule is None:
            return None
        return self.rule.build() if isinstance(self.rule, RuleSpec) else self.rule


DATASETS = ("cifar10", "cifar100", "stl10", "imagefolder", "synthetic")


@dataclass(frozen=True)
class DataConfig:
    """Training data. name: ``cifar10``, ``cifar100``, ``stl10``, ``imagefolder`` (root/train and
    root/val or root/test class folders), ``synthetic`` (generated, for tests).

    root: the data folder; empty takes ``--data-root`` or the environment variable STOPGRAD_DATA. For
    cifar10 it holds ``cifar10-jpeg.npz`` (the packed offline copy) or a torchvision root.
    source: ``auto`` (npz if present, else torchvision), ``npz`` or ``torchvision`` (cifar10 only).
    download: let torchvision download a missing dataset (needs the network).
    train_subset / test_subset: use the first n images of a split (0: all).
    image_size: images are resized to this side (imagefolder needs it; 0 keeps the native size).
    stl10_unlabeled: train STL-10 on train+unlabeled (the kNN bank is the labelled train split).
    synthetic_size: images per split of the synthetic set; synthetic_classes: its classes."""

    name: str = "cifar10"
    root: str = ""
    source: str = "auto"
    download: bool = False
    train_subset: int = 0
    test_subset: int = 0
    image_size: int = 0
    stl10_unlabeled: bool = True
    synthetic_size: int = 1024
    synthetic_classes: int = 10

    def __post_init__(self):
        check_choice("name", self.name, DATASETS)
        check_choice("source", self.source, ("auto", "npz", "torchvision"))
        check("source", self.source, self.source != "npz" or self.name == "cifar10",
              "'npz' is the packed CIFAR-10 copy: only with name = 'cifar10'")
        check_range("train_subset", self.train_subset, 0, None, integer=True)
        check_range("test_subset", self.test_subset, 0, None, integer=True)
        check_range("image_size", self.image_size, 0, 4096, integer=True)
        check("image_size", self.image_size, self.name != "imagefolder" or self.image_size > 0,
              "required (> 0) for name = 'imagefolder'")
        check_range("synthetic_size", self.synthetic_size, 2, None, integer=True)
        check_range("synthetic_classes", self.synthetic_classes, 2, 1000, integer=True)


@dataclass(frozen=True)
class AugmentConfig:
    """Batched on-device augmentation, per-sample random parameters (defaults: SimSiam CIFAR recipe).

    crop_size (0: the image size), crop_scale, crop_ratio: RandomResizedCrop. flip_p: horizontal flip.
    jitter_p with brightness, contrast, saturation, hue: ColorJitter applied with probability jitter_p;
    jitter_order "random" (a fresh order per sample, as torchvision) or "fixed" (b, c, s, h).
    grayscale_p. blur_p, blur_sigma, blur_kernel (0: about 10% of the crop, odd): Gaussian blur.
    solarize_p, solarize_threshold (on [0, 1] pixels)."""

    crop_size: int = 0
    crop_scale: tuple[float, ...] = (0.2, 1.0)
    crop_ratio: tuple[float, ...] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_order: str = "random"
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, ...] = (0.1, 2.0)
    blur_kernel: int = 0
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self):
        check_range("crop_size", self.crop_size, 0, 4096, integer=True)
        _pair("crop_scale", self.crop_scale, 0, 1)
        check("crop_scale", self.crop_scale, self.crop_scale[0] > 0, "low must be > 0")
        _pair("crop_ratio", self.crop_ratio, 0, None)
        check("crop_ratio", self.crop_ratio, self.crop_ratio[0] > 0, "low must be > 0")
        for key in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            check_range(key, getattr(self, key), 0, 1)
        for key in ("brightness", "contrast", "saturation"):
            check_range(key, getattr(self, key), 0, 1)
        check_range("hue", self.hue, 0, 0.5)
        check_choice("jitter_order", self.jitter_order, ("random", "fixed"))
        _pair("blur_sigma", self.blur_sigma, 0, None)
        check("blur_sigma", self.blur_sigma, self.blur_sigma[0] > 0, "low must be > 0")
        check_range("blur_kernel", self.blur_kernel, 0, 255, integer=True)
        check("blur_kernel", self.blur_kernel, self.blur_kernel == 0 or self.blur_kernel % 2 == 1,
              "must be odd (or 0 for automatic)")
        check_range("solarize_threshold", self.solarize_threshold, 0, 1)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule.

    name: ``sgd`` or ``lars`` (LARS with trust coefficient lars_eta; biases and BN parameters excluded from
    weight decay and adaptation when lars_exclude_bias_bn). lr: base learning rate; with lr_scaling
    "linear" the run uses lr * batch_size / 256. schedule: ``cosine`` (to min_lr, after warmup_epochs
    of linear warm-up from 0) or ``constant``.
    predictor_lr_ratio: the predictor's lr is this times the trunk's (alpha_p of the theory).
    fix_predictor_lr: the predictor keeps its initial lr (SimSiam's --fix-pred-lr; no warm-up, no decay).
    predictor_weight_decay: the predictor's weight decay (None: weight_decay); set weight_decay = 0 and
    this > 0 for predictor-only weight decay.
    predictor_decay: ``coupled`` (PyTorch SGD: the predictor shrinks by predictor_lr * wd_p per step, so a
    predictor lr ratio alpha_p also scales its decay) or ``flow`` (the predictor shrinks by trunk_lr * wd_p
    per step, the theory's -eta W_p of Eq. 2, not multiplied by alpha_p: its SGD weight decay is set to
    wd_p * trunk_lr / predictor_lr at every step; SGD only)."""

    name: str = "sgd"
    lr: float = 0.03
    lr_scaling: str = "linear"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    predictor_lr_ratio: float = 1.0
    fix_predictor_lr: bool = False
    predictor_weight_decay: float | None = None
    predictor_decay: str = "coupled"
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    lars_eta: float = 0.02
    lars_clip: bool = False
    lars_exclude_bias_bn: bool = True

    def __post_init__(self):
        check_choice("name", self.name, ("sgd", "lars"))
        check_range("lr", self.lr, 0, None, lo_open=True)
        check_choice("lr_scaling", self.lr_scaling, ("linear", "none"))
        check_range("momentum", self.momentum, 0, 1, hi_open=True)
        check("nesterov", self.nesterov, not self.nesterov or self.momentum > 0, "needs momentum > 0")
        check_range("weight_decay", self.weight_decay, 0, WEIGHT_DECAY_MAX)
        check_range("predictor_lr_ratio", self.predictor_lr_ratio, 0, None, lo_open=True)
        if self.predictor_weight_decay is not None:
            check_range("predictor_weight_decay", self.predictor_weight_decay, 0, WEIGHT_DECAY_MAX)
        check_choice("predictor_decay", self.predictor_decay, ("coupled", "flow"))
        check("predictor_decay", self.predictor_decay, self.predictor_decay == "coupled" or self.name == "sgd",
              "'flow' is defined for SGD (LARS rescales every update)")
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        check_range("warmup_epochs", self.warmup_epochs, 0, None)
        check_range("min_lr", self.min_lr, 0, None)
        check_range("lars_eta", self.lars_eta, 0, LARS_ETA_MAX, lo_open=True)


@dataclass(frozen=True)
class TrainSpec:
    """The training loop.

    epochs; batch_size (global, over all processes); max_steps: stop after this many optimizer steps
    (0: run all epochs; schedules still span ``epochs``). seed: every random draw derives from it.
    precision: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``bf16``, ``fp32`` or ``fp64`` (every
    parameter, buffer, augmented view and loss in float64: CPU reference runs and cross-path tests; see
    ``ssl_models/precision.py``).
    channels_last (CUDA only), compile (CUDA only: torch.compile of the networks and the augmentation;
    compile_mode passed through).
    checkpoint_every: epochs between checkpoints (0: only at exit). log_every: steps between progress
    updates (also how often a non-finite loss is checked on a GPU, which costs a synchronisation).
    bn_splits: every BatchNorm normalises over bn_splits groups of the batch (MoCo's SplitBatchNorm on
    one GPU; equals per-GPU BN of a bn_splits-GPU run); in a DDP run each process splits its own share of
    the batch, which must divide into bn_splits groups of at least 2 (checked by the trainer).
    sync_bn: SyncBatchNorm in multi-GPU CUDA runs (not for MoCo's key encoder with shuffle_bn)."""

    epochs: int = 200
    batch_size: int = 512
    max_steps: int = 0
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    checkpoint_every: int = 10
    log_every: int = 20
    bn_splits: int = 1
    sync_bn: bool = True
    progress: bool = True

    def __post_init__(self):
        check_range("epochs", self.epochs, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 2, None, integer=True)
        check_range("max_steps", self.max_steps, 0, None, integer=True)
        check_seed("seed", self.seed)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("compile_mode", self.compile_mode,
                     ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
        check_range("checkpoint_every", self.checkpoint_every, 0, None, integer=True)
        check_range("log_every", self.log_every, 1, None, integer=True)
        check_range("bn_splits", self.bn_splits, 1, None, integer=True)
        check("bn_splits", self.bn_splits, self.batch_size % self.bn_splits == 0
              and self.batch_size // self.bn_splits >= 2,
              f"must divide batch_size = {self.batch_size} into groups of at least 2")


@dataclass(frozen=True)
class ProbeConfig:
    """Spectral probes recorded every ``every`` optimizer steps (0: never) into metrics.nc.

    F-hat is the predictor rule's running correlation when the method has one, otherwise a rho-EMA of the
    online projector outputs' correlation updated every step. The batch metrics (std_l2, effective rank,
    RankMe, uniformity) use at most ``max_samples`` projector outputs of the first view.

    ``cross_view``: also keep rho-EMAs of the two views' cross-correlation E[z1 z2^T] (and, with an EMA target,
    of E[z1 z_a2^T]) and record, along F-hat's eigenvectors u_j, ``s_cross`` = u_j^T E[z1 z2^T] u_j (the
    analogue of the theory's s = eig(W X W^T), where F-hat is W (X + X') W^T) and ``tau`` =
    u_j^T E[z1 z_a2^T] u_j / s_cross_j. Costs one d x d correlation per step (off by default)."""

    every: int = 50
    rho: float = 0.9
    max_samples: int = 512
    cross_view: bool = False

    def __post_init__(self):
        check_range("every", self.every, 0, None, integer=True)
        check_range("rho", self.rho, 0, 1, hi_open=True)
        check_range("max_samples", self.max_samples, 2, None, integer=True)
        check("cross_view", self.cross_view, isinstance(self.cross_view, bool), "must be true or false")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation. Weighted kNN monitor (k, T, L2-normalised backbone features; bank = train split under
    the test transform, or its first knn_bank_subset images) every ``knn_every`` epochs (0: at the end
    only), and at step 0 when ``knn_at_start`` (the random-initialisation baseline, not counted in the
    reported best). Linear probe (``stopgrad evaluate``): a softmax classifier on frozen, standardised backbone
    features, Adam with cosine decay for linear_epochs; the reported number is the last epoch's."""

    knn_every: int = 10
    knn_at_start: bool = False
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_bank_subset: int = 0
    batch_size: int = 1024
    linear_epochs: int = 100
    linear_lr: float = 1e-3
    linear_weight_decay: float = 1e-6
    linear_batch_size: int = 512

    def __post_init__(self):
        check_range("knn_every", self.knn_every, 0, None, integer=True)
        check_range("knn_k", self.knn_k, 1, None, integer=True)
        check_range("knn_temperature", self.knn_temperature, *TEMPERATURE_RANGE)
        check_range("knn_bank_subset", self.knn_bank_subset, 0, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("linear_epochs", self.linear_epochs, 1, None, integer=True)
        check_range("linear_lr", self.linear_lr, 0, None, lo_open=True)
        check_range("linear_weight_decay", self.linear_weight_decay, 0, None)
        check_range("linear_batch_size", self.linear_batch_size, 1, None, integer=True)


_TABLES = {
    "method": MethodConfig,
    "encoder": EncoderConfig,
    "projector": ProjectorConfig,
    "predictor": PredictorConfig,
    "data": DataConfig,
    "augment": AugmentConfig,
    "optim": OptimConfig,
    "train": TrainSpec,
    "probe": ProbeConfig,
    "eval": EvalConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """A whole run: one field per TOML table (see the module docstring)."""

    method: MethodConfig = field(default_factory=MethodConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSpec = field(default_factory=TrainSpec)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        for name, cls in _TABLES.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigError(name, value, f"must be a {cls.__name__} ([{name}] table)")
        m, pred = self.method, self.predictor
        if not m.predictive:
            check("predictor.kind", pred.kind, pred.kind == "none",
                  f"{m.name} has no predictor: set [predictor] kind = 'none'")
        if not m.stop_gradient:
            ok = m.name in ("simsiam", "simsiam-gsg") or (m.name == "byol" and not m.ema)
            check("method.stop_gradient", False, ok,
                  "false needs targets from the online network (simsiam, simsiam-gsg, or byol with ema = false)")
        if m.name == "byol-gsg":
            check("method.ema", m.ema, m.ema, "byol-gsg takes its targets from the momentum encoder: ema must be true")
        check("optim.fix_predictor_lr", self.optim.fix_predictor_lr,
              not self.optim.fix_predictor_lr or pred.kind != "none", "there is no predictor to fix")

    @property
    def effective_lr(self) -> float:
        """The trunk's peak learning rate after linear scaling."""
        scale = self.train.batch_size / 256 if self.optim.lr_scaling == "linear" else 1.0
        return self.optim.lr * scale


def config_to_dict(cfg) -> dict:
    """A config as plain nested dicts (a user PredictorRule becomes its repr); None values are dropped."""

    def conv(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v) if getattr(v, f.name) is not None}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, PredictorRule):
            return {"python": repr(v)}
        return v

    return conv(cfg)


def config_to_json(cfg) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        # a TOML basic string in ASCII: JSON's escapes are TOML's, but JSON writes characters beyond the
        # BMP as surrogate pairs (not Unicode scalar values: TOML rejects them) and leaves DEL unescaped
        text = json.dumps(v, ensure_ascii=False)
        return "".join(c if ord(c) < 0x7F else f"\\u{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08X}"
                       for c in text)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def config_to_toml(cfg) -> str:
    """The config as a TOML document that ``stopgrad.config.build(TrainConfig, ...)`` reads back.

    A Python-only predictor rule (a user callable) cannot be written; it is left out with a comment."""
    lines: list[str] = []

    def table(name: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in subs.items():
            if "python" in v:
                lines.insert(len(lines) - 1, f"# {k}: a Python predictor rule {v['python']} (not representable)")
                continue
            table(f"{name}.{k}", v)

    for name, value in config_to_dict(cfg).items():
        table(name, value)
    return "\n".join(lines)
