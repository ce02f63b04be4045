"""The config schema: every config file and documented `:arg` loads and validates; `config.load`;
partial sections resolve from the one set of defaults; other modules' enumerations agree with it."""

import itertools
import pathlib

import ml_collections
import pytest

from ascl_jax import config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _grid(**axes):
    """Every combination of the documented values, as ':arg' strings."""
    keys = list(axes)
    return [
        ",".join(f"{k}={v}" for k, v in zip(keys, values) if v != "")
        for values in itertools.product(*axes.values())
    ]


# Every config file and the `:arg` values its docstring / the README documents.
DOCUMENTED_ARGS = {
    "default": [""],
    "ascl_table2": _grid(row=("adv", "trades", "ours"), dataset=("cifar10", "cifar100")),
    "ascl_table3": _grid(arch=("resnet18", "wrn34_10")),
    "ascl_table4": _grid(strategy=("global", "hard", "soft", "leaked")),
    "ascl_table5": _grid(head=("identity", "p1", "p2"), strategy=("global", "leaked")),
    "ascl_table6": _grid(
        row=("orgscl", "orgscl_ce", "adv", "adv_scl", "adv_vat", "adv_vat_scl"), arch=("resnet18", "wrn34_10")
    ),
    "ascl_table7": ["", "scl=2.0,vat=0.0", "scl=0.5,vat=1.0"],
    "ascl_released": _grid(arch=("resnet18", "wrn34_10")),
    "acl_pretrain": _grid(
        variant=("s2s", "a2a", "a2s", "ds"), bn=("", "single", "dual"), dataset=("cifar10", "cifar100")
    ),
    "acl_finetune": _grid(
        pretrained=("runs/acl_ds",),
        branch=("adv", "clean"),
        dataset=("cifar10", "cifar100"),
        epochs=(25, 100),
    )
    + ["random_init=True"],
    "acl_linear": _grid(
        pretrained=("runs/acl_ds",), branch=("adv", "clean"), mode=("standard", "adversarial")
    ),
    "acl_semisup": _grid(fraction=(0.01, 0.1), dataset=("cifar10", "cifar100")),
    "fmnist": _grid(
        method=("nat", "adv", "trades", "ascl_global", "ascl_hard", "ascl_soft", "ascl_leaked", "acl_ds"),
        seed=(0, 1),
    )
    + ["method=acl_ds_trades,pretrained=runs/acl_ds"],
}
CASES = [
    (name, arg + tail)
    for name, args in DOCUMENTED_ARGS.items()
    for arg in args
    for tail in ("", ",smoke" if arg else "smoke")
]


def _validate_all(c):
    config.validate(c)
    for stage in c.stages.values() if "stages" in c else ():
        if stage.method in ("trades_finetune", "linear_eval") and not stage.init.workdir:
            stage.init.workdir = "/nonexistent"  # the semi-supervised routine sets it
        config.validate(stage)


def test_every_config_file_has_documented_args():
    assert sorted(DOCUMENTED_ARGS) == sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("name,arg", CASES)
def test_every_config_and_documented_arg_loads_and_validates(name, arg):
    c = config.load(name, arg)
    assert isinstance(c, ml_collections.ConfigDict) and c.name
    if c.method in ("trades_finetune", "linear_eval") and not c.init.workdir:
        c.init.workdir = "/nonexistent"
    _validate_all(c)
    assert c.name.endswith(":smoke") == ("smoke" in arg)


def test_load_by_name_path_and_colon_arg():
    by_name = config.load("ascl_table2", "row=adv,smoke")
    by_path = config.load(str(ROOT / "configs" / "ascl_table2.py"), "row=adv,smoke")
    by_colon = config.load(str(ROOT / "configs" / "ascl_table2.py") + ":row=adv,smoke")
    assert by_name.to_dict() == by_path.to_dict() == by_colon.to_dict()
    assert by_name.method == "adv" and by_name.name == "ascl_table2:adv,cifar10:smoke"
    assert config.load("default").to_dict() == config.load("default", "").to_dict()
    with pytest.raises(config.ConfigError, match="ascl_table2"):
        config.load("no_such_config")
    with pytest.raises(config.ConfigError, match="twice"):
        config.load("default:smoke", "smoke")
    with pytest.raises(config.ConfigError, match="not known"):
        config.load("ascl_table2", "rows=adv")


def test_merge_strategy_is_accepted():
    c = config.load("ascl_table4", "strategy=merge,smoke")
    assert c.loss.strategy == "merge"
    config.validate(c)


def test_partial_sections_resolve_from_the_schema_defaults():
    d = config.resolve_data(dict(name="cifar10", batch_size=64))
    assert d.to_dict() == dict(config.data_defaults("cifar10").to_dict(), batch_size=64)
    assert (d.crop_padding, d.flip, d.eval_batch_size) == (4, True, 500)
    assert config.base_config().data.to_dict() == config.data_defaults("digits").to_dict()
    sentinels = config.resolve_data(
        dict(crop_padding=-1, flip=None, num_train=None, label_fraction=None, data_dir=None)
    )
    assert sentinels.to_dict() == config.data_defaults("digits").to_dict()
    m = config.resolve_model(dict(arch="resnet20"))
    assert m.to_dict() == dict(config.model_defaults().to_dict(), arch="resnet20")
    base = config.base_config().model.to_dict()
    assert base == dict(config.model_defaults(optional=False).to_dict(), normalization="digits")
    with pytest.raises(config.ConfigError, match="shuffle_buffer"):
        config.resolve_data(dict(shuffle_buffer=2048))  # not a field (training permutes exactly)
    with pytest.raises(config.ConfigError, match=r"model.head='mlp'.*'acl_mlp'"):
        config.resolve_model(dict(head="mlp"))


