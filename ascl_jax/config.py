"""The configuration schema: every field a run reads, its default, and its validation.

Experiment files in `configs/` are data only: each `get_config(arg)` starts from
`base_config()` and overrides fields. `validate(config)` checks every enumerated field and
the numeric ranges up front and raises `ConfigError` naming the field and the allowed values.
"""
from __future__ import annotations

import ml_collections

METHODS = ("nat", "adv", "trades", "ascl", "acl_pretrain", "trades_finetune", "linear_eval",
           "semi_student", "semi_supervised", "supcon")
TRAIN_SUBSETS = ("", "labelled", "unlabelled")
DATASETS = ("digits", "cifar10", "cifar100")
AUGMENTS = ("none", "crop_flip", "simclr")
STRATEGIES = ("global", "hard", "soft", "leaked")
SIMILARITIES = ("cosine", "dot", "neg_l1", "neg_l2", "neg_linf")
ACL_VARIANTS = ("s2s", "a2a", "a2s", "ds")
OPTIMIZERS = ("sgd", "adam", "lars")
SCHEDULES = ("constant", "piecewise", "warmup_cosine")
BN_MODES = ("train", "eval")
BN_BRANCHES = ("clean", "adv")
ATTACK_INITS = ("uniform", "normal")
LINEAR_EVAL_MODES = ("standard", "adversarial")
EVAL_ATTACKS = ("clean", "pgd", "mpgd", "autoattack")
AUTOATTACK_VERSIONS = ("none", "fast", "standard")


class ConfigError(ValueError):
    """A config field holds a value that is not allowed."""


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults (the embedded digits dataset, a small CNN, Leaked-ASCL)."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.method = "ascl"

    c.data = ml_collections.ConfigDict(dict(
        name="digits", data_dir="", batch_size=128, eval_batch_size=256,
        num_train=-1, num_test=-1,  # -1: the dataset's full split sizes
        augment="crop_flip", num_views=1, crop_padding=1, flip=False,
        train_split="train", label_fraction=0.0,
    ))
    c.model = ml_collections.ConfigDict(dict(
        arch="cnn", head="identity", proj_dim=128, bn="single", bn_momentum=0.9,
        normalization="digits",
    ))
    # The training attack (PGD Linf). ASCL/AT: CE, uniform start, model in train mode (SPEC 1.6).
    c.attack = ml_collections.ConfigDict(dict(
        eps=8 / 255, step_size=2 / 255, num_steps=10, random_start=True, init="uniform",
        clip_start=True, bn_mode="train",
    ))
    c.loss = ml_collections.ConfigDict(dict(
        # AT / ASCL: L = nat_ce_weight*CE(nat) + adv_ce_weight*CE(adv) + scl_weight*L_SCL + vat_weight*L_VAT
        nat_ce_weight=1.0, adv_ce_weight=1.0, scl_weight=1.0, vat_weight=2.0,
        vat_reduction="mean",  # authors' KLDivLoss(reduction='mean') = /(N*C); 'batchmean' = paper Eq. 5
        strategy="leaked", similarity="cosine", temperature=0.07, normalize=False,
        always_pull_own_view=False,
        feature="z",  # 'z' (penultimate, paper) or 'proj' (through the projection head)
        two_views=False,  # authors' ascl_pgd_2trans: two augmentations, 4b contrastive rows
        trades_beta=6.0,
        # ACL: DS loss = l_std + acl_alpha * l_adv (paper), divided by (1 + acl_alpha) when
        # acl_average (the code averages the two terms, SPEC 3.4).
        acl_variant="ds", acl_temperature=0.5, acl_alpha=1.0, acl_average=True,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, momentum=0.9, nesterov=False, weight_decay=0.0,
        schedule="piecewise", decay_epochs=(), decay_factors=(),
        warmup_epochs=0, final_lr=1e-6, lars_eta=0.001, num_epochs=10,
    ))
    # Fine-tuning / linear evaluation from a pre-trained workdir (ACL Tables 4, 5).
    c.init = ml_collections.ConfigDict(dict(
        workdir="", bn_branch="adv", reset_classifier=True, linear_mode="standard",
    ))
    c.eval = ml_collections.ConfigDict(dict(
        attacks=("clean", "pgd"), eps=8 / 255, step_size=2 / 255, pgd_steps=20, pgd_restarts=1,
        mpgd_steps=20, autoattack="none", autoattack_examples=1000, num_examples=-1,
        eps_sweep=(), bn_branch="clean",
        sanity=True,  # gradient-masking checks (eps sweep, more steps, Square vs white-box)  # which BN set a dual-BN model is evaluated with
    ))
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
    c.semi = ml_collections.ConfigDict(dict(labelled_batch=0, pseudo_labels="", alpha=0.5,
                                            temperature=1.0, beta=6.0))
    return c


def _choice(value, allowed, field):
    if value not in allowed:
        raise ConfigError(f"config.{field}={value!r} is not allowed; choose one of {list(allowed)}")


