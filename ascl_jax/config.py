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
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

METHODS = (
    "nat",
    "adv",
    "trades",
    "ascl",
    "acl_pretrain",
    "trades_finetune",
    "linear_eval",
    "semi_student",
    "semi_supervised",
    "supcon",
)
TRAIN_SUBSETS = ("", "labelled", "unlabelled")
# data
DATASETS = ("digits", "cifar10", "cifar100")
AUGMENTS = ("none", "crop_flip", "simclr")
NUM_VIEWS = (1, 2)
# model
ARCHS = ("cnn", "resnet20", "resnet18", "preact_resnet18", "wrn34_10", "tiny")
HEADS = ("identity", "p1", "p2", "acl_mlp")
BN_TYPES = ("single", "dual")
BN_BRANCHES = ("clean", "adv")
# BN running-variance update: PyTorch's unbiased batch variance var * n / (n - 1), or Flax's biased one.
BN_RUNNING_VARS = ("unbiased", "biased")
NORMALIZATIONS = ("cifar10", "cifar100", "imagenet", "digits", "none")  # per-dataset mean/std
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
NORMS = ("Linf", "L2", "L1")  # evaluation threat model
DTYPES = ("float32", "bfloat16")  # model compute dtype

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config field holds a value that is not allowed."""


def data_defaults(name: str = "digits") -> ml_collections.ConfigDict:
    """The data section (`config.data`) with the defaults for dataset `name`.

    Fields:
      name: one of DATASETS.
      data_dir: tfds data directory ('' : `$TFDS_DATA_DIR` or `~/tensorflow_datasets`); unused
        for digits.
      batch_size: global training batch (all processes); divisible by the process count.
      eval_batch_size: global evaluation batch.
      num_train / num_test: sizes of `train_split` / 'test'; -1 derives them from the known
        dataset sizes (set them for splits like 'train[:90%]' and under tfds mock_data).
      augment: one of AUGMENTS: 'none', 'crop_flip' (pad + random crop + flip, SPEC 1.7) or
        'simclr' (SPEC 3.5).
      num_views: 1, or 2 independent augmentations of each image (`image` gains a view axis).
      crop_padding: pixels of padding for 'crop_flip' (4 for CIFAR, 1 for the 8x8 digits).
      flip: horizontal flips in 'crop_flip' / 'simclr' (True for CIFAR; False for digits, where
        mirrored digits mislead).
      train_split: tfds split string, e.g. 'train' or 'train[:45000]' (ACL 45k/5k).
      label_fraction: 0.0 (no labelled split), or the fraction of `train_split` that is labelled
        (0.01, 0.1 in ACL semi-supervised, SPEC 3.7).
      drop_remainder: False (default, as the authors' loaders without `drop_last`: ACL's, ASCL's
        two-view loader, SPEC 1.7, 3.5): an epoch is ceil(pool / batch_size) steps and its last,
        smaller batch is trained on (padded to a multiple of the device count, with a `mask` that
        keeps the padded rows out of every loss, metric and BN statistic); True: pool // batch_size
        steps, the incomplete batch skipped (ASCL's single-view `load_data(drop_last=True)`).

    `resolve_data` also accepts None for data_dir, num_train, num_test, crop_padding, flip and
    label_fraction, and -1 for crop_padding, all meaning the default.
    """
    _choice(name, DATASETS, "data.name")
    digits = name == "digits"
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
            crop_padding=1 if digits else 4,
            flip=not digits,
            train_split="train",
            label_fraction=0.0,
            drop_remainder=False,
            val_examples=0,
            download=False,
            idx_dir="",
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
            # updated parameters. Read by method 'ascl' only (see steps.ascl_step).
            bn_extra_updates=2,
            trades_beta=6.0,
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
            select_on="val",
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
    return ml_collections.ConfigDict(d)


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
    _choice(c.eval.bn_branch, BN_BRANCHES, "eval.bn_branch")
    _choice(c.eval.get("norm", "Linf"), NORMS, "eval.norm")
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
    if c.eval.get("norm", "Linf") == "Linf" and not 0 < c.eval.eps <= 1:
        raise ConfigError(f"config.eval.eps={c.eval.eps!r} must lie in (0, 1] for eval.norm='Linf'")
    if not c.eval.eps > 0:  # L2 / L1: up to the box's diameter, checked with the image shape
        raise ConfigError(f"config.eval.eps={c.eval.eps!r} must be > 0")
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
    if torch_ckpt and not os.path.isfile(torch_ckpt):
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
    if c.method == "ascl" and c.loss.two_views and c.data.num_views != 2:
        raise ConfigError("config.loss.two_views=True needs config.data.num_views=2")
    return c


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


def cifar_base(dataset: str = "cifar10", arch: str = "resnet20") -> ml_collections.ConfigDict:
    """The papers' CIFAR setting (SPEC 4): batch 128, crop(32, pad 4)+flip, PGD-10 8/255, 2/255
    (CIFAR-100: eps 0.01, step 0.001 for ASCL), evaluation PGD-20 and AutoAttack on 1000 images."""
    c = base_config()
    c.data.name = dataset
    c.data.batch_size = 128
    c.data.eval_batch_size = 500
    c.data.augment = "crop_flip"
    c.data.crop_padding = 4
    c.data.flip = True
    c.model.arch = arch
    c.model.normalization = dataset
    c.eval.attacks = ("clean", "pgd", "mpgd", "autoattack")
    c.eval.autoattack = "standard"
    c.eval.autoattack_examples = 1000
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    if dataset == "cifar100":
        c.attack.eps, c.attack.step_size = 0.01, 0.001
        c.eval.eps, c.eval.step_size = 0.01, 0.001
    return c


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
    c.analysis.num_examples = 32
    c.analysis.tsne_points = 32
    c.progress_bar = False
    return c