def test_validate_checks_data_and_model_sections():
    c = config.base_config()
    c.data.crop_padding = -3
    with pytest.raises(config.ConfigError, match="data.crop_padding"):
        config.validate(c)
    c = config.base_config()
    c.model.normalization = "mnist"
    with pytest.raises(config.ConfigError, match="model.normalization"):
        config.validate(c)


def test_other_modules_enumerations_agree_with_the_schema():
    from ascl_jax import attacks, losses, models
    from ascl_jax.models import cnn, layers, norm

    assert models.ARCHS == config.ARCHS and models.HEADS == config.HEADS
    assert tuple(models.NORMALIZATION) == config.NORMALIZATIONS
    assert layers.CONV_INITS == config.CONV_INITS and cnn.CNN_PADDINGS == config.CNN_PADDINGS
    assert norm.BN_TYPES == config.BN_TYPES and norm.BN_BRANCHES == config.BN_BRANCHES
    assert attacks.BN_MODES == config.BN_MODES
    assert attacks.BN_BRANCHES == config.BN_BRANCHES
    assert set(attacks.INITS) == set(config.ATTACK_INITS)
    assert losses.STRATEGIES == config.STRATEGIES
    assert losses.SIMILARITIES == config.SIMILARITIES


def test_loop_switches_defaults_and_errors():
    """The three switches of the authors' loops: defaults and their checks."""
    c = config.base_config()
    assert (c.data.drop_remainder, c.model.bn_running_var, c.loss.bn_extra_updates) == (False, "unbiased", 2)
    assert config.BN_RUNNING_VARS == ("unbiased", "biased")
    with pytest.raises(config.ConfigError, match="data.drop_remainder"):
        config.resolve_data(dict(drop_remainder="yes"))
    c.model.bn_running_var = "sample"
    with pytest.raises(config.ConfigError, match=r"model.bn_running_var.*'unbiased', 'biased'"):
        config.validate(c)
    c = config.base_config()
    c.loss.bn_extra_updates = 3
    with pytest.raises(config.ConfigError, match="loss.bn_extra_updates"):
        config.validate(c)


def _refused(c, pattern):
    with pytest.raises(config.ConfigError, match=pattern):
        config.validate(c)


def test_eval_norm_eps_and_autoattack_version_are_checked_before_training():
    """What evaluation would refuse after training is a ConfigError up front: PGD / mPGD / the
    analysis under L1, eval.eps beyond the box's diameter (digits 8x8x1: L2 8, L1 64), 'rand'."""
    from ascl_jax.evaluation import engine

    c = config.base_config()
    c.eval.norm = "L1"
    _refused(c, r"eval.norm='L1' with \['pgd'\] in config.eval.attacks.*'Linf' and 'L2'")
    c.eval.attacks = ("clean", "autoattack")
    c.eval.autoattack, c.eval.eps = "standard", 64.0
    config.validate(c)
    c.eval.eps = 64.5
    _refused(c, r"eval.eps=64.5 must lie in \(0, 64\] for config.eval.norm='L1'.*'digits'")
    c.eval.eps = 1.0
    c.analysis.enabled = True
    _refused(c, r"analysis.enabled=True with config.eval.norm='L1'")
    c = config.base_config()
    c.eval.norm, c.eval.eps = "L2", 8.0
    c.analysis.enabled = True
    config.validate(c)
    c.eval.eps = 8.01
    _refused(c, r"eval.eps=8.01 must lie in \(0, 8\] for config.eval.norm='L2'")
    c.data.name, c.model.normalization = "cifar10", "cifar10"
    config.validate(c)  # 32x32x3: L2 diameter sqrt(3072) = 55.4
    for norm, shape in (("L2", (8, 8, 1)), ("L1", (28, 28, 1)), ("Linf", (32, 32, 3))):
        name = {(8, 8, 1): "digits", (28, 28, 1): "fashion_mnist", (32, 32, 3): "cifar10"}[shape]
        assert config.IMAGE_SHAPES[name] == shape
        assert config.max_eval_eps(norm, name) == engine.max_eps(norm, shape)
    c = config.base_config()
    c.eval.eps = 0.0
    _refused(c, r"eval.eps=0.0 must lie in \(0, 1\] for config.eval.norm='Linf'")
    c = config.base_config()
    c.eval.autoattack = "rand"
    _refused(c, r"eval.autoattack='rand' is not allowed.*deterministic.*'standard', 'plus', 'custom'")


def test_original_test_order_only_where_the_order_is_known():
    for name in ("cifar10", "cifar100", "digits"):
        config.resolve_data(dict(name=name, test_order="original"))
    with pytest.raises(config.ConfigError, match=r"test_order='original'.*'fashion_mnist'.*'tfds'"):
        config.resolve_data(dict(name="fashion_mnist", test_order="original"))
    c = config.load("fmnist")
    c.data.test_order = "original"
    _refused(c, r"data.test_order='original'")
