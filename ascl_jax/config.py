"""The configuration schema: every field a run reads, its default, and its validation.

Experiment files in `configs/` are data only: each `get_config(arg)` starts from
`base_config()` (or `cifar_base()`) and overrides fields; `load(name, arg)` returns the config
`--config configs/<name>.py:arg` gives. `validate(config)` checks every enumerated field and the
numeric ranges up front and raises `ConfigError` naming the field and the allowed values.

Every enumeration of the library is defined here once; later modules (data, models, attacks,
losses, ...) import them. Sections that a library function reads on its own (`data`, `model`) have
their defaults in `data_defaults(name)` / `model_defaults()` and are completed and checked by
`resolve_data(cfg)` / `resolve_model(cfg)`, so a partial section (a dict with a few keys, e.g.
`dict(arch="resnet20")`) works from a notebook. This module imports nothing from the library.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

METHODS = (
    "nat",
    "adv",
    "trades",
    "ascl",
    "ascl_trades",
    "acl_pretrain",
    "trades_finetune",
    "linear_eval",
    "semi_student",
    "semi_supervised",
    "supcon",
)
TRAIN_SUBSETS = ("", "labelled", "unlabelled")
# data
DATASETS = ("digits", "cifar10", "cifar100", "fashion_mnist")
AUGMENTS = ("none", "crop_flip", "shift_flip", "simclr")
# Image shape (H, W, C) of each dataset: fixes the L2 / L1 box diameter that bounds eval.eps.
IMAGE_SHAPES = {
    "digits": (8, 8, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "fashion_mnist": (28, 28, 1),
}
# Order of the test split: tfds' stored order, or the original CIFAR order (tfds 'id' test_NNNNN,
# as torchvision reads it), so "the first n test images" is the authors' subset.
TEST_ORDERS = ("tfds", "original")
# Datasets with an 'original' order: CIFAR's (tfds ids), and the digits split's only order.
ORIGINAL_ORDER_DATASETS = ("cifar10", "cifar100", "digits")
NUM_VIEWS = (1, 2)
# model
ARCHS = ("cnn", "resnet20", "resnet18", "preact_resnet18", "wrn34_10", "tiny")
HEADS = ("identity", "p1", "p2", "acl_mlp")
BN_TYPES = ("single", "dual")
BN_BRANCHES = ("clean", "adv")
# BN running-variance update: PyTorch's unbiased batch variance var * n / (n - 1), or Flax's biased one.
BN_RUNNING_VARS = ("unbiased", "biased")
# per-dataset mean/std
NORMALIZATIONS = ("cifar10", "cifar100", "imagenet", "digits", "fashion_mnist", "none")
CONV_INITS = ("kaiming_fan_out", "kaiming_fan_in", "torch")
CNN_PADDINGS = ("auto", "VALID", "SAME")
MLP_LAYERS = (2, 3)  # acl_mlp head: 3 layers (ACL default) or 2 (ACL --twoLayerProj)
# attack
BN_MODES = ("eval", "train")  # eval: running statistics; train: batch statistics, updates discarded
ATTACK_INITS = ("uniform", "normal")
# loss. 'merge' (NEG = hard OR soft negatives) is the authors' code-only
# soft_lcscl(neg_type='merge'), not in the paper's Table 1 (SPEC 1.2).
STRATEGIES = ("global", "hard", "soft", "leaked", "merge")
SIMILARITIES = ("cosine", "dot", "neg_l1", "neg_l2", "neg_linf")
LOSS_FEATURES = ("z", "proj")
VAT_REDUCTIONS = ("mean", "batchmean", "sum")
TRADES_REDUCTIONS = ("batchmean", "mean")  # ascl_trades: / b (authors' ascl_trades), / (b*C) (2trans)
ACL_VARIANTS = ("s2s", "a2a", "a2s", "ds")
# optimiser
OPTIMIZERS = ("sgd", "adam", "lars")
SCHEDULES = ("constant", "piecewise", "warmup_cosine")
# fine-tuning and evaluation
LINEAR_EVAL_MODES = ("standard", "adversarial")
EVAL_ATTACKS = ("clean", "pgd", "mpgd", "autoattack")
# AutoAttack: 'none' or a version of the reference (fra31/auto-attack); 'custom' runs the components
# in eval.autoattack_attacks with the reference's per-component defaults.
AUTOATTACK_VERSIONS = ("none", "standard", "plus", "rand", "custom")
AUTOATTACK_COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
EVAL_CHECKPOINTS = ("last", "best")  # which checkpoint the headline evaluation uses
SELECT_ON = ("val", "test")  # where eval.checkpoint='best' measures its selection metric
# the selection metric: accuracy under the training attack's PGD (eval-mode BN), or natural accuracy
SELECT_METRICS = ("robust", "clean")
NORMS = ("Linf", "L2", "L1")  # evaluation threat model
DTYPES = ("float32", "bfloat16")  # model compute dtype
# CIFAR-10-C (Hendrycks & Dietterich 2019; tfds `cifar10_corrupted/<name>_<severity>`): the 15
# benchmark corruptions and the 4 extra ones, in tfds' names; severities 1..5. eval.corruptions holds
# 'all', names (every severity) or 'name:severity' items.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "frosted_glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
    "saturate",
    "spatter",
    "speckle_noise",
)
CORRUPTION_SEVERITIES = (1, 2, 3, 4, 5)

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
# data.idx_dir='': where Debian's dataset-fashion-mnist package installs the four IDX files.
IDX_DIR_DEFAULT = "/usr/share/datasets/fashion-mnist"


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # a path with a URL scheme (object storage)


class ConfigError(ValueError):
    """A config field holds a value that is not allowed."""


def data_defaults(name: str = "digits") -> ml_collections.ConfigDict:
    """The data section (`config.data`) with the defaults for dataset `name`.

    Fields:
      name: one of DATASETS: 'digits' (embedded), 'cifar10' / 'cifar100' (tfds), 'fashion_mnist'
        (tfds when prepared in data_dir, else the four IDX files in idx_dir).
      data_dir: tfds data directory ('' : `$TFDS_DATA_DIR` or `~/tensorflow_datasets`); unused
        for digits.
      download: False (default): never download; a dataset that is not prepared fails at once with
        the commands that prepare it. True: tfds downloads and prepares a missing dataset into
        data_dir (needs network; cifar10, cifar100, cifar10_corrupted, fashion_mnist).
      idx_dir: fashion_mnist only: the folder of the original IDX files
        (`{train,t10k}-{images-idx3,labels-idx1}-ubyte`, plain or `.gz`), read when tfds'
        fashion_mnist is not prepared in data_dir and download is False; '' = IDX_DIR_DEFAULT
        (where Debian's `dataset-fashion-mnist` package installs them).
      batch_size: global training batch (all processes); divisible by the process count.
      eval_batch_size: global evaluation batch.
      num_train / num_test: sizes of `train_split` / 'test'; -1 derives them from the known
        dataset sizes (set them for splits like 'train[:90%]' and under tfds mock_data).
      augment: one of AUGMENTS: 'none', 'crop_flip' (pad + random crop + flip, SPEC 1.7: the
        authors' code), 'shift_flip' (random shifts of up to 10% of the size + flip, ASCL §4.1's
        wording after Pang et al. 2019) or 'simclr' (SPEC 3.5).
      num_views: 1, or 2 independent augmentations of each image (`image` gains a view axis).
      crop_padding: pixels of padding for 'crop_flip' (4 for CIFAR, 1 for the 8x8 digits, 2 for
        Fashion-MNIST, whose garments fill the 28x28 frame: 37% of the training images have ink in
        the first or last column, so a 4-pixel shift would cut them).
      flip: horizontal flips in 'crop_flip' / 'simclr' (True for CIFAR; False for digits, where
        mirrored digits mislead, and for Fashion-MNIST, whose shoes all point one way: 99.7% of
        the sneakers, 100% of the ankle boots, 93% of the sandals are closer to their class mean
        than their mirror images are, so flips would train on poses the test set lacks).
      train_split: tfds split string, e.g. 'train' or 'train[:45000]' (ACL 45k/5k).
      label_fraction: 0.0 (no labelled split), or the fraction of `train_split` that is labelled
        (0.01, 0.1 in ACL semi-supervised, SPEC 3.7).
      drop_remainder: False (default, as the authors' loaders without `drop_last`: ACL's, ASCL's
        two-view loader, SPEC 1.7, 3.5): an epoch is ceil(pool / batch_size) steps and its last,
        smaller batch is trained on (padded to a multiple of the device count, with a `mask` that
        keeps the padded rows out of every loss, metric and BN statistic); True: pool // batch_size
        steps, the incomplete batch skipped (ASCL's single-view `load_data(drop_last=True)`).
      test_order: one of TEST_ORDERS: 'tfds' (the stored order) or 'original' (the test split
        sorted by the index in tfds' 'id', 'test_00042' -> 42: CIFAR's file order, which the
        authors' torchvision loaders read; "the first 1000 test images" is then their subset).
        The embedded digits split has one order; both values give it.
      val_examples: 0 (no held-out split), or the size of a validation split held out of training:
        the last val_examples of the first num_train examples of `train_split` (deterministic, the
        same for any process count; the training pool is the first num_train - val_examples), used
        by `eval.select_on='val'` (`ascl_jax.data.load_val_arrays`).

    `resolve_data` also accepts None for data_dir, num_train, num_test, crop_padding, flip and
    label_fraction, and -1 for crop_padding, all meaning the default.
    """
    _choice(name, DATASETS, "data.name")
    digits = name == "digits"
    cifar = name in ("cifar10", "cifar100")
    return ml_collections.ConfigDict(
        dict(
            name=name,
            data_dir="",
            batch_size=128,
            eval_batch_size=256 if digits else 500,
            num_train=-1,
            num_test=-1,  # -1: the dataset's full split sizes
            augment="crop_flip",
            num_views=1,
            crop_padding={"digits": 1, "fashion_mnist": 2}.get(name, 4),
            flip=cifar,
            train_split="train",
            label_fraction=0.0,
            drop_remainder=False,
            val_examples=0,
            download=False,
            idx_dir="",
            test_order="tfds",
        )
    )


# Model fields that base_config() leaves out (a config may set them): absent means these.
_MODEL_OPTIONAL = dict(proj_hidden=200, mlp_dim=None, mlp_layers=3, conv_init=None, cnn_padding="auto")


def model_defaults(*, optional: bool = True) -> ml_collections.ConfigDict:
    """The model section (`config.model`) with its defaults.

    Fields: arch (ARCHS); head (HEADS); proj_dim (p1/p2 output width); bn (BN_TYPES);
    bn_momentum (Flax convention, 0.9 = PyTorch 0.1); bn_running_var (BN_RUNNING_VARS: every BN
    layer, heads included, updates its running variance with the batch variance times n / (n - 1),
    n = rows x H x W, as PyTorch ('unbiased', default), or with the biased batch variance, as Flax
    ('biased')); normalization (NORMALIZATIONS: whose per-channel mean/std the model subtracts
    first; 'none' here, the dataset's name in a run).
    With `optional`: proj_hidden (p2 hidden width), mlp_dim (acl_mlp width, None = encoder
    width), mlp_layers (MLP_LAYERS, acl_mlp), conv_init (None = the architecture's reference
    init, else CONV_INITS), cnn_padding (CNN_PADDINGS, cnn only).
    """
    m = dict(
        arch="cnn",
        head="identity",
        proj_dim=128,
        bn="single",
        bn_momentum=0.9,
        bn_running_var="unbiased",
        normalization="none",
        dtype="float32",
    )
    if optional:
        m.update(_MODEL_OPTIONAL)
    return ml_collections.ConfigDict(m)


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults (the embedded digits dataset, a small CNN, Leaked-ASCL)."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.method = "ascl"

    c.data = data_defaults("digits")
    c.model = model_defaults(optional=False)
    c.model.normalization = "digits"
    # The training attack (PGD Linf). ASCL/AT: CE, uniform start, model in train mode (SPEC 1.6).
    c.attack = ml_collections.ConfigDict(
        dict(
            eps=8 / 255,
            step_size=2 / 255,
            num_steps=10,
            random_start=True,
            init="uniform",
            clip_start=True,
            bn_mode="train",
        )
    )
    c.loss = ml_collections.ConfigDict(
        dict(
            # AT / ASCL: L = nat_ce_weight*CE(nat) + adv_ce_weight*CE(adv)
            #              + scl_weight*L_SCL + vat_weight*L_VAT
            nat_ce_weight=1.0,
            adv_ce_weight=1.0,
            scl_weight=1.0,
            vat_weight=2.0,
            vat_reduction="mean",  # authors' KLDivLoss(reduction='mean') = /(N*C); 'batchmean' = paper Eq. 5
            strategy="leaked",
            similarity="cosine",
            temperature=0.07,
            normalize=False,
            always_pull_own_view=False,
            feature="z",  # 'z' (penultimate, paper) or 'proj' (through the projection head)
            two_views=False,  # authors' ascl_pgd_2trans: two augmentations, 4b contrastive rows
            # ASCL's training loop (mytrain.py) runs train-mode forwards after each optimizer step
            # (accuracy logging) that update the BN running statistics: 0 = none; 1 = the natural
            # batch; 2 (authors') = the natural batch, then the step's adversarial batch, at the
            # updated parameters. Read by methods 'ascl' and 'ascl_trades' only (see steps.ascl_step).
            bn_extra_updates=2,
            trades_beta=6.0,
            # method 'supcon': L2-normalise the features before SupCon (SupConResNet); False: the raw
            # features, as ASCL's scl_nat_2trans (Table 6 orgSCL, SPEC 2).
            supcon_normalize=True,
            # method 'ascl_trades' (authors' ascl.py): its TRADES term sum_i KL(p_nat || p_adv) / b
            # ('batchmean', ascl_trades) or / (b*C) ('mean', the authors' ascl_trades_2trans).
            trades_reduction="batchmean",
            # ACL: DS loss = l_std + acl_alpha * l_adv (paper), divided by (1 + acl_alpha) when
            # acl_average (the code averages the two terms, SPEC 3.4). a2s / ds route the adversarial
            # view through the 'adv' BN set of model.bn='dual'; with bn='single' both views share one
            # BN (ACL Table 4's SingleBN column).
            acl_variant="ds",
            acl_temperature=0.5,
            acl_alpha=1.0,
            acl_average=True,
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adam",
            learning_rate=1e-3,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
            schedule="piecewise",
            decay_epochs=(),
            decay_factors=(),
            warmup_epochs=0,
            final_lr=1e-6,
            lars_eta=0.001,
            num_epochs=10,
        )
    )
    # Fine-tuning / linear evaluation from a pre-trained workdir (ACL Tables 4, 5).
    # torch_checkpoint: a PyTorch checkpoint file (.pt/.pth: a state_dict, or a dict holding one under
    # 'state_dict' / 'model' / ...; 'module.' prefixes allowed) in the layout of model.arch
    # (ascl_jax.torchio.layout, docs/torch.md). Fine-tuning / linear_eval start from its encoder (its
    # init.bn_branch set when it has ACL's dual BN and model.bn='single'), instead of init.workdir's;
    # --mode=evaluate with it set evaluates the checkpoint (encoder, head, classifier). '' = none.
    c.init = ml_collections.ConfigDict(
        dict(
            workdir="",
            torch_checkpoint="",
            bn_branch="adv",
            reset_classifier=True,
            linear_mode="standard",
        )
    )
    c.eval = ml_collections.ConfigDict(
        dict(
            attacks=("clean", "pgd"),
            eps=8 / 255,
            step_size=2 / 255,
            pgd_steps=20,
            pgd_restarts=1,
            mpgd_steps=20,
            autoattack="none",
            autoattack_attacks=(),  # the components of autoattack='custom' (AUTOATTACK_COMPONENTS)
            autoattack_examples=1000,
            num_examples=-1,
            eps_sweep=(),
            bn_branch="clean",  # which BN set a dual-BN model is evaluated with
            sanity=True,  # gradient-masking checks (eps sweep, more steps, Square vs white-box)
            norm="Linf",
            checkpoint="last",
            # Checkpoint selection (ascl_jax.train.selection): 'last' evaluates the final state;
            # 'best' keeps (workdir/best_checkpoint) and evaluates as the headline the state of
            # highest select_metric ('robust': accuracy under PGD with config.attack's eps /
            # step_size / num_steps, eval-mode BN, the ASCL authors' model_best.pt; 'clean': natural
            # accuracy, ACL's semi-supervised teacher), measured every select_every epochs (and at
            # the last step) on select_examples (-1: all) of select_on ('val': the data.val_examples
            # held out of the training pool, ACL; 'test': the test split, the ASCL authors' code).
            select_on="val",
            select_metric="robust",
            select_every=1,
            select_examples=500,
            corruptions=(),
        )
    )
    c.analysis = ml_collections.ConfigDict(dict(enabled=False, num_examples=512, tsne_points=400))
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.max_checkpoints = 3
    c.progress_bar = True
    c.num_train_steps = -1  # -1: num_epochs * steps_per_epoch
    # 0: one input stream per JAX process. k > 1 in one process reads the k streams of a
    # k-process run, so the run reproduces a multi-host run's batches exactly.
    c.input_processes = 0
    # '' = the whole training split; 'labelled' / 'unlabelled' = the data.label_fraction subsets.
    c.train_subset = ""
    # ACL semi-supervised (Eq. 3, SPEC 3.7): the student's labelled sub-batch, the teacher's soft
    # pseudo-labels (.npz with 'index', 'logits'), alpha, distillation temperature T, beta.
    c.semi = ml_collections.ConfigDict(
        dict(labelled_batch=0, pseudo_labels="", alpha=0.5, temperature=1.0, beta=6.0)
    )
    return c


def _choice(value, allowed, field):
    if value not in allowed:
        raise ConfigError(f"config.{field}={value!r} is not allowed; choose one of {list(allowed)}")


def _positive(value, field, *, allow_zero=False):
    if not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{field}={value!r} must be {bound}")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _positive_int(value: Any, field: str) -> int:
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"config.{field}={value!r} is not allowed; allowed: a positive integer")
    return int(value)


def _section(cfg: Any, field: str) -> dict:
    """A config section (ConfigDict, mapping or attribute object) as a plain dict."""
    if cfg is None:
        raise ConfigError(f"config.{field} is None")
    if isinstance(cfg, ml_collections.ConfigDict):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return dict(vars(cfg))


def _merge(cfg: Any, defaults: ml_collections.ConfigDict, field: str) -> dict:
    given = _section(cfg, field)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown config.{field} field(s) {unknown}; allowed: {list(defaults)}")
    return {**defaults.to_dict(), **given}


def resolve_data(cfg: Any) -> ml_collections.ConfigDict:
    """The data section completed from `data_defaults(cfg.name)` and checked.

    cfg: a ConfigDict, mapping or attribute object holding any subset of the data fields.
    Returns a new ConfigDict with every field, the 'default' sentinels (None, -1 for
    crop_padding) replaced by the dataset's defaults, data_dir '' / num_train -1 / num_test -1 /
    label_fraction 0.0 where unset. Raises ConfigError naming the field and the allowed values.
    Dataset facts (split sizes, whether a split exists) are checked by `ascl_jax.data`.
    """
    name = _section(cfg, "data").get("name", "digits")
    _choice(name, DATASETS, "data.name")
    defaults = data_defaults(name)
    d = _merge(cfg, defaults, "data")
    _choice(d["augment"], AUGMENTS, "data.augment")
    if not _is_int(d["num_views"]) or d["num_views"] not in NUM_VIEWS:
        raise ConfigError(
            f"config.data.num_views={d['num_views']!r} is not allowed; choose one of {list(NUM_VIEWS)}"
        )
    d["num_views"] = int(d["num_views"])
    d["batch_size"] = _positive_int(d["batch_size"], "data.batch_size")
    d["eval_batch_size"] = _positive_int(d["eval_batch_size"], "data.eval_batch_size")
    if d["crop_padding"] is None or (_is_int(d["crop_padding"]) and d["crop_padding"] == -1):
        d["crop_padding"] = defaults.crop_padding
    if not _is_int(d["crop_padding"]) or d["crop_padding"] < 0:
        raise ConfigError(
            f"config.data.crop_padding={d['crop_padding']!r} is not allowed; allowed: "
            "None / -1 (the dataset's default) or an integer >= 0"
        )
    d["crop_padding"] = int(d["crop_padding"])
    if d["flip"] is None:
        d["flip"] = defaults.flip
    if not isinstance(d["flip"], (bool, np.bool_)):
        raise ConfigError(f"config.data.flip={d['flip']!r} is not allowed; allowed: None, True, False")
    d["flip"] = bool(d["flip"])
    frac = d["label_fraction"]
    if frac is not None and (
        isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0.0 <= float(frac) < 1.0
    ):
        raise ConfigError(
            f"config.data.label_fraction={frac!r} is not allowed; allowed: None / 0.0 "
            "(no labelled split) or a fraction in (0, 1), e.g. 0.01 or 0.1"
        )
    d["label_fraction"] = 0.0 if frac is None else float(frac)
    if not isinstance(d["drop_remainder"], (bool, np.bool_)):
        raise ConfigError(
            f"config.data.drop_remainder={d['drop_remainder']!r} is not allowed; allowed: True, False"
        )
    d["drop_remainder"] = bool(d["drop_remainder"])
    _choice(d["test_order"], TEST_ORDERS, "data.test_order")
    if d["test_order"] == "original" and name not in ORIGINAL_ORDER_DATASETS:
        raise ConfigError(
            f"config.data.test_order='original' is not allowed for config.data.name={name!r}: the "
            f"original (file) order is known for {list(ORIGINAL_ORDER_DATASETS)}; use "
            "data.test_order='tfds'"
        )
    split = d["train_split"]
    if not isinstance(split, str) or not split.strip():
        raise ConfigError(
            f"config.data.train_split={split!r} is not allowed; allowed: a tfds split "
            "string such as 'train' or 'train[:45000]'"
        )
    d["train_split"] = split.strip()
    for field in ("num_train", "num_test"):
        value = d[field]
        if value is None or (_is_int(value) and value == -1):
            d[field] = -1
        else:
            d[field] = _positive_int(value, f"data.{field}")
    d["data_dir"] = str(d["data_dir"]) if d["data_dir"] else ""
    if not isinstance(d["download"], (bool, np.bool_)):
        raise ConfigError(f"config.data.download={d['download']!r} is not allowed; allowed: True, False")
    d["download"] = bool(d["download"])
    if not isinstance(d["idx_dir"], str):
        raise ConfigError(
            f"config.data.idx_dir={d['idx_dir']!r} is not allowed; allowed: a folder path, or '' "
            f"for {IDX_DIR_DEFAULT!r}"
        )
    return ml_collections.ConfigDict(d)


def parse_corruptions(items: Any) -> tuple[tuple[str, int], ...]:
    """`eval.corruptions` as (corruption, severity) pairs in CORRUPTIONS x CORRUPTION_SEVERITIES order.

    items: a tuple of 'all' (every corruption and severity), corruption names (all 5 severities)
    or 'name:severity' strings; () = none. Duplicates are merged. Raises ConfigError naming
    eval.corruptions and listing the allowed names for anything else."""
    if isinstance(items, str):
        items = (items,)
    chosen: set[tuple[str, int]] = set()
    for item in items:
        name, sep, sev = str(item).strip().partition(":")
        if name == "all" and not sep:
            chosen.update((c, s) for c in CORRUPTIONS for s in CORRUPTION_SEVERITIES)
            continue
        if name not in CORRUPTIONS or (sep and sev.strip() not in [str(s) for s in CORRUPTION_SEVERITIES]):
            raise ConfigError(
                f"config.eval.corruptions item {item!r} is not allowed; allowed: 'all', a corruption "
                f"name (all severities) or 'name:severity' with severity in "
                f"{list(CORRUPTION_SEVERITIES)}; the names are {list(CORRUPTIONS)}"
            )
        sevs = [int(sev)] if sep else CORRUPTION_SEVERITIES
        chosen.update((name, s) for s in sevs)
    return tuple(sorted(chosen, key=lambda cs: (CORRUPTIONS.index(cs[0]), cs[1])))


def resolve_model(cfg: Any) -> ml_collections.ConfigDict:
    """The model section completed from `model_defaults()` and checked.

    cfg: a ConfigDict, mapping or attribute object holding any subset of the model fields.
    Returns a new ConfigDict with every field. Raises ConfigError naming the field and the
    allowed values.
    """
    m = _merge(cfg, model_defaults(), "model")
    _choice(m["arch"], ARCHS, "model.arch")
    _choice(m["head"], HEADS, "model.head")
    _choice(m["bn"], BN_TYPES, "model.bn")
    _choice(m["normalization"], NORMALIZATIONS, "model.normalization")
    _choice(m["bn_running_var"], BN_RUNNING_VARS, "model.bn_running_var")
    _choice(m["dtype"], DTYPES, "model.dtype")
    if m["conv_init"] is not None and m["conv_init"] not in CONV_INITS:
        raise ConfigError(
            f"config.model.conv_init={m['conv_init']!r} is not allowed; choose None "
            f"(the architecture's reference init) or one of {list(CONV_INITS)}"
        )
    _choice(m["cnn_padding"], CNN_PADDINGS, "model.cnn_padding")
    m["proj_dim"] = _positive_int(m["proj_dim"], "model.proj_dim")
    m["proj_hidden"] = _positive_int(m["proj_hidden"], "model.proj_hidden")
    if m["mlp_dim"] is not None:
        m["mlp_dim"] = _positive_int(m["mlp_dim"], "model.mlp_dim")
    if not _is_int(m["mlp_layers"]) or m["mlp_layers"] not in MLP_LAYERS:
        raise ConfigError(
            f"config.model.mlp_layers={m['mlp_layers']!r} is not allowed; choose one of {list(MLP_LAYERS)}"
        )
    m["mlp_layers"] = int(m["mlp_layers"])
    m["bn_momentum"] = float(m["bn_momentum"])
    if not 0.0 <= m["bn_momentum"] < 1.0:
        raise ConfigError(
            f"config.model.bn_momentum={m['bn_momentum']!r} must lie in [0, 1) (Flax "
            "convention, 0.9 = PyTorch 0.1)"
        )
    return ml_collections.ConfigDict(m)


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every enumerated field and numeric range; returns the config unchanged."""
    _choice(c.method, METHODS, "method")
    resolve_data(c.data)
    resolve_model(c.model)
    _choice(c.attack.bn_mode, BN_MODES, "attack.bn_mode")
    _choice(c.attack.init, ATTACK_INITS, "attack.init")
    if not 0 <= c.attack.eps <= 1:
        raise ConfigError(f"config.attack.eps={c.attack.eps!r} must lie in [0, 1]")
    _positive(c.attack.step_size, "attack.step_size", allow_zero=True)
    _positive(c.attack.num_steps, "attack.num_steps", allow_zero=True)
    _choice(c.loss.strategy, STRATEGIES, "loss.strategy")
    _choice(c.loss.similarity, SIMILARITIES, "loss.similarity")
    _choice(c.loss.feature, LOSS_FEATURES, "loss.feature")
    _choice(c.loss.vat_reduction, VAT_REDUCTIONS, "loss.vat_reduction")
    _choice(c.loss.get("trades_reduction", "batchmean"), TRADES_REDUCTIONS, "loss.trades_reduction")
    _choice(c.loss.acl_variant, ACL_VARIANTS, "loss.acl_variant")
    _positive(c.loss.temperature, "loss.temperature")
    _positive(c.loss.acl_temperature, "loss.acl_temperature")
    extra = c.loss.get("bn_extra_updates", 0)
    if not _is_int(extra) or extra not in (0, 1, 2):
        raise ConfigError(
            f"config.loss.bn_extra_updates={extra!r} is not allowed; choose one of [0, 1, 2] "
            "(train-mode forwards after each ASCL step: none, natural, natural then adversarial)"
        )
    _choice(c.optim.name, OPTIMIZERS, "optim.name")
    _choice(c.optim.schedule, SCHEDULES, "optim.schedule")
    _positive(c.optim.learning_rate, "optim.learning_rate")
    _positive(c.optim.num_epochs, "optim.num_epochs")
    if len(c.optim.decay_epochs) != len(c.optim.decay_factors):
        raise ConfigError(
            "config.optim.decay_epochs and config.optim.decay_factors must have the "
            f"same length, got {tuple(c.optim.decay_epochs)} and "
            f"{tuple(c.optim.decay_factors)}"
        )
    _choice(c.init.bn_branch, BN_BRANCHES, "init.bn_branch")
    _choice(c.init.linear_mode, LINEAR_EVAL_MODES, "init.linear_mode")
    for a in c.eval.attacks:
        _choice(a, EVAL_ATTACKS, "eval.attacks[]")
    _choice(c.eval.autoattack, AUTOATTACK_VERSIONS, "eval.autoattack")
    if c.eval.autoattack == "rand":
        raise ConfigError(
            "config.eval.autoattack='rand' is not allowed: it is AutoAttack for randomised defences "
            "(EoT over 20 forward passes), and the trainer's models are deterministic in eval mode; "
            f"choose one of {[v for v in AUTOATTACK_VERSIONS if v != 'rand']}"
        )
    _choice(c.eval.bn_branch, BN_BRANCHES, "eval.bn_branch")
    _choice(c.eval.get("norm", "Linf"), NORMS, "eval.norm")
    _validate_norm(c)
    aa_attacks = tuple(c.eval.get("autoattack_attacks", ()))
    for a in aa_attacks:
        _choice(a, AUTOATTACK_COMPONENTS, "eval.autoattack_attacks[]")
    if c.eval.autoattack == "custom" and not aa_attacks:
        raise ConfigError(
            "config.eval.autoattack='custom' needs config.eval.autoattack_attacks, a list from "
            f"{AUTOATTACK_COMPONENTS}"
        )
    if c.eval.autoattack not in ("custom", "none") and aa_attacks:
        raise ConfigError(
            f"config.eval.autoattack_attacks={aa_attacks!r} is only used with "
            f"config.eval.autoattack='custom' (got {c.eval.autoattack!r})"
        )
    _choice(c.eval.get("checkpoint", "last"), EVAL_CHECKPOINTS, "eval.checkpoint")
    _choice(c.eval.get("select_on", "val"), SELECT_ON, "eval.select_on")
    _validate_selection(c)
    if parse_corruptions(c.eval.get("corruptions", ())):
        if c.data.name != "cifar10":
            raise ConfigError(
                f"config.eval.corruptions are CIFAR-10-C images (32x32x3, CIFAR-10's classes); "
                f"config.data.name={c.data.name!r} must be 'cifar10'"
            )
        if "clean" not in c.eval.attacks:
            raise ConfigError(
                "config.eval.corruptions needs 'clean' in config.eval.attacks (the evaluation they "
                f"run with); got eval.attacks={tuple(c.eval.attacks)}"
            )
    _choice(c.train_subset, TRAIN_SUBSETS, "train_subset")
    if c.method == "semi_student":
        if not 0 < c.semi.labelled_batch < c.data.batch_size:
            raise ConfigError(
                f"config.semi.labelled_batch={c.semi.labelled_batch!r} must lie in "
                f"(0, data.batch_size={c.data.batch_size})"
            )
        if not c.data.label_fraction:
            raise ConfigError("config.method='semi_student' needs config.data.label_fraction")
    torch_ckpt = c.init.get("torch_checkpoint", "")
    # a local file is checked here; a URL (gs://, s3://) by train.setup.check_torch_checkpoint
    if torch_ckpt and not _URL.match(torch_ckpt) and not os.path.isfile(torch_ckpt):
        raise ConfigError(f"config.init.torch_checkpoint={torch_ckpt!r} is not a file")
    if torch_ckpt and c.init.workdir:
        raise ConfigError(
            "config.init.workdir and config.init.torch_checkpoint are both set: start from one of them"
        )
    if c.method in ("trades_finetune", "linear_eval") and not (c.init.workdir or torch_ckpt):
        raise ConfigError(
            f"config.method={c.method!r} needs config.init.workdir (the workdir of a "
            "pre-training run, e.g. ACL) or config.init.torch_checkpoint (a PyTorch checkpoint) "
            "to start from"
        )
    if c.method == "supcon" and c.data.num_views != 2:
        raise ConfigError("config.method='supcon' needs config.data.num_views=2 (two augmentations)")
    if c.method == "acl_pretrain" and c.data.num_views != 2:
        raise ConfigError("config.method='acl_pretrain' needs config.data.num_views=2 (two views)")
    if c.method in ("ascl", "ascl_trades") and c.loss.two_views and c.data.num_views != 2:
        raise ConfigError("config.loss.two_views=True needs config.data.num_views=2")
    return c


def max_eval_eps(norm: str, dataset: str) -> float:
    """The largest eval.eps under `norm` for `dataset`'s images in [0, 1]^D: the box's diameter
    (1 for Linf, sqrt(D) for L2, D for L1; D = H * W * C of IMAGE_SHAPES)."""
    d = int(np.prod(IMAGE_SHAPES[dataset]))
    return {"Linf": 1.0, "L2": float(np.sqrt(d)), "L1": float(d)}[norm]


def _validate_norm(c: ml_collections.ConfigDict) -> None:
    """eval.norm against what runs under it: PGD / mPGD (and the analysis' PGD latents) exist for
    Linf and L2 only; eval.eps in (0, the box's diameter under eval.norm]."""
    norm = c.eval.get("norm", "Linf")
    if norm not in ("Linf", "L2"):
        pgd = [a for a in c.eval.attacks if a in ("pgd", "mpgd")]
        if pgd:
            raise ConfigError(
                f"config.eval.norm={norm!r} with {pgd} in config.eval.attacks is not allowed: PGD and "
                "mPGD run for eval.norm 'Linf' and 'L2'; for L1 use 'autoattack' (L1-APGD) only"
            )
        if c.analysis.get("enabled", False):
            raise ConfigError(
                f"config.analysis.enabled=True with config.eval.norm={norm!r} is not allowed: the "
                "analysis attacks with PGD, which runs for eval.norm 'Linf' and 'L2'"
            )
    hi = max_eval_eps(norm, c.data.name)
    eps = c.eval.eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps <= hi * (1 + 1e-9):
        raise ConfigError(
            f"config.eval.eps={eps!r} must lie in (0, {hi:g}] for config.eval.norm={norm!r} and "
            f"config.data.name={c.data.name!r} (images in [0, 1]^{IMAGE_SHAPES[c.data.name]}: "
            f"{'the box' if norm == 'Linf' else f'the {norm} diameter of the box'})"
        )


def _validate_selection(c: ml_collections.ConfigDict) -> None:
    """eval.select_* and data.val_examples, and their cross-field rules (eval.checkpoint='best'
    needs a selection split and at least one selection per run, and a trained classifier)."""
    e = c.eval
    _choice(e.get("select_metric", "robust"), SELECT_METRICS, "eval.select_metric")
    every = e.get("select_every", 1)
    _positive_int(every, "eval.select_every")
    n = e.get("select_examples", 500)
    if not _is_int(n) or not (n > 0 or n == -1):
        raise ConfigError(
            f"config.eval.select_examples={n!r} is not allowed; allowed: a positive integer or -1 (all)"
        )
    val = c.data.get("val_examples", 0)
    if not _is_int(val) or val < 0:
        raise ConfigError(
            f"config.data.val_examples={val!r} is not allowed; allowed: an integer >= 0 (0: no "
            "held-out split)"
        )
    if e.get("checkpoint", "last") != "best":
        return
    if e.get("select_on", "val") == "val" and val == 0:
        raise ConfigError(
            "config.eval.checkpoint='best' with config.eval.select_on='val' needs a held-out split: "
            "config.data.val_examples=0; set data.val_examples > 0 (taken out of the training pool) "
            "or eval.select_on='test'"
        )
    if c.num_train_steps <= 0 and every > c.optim.num_epochs:
        raise ConfigError(
            f"config.eval.checkpoint='best' with config.eval.select_every={every} epochs exceeds "
            f"config.optim.num_epochs={c.optim.num_epochs}; use select_every <= num_epochs"
        )
    if c.method in ("acl_pretrain", "semi_supervised"):
        raise ConfigError(
            f"config.eval.checkpoint='best' is not allowed for config.method={c.method!r}: "
            + (
                "the pre-trained encoder has no trained classifier to select on; select the "
                "fine-tuning run (ACL §3)"
                if c.method == "acl_pretrain"
                else "set eval.checkpoint in the stage configs (config.stages.<name>.eval)"
            )
        )


def parse_arg(arg: str | None, **defaults) -> dict:
    """Parses the `:arg` of `--config configs/x.py:smoke,row=leaked,dataset=cifar100`.

    Bare words are flags (True); `key=value` pairs are cast to the type of the default. An
    unknown key raises ConfigError listing the known keys."""
    out = dict(defaults, smoke=False)
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in out:
            raise ConfigError(f"config argument {key!r} is not known; known: {sorted(out)}")
        if not _:
            out[key] = True
        elif isinstance(out[key], bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(out[key], (int, float)) and not isinstance(out[key], bool):
            out[key] = type(out[key])(value)
        else:
            out[key] = value
    return out


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config that `--config configs/<name>.py:arg` gives: `get_config(arg)` of the file.

    name: a config name ('ascl_table2', a file of CONFIGS_DIR) or a path to a config file
      ('configs/ascl_table2.py'), either optionally followed by ':arg'
      ('ascl_table2:row=adv,smoke'); then `arg` must be None.
    arg: the config argument (see `parse_arg`); None calls `get_config()` as absl's
      config_flags does for a path without ':'.
    """
    if ":" in name:
        name, _, tail = name.partition(":")
        if arg is not None:
            raise ConfigError(f"config {name!r}: an argument is given twice ({tail!r} and {arg!r})")
        arg = tail
    path = pathlib.Path(name)
    if path.suffix != ".py":
        path = CONFIGS_DIR / f"{name}.py"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob("*.py"))
        raise ConfigError(
            f"config file {str(path)!r} does not exist; the configs in {str(CONFIGS_DIR)!r} are {known}"
        )
    spec = importlib.util.spec_from_file_location(f"ascl_jax_configs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


PAPERS = ("ascl", "acl")  # whose evaluation protocol `cifar_base` sets
DECAY_CONVENTIONS = ("code", "paper")  # `multistep_epochs`: the authors' MultiStepLR or the text


def cifar_base(
    dataset: str = "cifar10", arch: str = "resnet20", paper: str = "ascl"
) -> ml_collections.ConfigDict:
    """The papers' CIFAR setting: batch 128, RandomCrop(32, pad 4) + flip (SPEC 1.7, 3.6), inputs in
    [0, 1], the test split in CIFAR's original order (`data.test_order='original'`), and the
    training attack and evaluation protocol of `paper` (one of PAPERS):

    'ascl' (ASCL §4.1 "Attack Setting" / "Generating Adversarial Examples", appendix §6): training
      PGD-10 at eps 8/255, step 2/255 (CIFAR-100: eps 0.01, step 0.001); evaluation PGD-250 and
      mPGD-250 at the same eps / step on the full test set, AutoAttack standard on the first 1000
      test images; headline checkpoint: the best PGD robust accuracy on the test set, measured every
      epoch (the authors' 02a_adversarial_training.py keeps `model_best.pt`, SPEC 1.6).
    'acl' (ACL §3 "Experimental settings": PGD hyperparameters of Chen et al. 2020, the same on
      CIFAR-10 and CIFAR-100; SPEC 3.6): training PGD-10 at 8/255, 2/255; evaluation PGD-20 at 8/255,
      2/255 on the full test set, no AutoAttack; checkpoint 'last' here (pre-training has no
      classifier); fine-tuning configs select with `acl_select`.
    """
    _choice(paper, PAPERS, "cifar_base(paper)")
    c = base_config()
    c.data.name = dataset
    c.data.batch_size = 128
    c.data.eval_batch_size = 500
    c.data.augment = "crop_flip"
    c.data.crop_padding = 4
    c.data.flip = True
    c.data.test_order = "original"
    c.model.arch = arch
    c.model.normalization = dataset
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.attack.update(dict(eps=8 / 255, step_size=2 / 255, num_steps=10))
    c.eval.update(dict(eps=8 / 255, step_size=2 / 255, num_examples=-1))
    if paper == "ascl":
        c.eval.update(
            dict(
                attacks=("clean", "pgd", "mpgd", "autoattack"),
                pgd_steps=250,
                mpgd_steps=250,
                autoattack="standard",
                autoattack_examples=1000,
                checkpoint="best",
                select_on="test",
                select_metric="robust",
                select_every=1,
                select_examples=10_000,  # the authors' full test loader
            )
        )
        if dataset == "cifar100":
            c.attack.eps, c.attack.step_size = 0.01, 0.001
            c.eval.eps, c.eval.step_size = 0.01, 0.001
    else:
        c.eval.update(dict(attacks=("clean", "pgd"), pgd_steps=20, autoattack="none", checkpoint="last"))
    return c


def acl_select(c: ml_collections.ConfigDict, metric: str = "robust") -> ml_collections.ConfigDict:
    """ACL's model selection (ACL §3: "The fine-tuned models are selected based on the held-out
    validation RA"; SPEC 3.6-3.7): the 5000-image validation split (`split/valid_idx_std.npy`) is held
    out of the 50k training images (45k train), measured every epoch; `metric` 'robust' (RA,
    `ata_best_model.pt`) or 'clean' (TA, `best_model.pt`: the semi-supervised teacher)."""
    _choice(metric, SELECT_METRICS, "eval.select_metric")
    c.data.train_split = "train"
    c.data.val_examples = 5000
    c.eval.update(
        dict(checkpoint="best", select_on="val", select_metric=metric, select_every=1, select_examples=5000)
    )
    return c


def multistep_epochs(milestones, convention: str = "code") -> tuple[int, ...]:
    """`optim.decay_epochs` (0-indexed epochs the new lr starts at) of a PyTorch MultiStepLR.

    convention 'code' (DECAY_CONVENTIONS): ACL's loops call `scheduler.step()` at the START of each
    1-indexed epoch (train_trades.py `for epoch in range(1, epochs + 1)`, SPEC 3.6), so milestone m
    lowers the lr from 0-indexed epoch m - 1 on: milestones (15, 20) give 14 epochs at 0.1.
    'paper': from epoch m on (ACL §3 "decaying by 10 times at epoch 15 and 20" read literally).
    """
    _choice(convention, DECAY_CONVENTIONS, "decay")
    shift = 1 if convention == "code" else 0
    return tuple(int(m) - shift for m in milestones)


def resnet20_adam(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ASCL ResNet-20: Adam 1e-3/1e-4/1e-5/1e-6 at epochs 0/80/120/160, 200 epochs."""
    c.optim.update(
        dict(
            name="adam",
            learning_rate=1e-3,
            schedule="piecewise",
            decay_epochs=(80, 120, 160),
            decay_factors=(0.1, 0.01, 0.001),
            num_epochs=200,
            weight_decay=0.0,
        )
    )
    return c


def sgd_200(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ASCL ResNet-18 / WRN-34-10: SGD 0.1 (momentum 0.9, wd 5e-4), x0.1 at 100 and 150, 200 epochs."""
    c.optim.update(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="piecewise",
            decay_epochs=(100, 150),
            decay_factors=(0.1, 0.01),
            num_epochs=200,
        )
    )
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps of the same method on tiny shapes (for tests and quick checks)."""
    c.name = c.name + ":smoke"
    if c.data.name != "digits":
        c.data.num_train, c.data.num_test = 64, 32
    c.data.batch_size, c.data.eval_batch_size = 16, 16
    c.model.arch = "tiny"
    c.attack.num_steps = min(c.attack.num_steps, 2)
    c.optim.num_epochs = 1
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.eval.pgd_steps = 2
    c.eval.mpgd_steps = 2
    c.eval.num_examples = 32
    if c.eval.autoattack != "none":  # a custom list, labelled 'autoattack-custom' in the results
        c.eval.autoattack, c.eval.autoattack_attacks = "custom", ("apgd-ce", "apgd-t")
    c.eval.autoattack_examples = 16
    c.eval.select_examples = min(c.eval.select_examples, 16)
    if c.data.val_examples:
        c.data.val_examples = min(c.data.val_examples, 16)
    c.analysis.num_examples = 32
    c.analysis.tsne_points = 32
    c.progress_bar = False
    return c