def _positive(value, field, *, allow_zero=False):
    if not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{field}={value!r} must be {bound}")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every enumerated field and numeric range; returns the config unchanged."""
    from ascl_jax import models  # local import: keeps config loading light

    _choice(c.method, METHODS, "method")
    _choice(c.data.name, DATASETS, "data.name")
    _choice(c.data.augment, AUGMENTS, "data.augment")
    _choice(c.data.num_views, (1, 2), "data.num_views")
    _positive(c.data.batch_size, "data.batch_size")
    _positive(c.data.eval_batch_size, "data.eval_batch_size")
    _choice(c.model.arch, models.ARCHS, "model.arch")
    _choice(c.model.head, models.HEADS, "model.head")
    _choice(c.model.bn, models.BN_TYPES, "model.bn")
    _choice(c.attack.bn_mode, BN_MODES, "attack.bn_mode")
    _choice(c.attack.init, ATTACK_INITS, "attack.init")
    if not 0 <= c.attack.eps <= 1:
        raise ConfigError(f"config.attack.eps={c.attack.eps!r} must lie in [0, 1]")
    _positive(c.attack.step_size, "attack.step_size", allow_zero=True)
    _positive(c.attack.num_steps, "attack.num_steps", allow_zero=True)
    _choice(c.loss.strategy, STRATEGIES, "loss.strategy")
    _choice(c.loss.similarity, SIMILARITIES, "loss.similarity")
    _choice(c.loss.feature, ("z", "proj"), "loss.feature")
    _choice(c.loss.vat_reduction, ("mean", "batchmean", "sum"), "loss.vat_reduction")
    _choice(c.loss.acl_variant, ACL_VARIANTS, "loss.acl_variant")
    _positive(c.loss.temperature, "loss.temperature")
    _positive(c.loss.acl_temperature, "loss.acl_temperature")
    _choice(c.optim.name, OPTIMIZERS, "optim.name")
    _choice(c.optim.schedule, SCHEDULES, "optim.schedule")
    _positive(c.optim.learning_rate, "optim.learning_rate")
    _positive(c.optim.num_epochs, "optim.num_epochs")
    if len(c.optim.decay_epochs) != len(c.optim.decay_factors):
        raise ConfigError("config.optim.decay_epochs and config.optim.decay_factors must have the "
                          f"same length, got {tuple(c.optim.decay_epochs)} and "
                          f"{tuple(c.optim.decay_factors)}")
    _choice(c.init.bn_branch, BN_BRANCHES, "init.bn_branch")
    _choice(c.init.linear_mode, LINEAR_EVAL_MODES, "init.linear_mode")
    for a in c.eval.attacks:
        _choice(a, EVAL_ATTACKS, "eval.attacks[]")
    _choice(c.eval.autoattack, AUTOATTACK_VERSIONS, "eval.autoattack")
    _choice(c.eval.bn_branch, BN_BRANCHES, "eval.bn_branch")
    if not 0 < c.eval.eps <= 1:
        raise ConfigError(f"config.eval.eps={c.eval.eps!r} must lie in (0, 1]")
    _choice(c.train_subset, TRAIN_SUBSETS, "train_subset")
    if c.method == "semi_student":
        if not 0 < c.semi.labelled_batch < c.data.batch_size:
            raise ConfigError(f"config.semi.labelled_batch={c.semi.labelled_batch!r} must lie in "
                              f"(0, data.batch_size={c.data.batch_size})")
        if not c.data.label_fraction:
            raise ConfigError("config.method='semi_student' needs config.data.label_fraction")
    if c.method in ("trades_finetune", "linear_eval") and not c.init.workdir:
        raise ConfigError(f"config.method={c.method!r} needs config.init.workdir: the workdir of a "
                          "pre-training run (e.g. ACL) to start from")
    if c.method == "supcon" and c.data.num_views != 2:
        raise ConfigError("config.method='supcon' needs config.data.num_views=2 (two augmentations)")
    if c.method == "acl_pretrain" and c.data.num_views != 2:
        raise ConfigError("config.method='acl_pretrain' needs config.data.num_views=2 (two views)")
    if c.method == "ascl" and c.loss.two_views and c.data.num_views != 2:
        raise ConfigError("config.loss.two_views=True needs config.data.num_views=2")
    if c.method == "acl_pretrain" and c.loss.acl_variant in ("a2s", "ds") and c.model.bn != "dual":
        raise ConfigError(f"config.loss.acl_variant={c.loss.acl_variant!r} uses dual batch norm: "
                          "set config.model.bn='dual'")
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
    c.optim.update(dict(name="adam", learning_rate=1e-3, schedule="piecewise",
                        decay_epochs=(80, 120, 160), decay_factors=(0.1, 0.01, 0.001),
                        num_epochs=200, weight_decay=0.0))
    return c


def sgd_200(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ASCL ResNet-18 / WRN-34-10: SGD 0.1 (momentum 0.9, wd 5e-4), x0.1 at 100 and 150, 200 epochs."""
    c.optim.update(dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                        schedule="piecewise", decay_epochs=(100, 150), decay_factors=(0.1, 0.01),
                        num_epochs=200))
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
    c.eval.autoattack = "fast" if c.eval.autoattack != "none" else "none"
    c.eval.autoattack_examples = 16
    c.analysis.num_examples = 32
    c.analysis.tsne_points = 32
    c.progress_bar = False
    return c
