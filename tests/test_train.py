"""The training system: every method's step, 1 vs 8 devices, resume, workdir guard, NaN guard."""

import json
import os
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ascl_jax import checkpointing, parallel, train, workdir
from ascl_jax import config as config_lib
from ascl_jax.train import steps as train_steps
from ascl_jax.train.optim import make_optimizer
from ascl_jax.train.state import create_train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, arg="smoke"):
    return config_lib.load(name, arg)


def small(method="ascl", **loss):
    c = load_config("default")
    c.method = method
    c.eval.attacks = ("clean", "pgd")
    c.eval.autoattack = "none"
    c.analysis.enabled = False
    c.eval.sanity = False
    c.loss.update(loss)
    if method == "acl_pretrain":
        c.data.num_views = 2
        c.data.augment = "crop_flip"
        c.model.bn = "dual"
        c.model.head = "acl_mlp"
        c.attack.bn_mode = "eval"
        c.eval.attacks = ()
    return c


def params_of(result):
    return jax.device_get(result.state.params)


def _step_once(config, mesh, steps=3):
    """Runs `steps` jitted train steps on `mesh` from the same initial state; returns
    (metrics of every step, final params)."""
    from ascl_jax import data

    model, info = train.build_model(config)
    spe, n = train.total_steps(config)
    tx, _ = make_optimizer(config.optim, spe, n)
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    state = jax.jit(
        lambda: create_train_state(model, tx, jax.random.key(0), info["image_shape"]), out_shardings=repl
    )()
    step_fn = train_steps.make_train_step(config, model, state_sharding=repl, data_sharding=dsh)
    it = data.make_train_iterator(config.data, seed=0, start_step=0)
    out = []
    with jax.set_mesh(mesh):
        for _ in range(steps):
            state, m = step_fn(state, parallel.to_global(next(it), dsh))
            out.append(jax.device_get(m))
    return out, jax.device_get(state.params), jax.device_get(state.batch_stats)


@pytest.mark.parametrize(
    "method,loss,steps",
    [
        ("ascl", dict(strategy="hard", similarity="neg_linf", normalize=True), 2),
        ("trades", {}, 2),
        ("acl_pretrain", dict(acl_variant="ds"), 2),
    ],
)
def test_one_vs_eight_devices(method, loss, steps):
    """The same steps on 1 device and on 8 (batch sharded) give equal losses and parameters."""
    assert jax.device_count() == 8
    c = small(method, **loss)
    c.data.batch_size = 32 if method != "acl_pretrain" else 16
    # SGD, not Adam: Adam's first steps are ~lr*sign(g), which turns the float noise on parameters
    # with a zero true gradient (a bias followed by BN) into lr-sized differences.
    c.optim.update(dict(name="sgd", learning_rate=0.05, momentum=0.9))
    m1, p1, b1 = _step_once(c, parallel.make_mesh(jax.devices()[:1]), steps)
    m8, p8, b8 = _step_once(c, parallel.make_mesh(), steps)
    for a, b in zip(m1, m8):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(p1, p8, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(b1, b8, atol=1e-5, rtol=1e-5)


def test_supcon_step_equals_manual_loss():
    """orgSCL (ASCL Table 6): the step's loss is CE + SupCon on the normalised two-view features."""
    from shared_cases import table6_first_step

    from ascl_jax import losses

    m, out, batch = table6_first_step("orgscl_ce")
    f = out["z"] / jnp.linalg.norm(out["z"], axis=1, keepdims=True)
    b = batch["label"].shape[0]
    want = losses.cross_entropy(out["logits"], jnp.concatenate([batch["label"]] * 2)) + losses.supcon_loss(
        jnp.stack([f[:b], f[b:]], 1), batch["label"]
    )
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5)


@pytest.mark.parametrize("variant", ["s2s", "a2a", "a2s", "ds"])
def test_acl_variants_step(variant):
    c = small("acl_pretrain", acl_variant=variant)
    c.data.batch_size = 16
    if variant in ("s2s", "a2a"):
        c.model.bn = "single"
    metrics, params, _ = _step_once(c, parallel.make_mesh(jax.devices()[:1]), steps=1)
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert metrics[0]["loss"] > 0


def test_ascl_two_views_and_head_and_no_recompile():
    c = load_config("ascl_released")
    c.data.name, c.model.normalization = "digits", "digits"
    c.data.crop_padding, c.data.flip = 1, False
    c.data.num_train = c.data.num_test = -1
    c.data.batch_size = 16
    from ascl_jax import data

    model, info = train.build_model(c)
    tx, _ = make_optimizer(c.optim, 10, 100)
    state = create_train_state(model, tx, jax.random.key(0), info["image_shape"])
    pure = train_steps.make_train_step(c, model, jit=False)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return pure(state, batch)

    it = data.make_train_iterator(c.data, seed=0)
    for _ in range(3):  # three steps, one trace
        state, m = step(state, next(it))
    m = jax.device_get(m)
    assert np.isfinite(m["loss"]) and m["num_positives_nat"] >= 0
    assert "ce_nat" not in m  # alpha = 0 in the released setting


def test_train_resume_is_bit_identical(tmp_path):
    c = small("ascl")
    c.num_train_steps = 6
    c.checkpoint_every_steps = 100
    full = train.train_and_evaluate(c, str(tmp_path / "full"), evaluate=False)
    part = train.train_and_evaluate(c, str(tmp_path / "part"), stop_after_steps=3, evaluate=False)
    assert part.report["stopped_at_step"] == 3
    resumed = train.train_and_evaluate(c, str(tmp_path / "part"), evaluate=False)
    chex.assert_trees_all_equal(params_of(full), params_of(resumed))
    chex.assert_trees_all_equal(jax.device_get(full.state.opt_state), jax.device_get(resumed.state.opt_state))


def test_workdir_of_another_config_is_refused(tmp_path):
    c = small("ascl")
    train.train_and_evaluate(c, str(tmp_path), evaluate=False)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    c2 = small("ascl", strategy="global")
    with pytest.raises(workdir.WorkdirError, match="loss.strategy"):
        train.train_and_evaluate(c2, str(tmp_path), evaluate=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    c = small("nat")
    c.optim.learning_rate = 1e30
    c.optim.name = "sgd"
    c.num_train_steps = 8
    with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
        train.train_and_evaluate(c, str(tmp_path), evaluate=False)
    mngr = checkpointing.make_manager(str(tmp_path), save_every=1, max_to_keep=3)
    if mngr.latest_step() is not None:  # whatever was saved is finite
        st = checkpointing.restore(mngr, train.abstract_state(c))
        chex.assert_tree_all_finite(st.params)


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    c = small("nat")
    train.train_and_evaluate(c, str(tmp_path), evaluate=False)
    ckdir = tmp_path / "checkpoints"
    last = sorted(int(p) for p in os.listdir(ckdir) if p.isdigit())[-1]
    for root, _, files in os.walk(ckdir / str(last)):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "wb") as fh:
                fh.write(b"garbage")
    with pytest.raises(checkpointing.WorkdirError, match="corrupt"):
        train.restore_run(str(tmp_path))
    assert (ckdir / str(last)).exists()  # left in place


def test_batch_that_does_not_divide_devices_is_a_config_error(tmp_path):
    c = small("nat")
    c.data.batch_size = 30
    with pytest.raises(config_lib.ConfigError, match="data.batch_size=30 does not divide over the 8"):
        train.train_and_evaluate(c, str(tmp_path))


def test_bad_config_values_name_the_field():
    c = small("ascl")
    c.loss.strategy = "nearest"
    with pytest.raises(config_lib.ConfigError, match=r"loss.strategy.*'global', 'hard', 'soft', 'leaked'"):
        config_lib.validate(c)
    c = small("ascl")
    c.method = "simclr"
    with pytest.raises(config_lib.ConfigError, match="config.method"):
        config_lib.validate(c)


def test_every_config_file_loads_and_validates():
    for path in sorted((ROOT / "configs").glob("*.py")):
        for arg in ("", "smoke"):
            c = load_config(path.stem, arg)
            if c.method in ("trades_finetune", "linear_eval"):
                c.init.workdir = "/nonexistent"
            config_lib.validate(c)


def test_optimizer_schedules():
    c = config_lib.base_config()
    c.optim.update(
        dict(schedule="piecewise", learning_rate=1e-3, decay_epochs=(2, 4), decay_factors=(0.1, 0.01))
    )
    _, sched = make_optimizer(c.optim, steps_per_epoch=10, total_steps=100)
    assert np.isclose(sched(0), 1e-3) and np.isclose(sched(19), 1e-3)
    assert np.isclose(sched(20), 1e-4) and np.isclose(sched(40), 1e-5)
    c.optim.update(
        dict(name="lars", schedule="warmup_cosine", learning_rate=5.0, warmup_epochs=1, final_lr=1e-6)
    )
    tx, sched = make_optimizer(c.optim, steps_per_epoch=10, total_steps=100)
    assert np.isclose(sched(0), 0.5) and np.isclose(sched(9), 5.0)
    assert np.isclose(sched(99), 1e-6, atol=1e-5)
    # LARS matches the reference update rule on one tensor.
    w = jnp.array([3.0, 4.0])
    g = jnp.array([0.3, 0.4])
    st = tx.init({"w": w})
    upd, _ = tx.update({"w": g}, st, {"w": w})
    wd, eta = c.optim.weight_decay, c.optim.lars_eta
    local = eta * 5.0 / (0.5 + wd * 5.0)
    np.testing.assert_allclose(upd["w"], -0.5 * local * (g + wd * w), rtol=1e-5)


def test_acl_pretrain_then_finetune_and_linear_eval(tmp_path):
    """ACL Tables 4/5 plumbing: fine-tuning starts from the chosen BN set of the pre-trained
    encoder (head dropped, classifier zero); linear evaluation changes only the classifier."""
    from ascl_jax import models

    pre = small("acl_pretrain", acl_variant="ds")
    pre.data.batch_size = 16
    pre_state = train.train_and_evaluate(pre, str(tmp_path / "pre")).state
    pre_vars = {
        "params": jax.device_get(pre_state.params),
        "batch_stats": jax.device_get(pre_state.batch_stats),
    }
    for branch in ("adv", "clean"):
        ft = small("trades_finetune")
        ft.model.update(dict(bn="single", head="identity"))
        ft.init.update(dict(workdir=str(tmp_path / "pre"), bn_branch=branch))
        ft.attack.update(dict(init="normal", bn_mode="eval"))
        model, info = train.build_model(ft)
        v = train.pretrained_variables(ft, model, info["image_shape"])
        want = models.strip_head(models.select_bn_branch(pre_vars, branch))
        chex.assert_trees_all_equal(v["params"]["encoder"], want["params"]["encoder"])
        chex.assert_trees_all_equal(v["batch_stats"], want["batch_stats"])
        assert not np.any(v["params"]["classifier"]["kernel"])
    ft.num_train_steps = 2
    report = train.train_and_evaluate(ft, str(tmp_path / "ft")).report
    assert 0.0 <= report["clean_accuracy"] <= 1.0
    lin = small("linear_eval")
    lin.model.update(dict(bn="single", head="identity"))
    lin.init.update(dict(workdir=str(tmp_path / "pre"), bn_branch="adv", linear_mode="adversarial"))
    lin.optim.update(dict(name="sgd", learning_rate=0.1, weight_decay=1e-3))
    lin.num_train_steps = 3
    model, info = train.build_model(lin)
    start = train.pretrained_variables(lin, model, info["image_shape"])
    rep = train.train_and_evaluate(lin, str(tmp_path / "lin"), evaluate=False)
    end = jax.device_get(rep.state.params)
    chex.assert_trees_all_equal(end["encoder"], start["params"]["encoder"])
    chex.assert_trees_all_equal(jax.device_get(rep.state.batch_stats), start["batch_stats"])
    assert np.any(end["classifier"]["kernel"] != 0)


def test_report_json_has_one_writer_and_a_schema(tmp_path):
    """write_report archives the previous report.json, update_report merges, and a key outside
    the schema (workdir.Report) is refused before anything is written."""
    wd = str(tmp_path)
    assert workdir.write_report(wd, {"config": "a", "steps": 3}) is None
    backup = workdir.write_report(wd, {"config": "b"})
    assert os.path.basename(backup).startswith("report.") and json.load(open(backup)) == {
        "config": "a",
        "steps": 3,
    }
    merged = workdir.update_report(wd, {"clean_accuracy": 0.5})
    assert merged == workdir.read_report(wd) == {"config": "b", "clean_accuracy": 0.5}
    with pytest.raises(KeyError, match="schema"):
        workdir.update_report(wd, {"clean_acc": 0.5})
    assert workdir.read_report(wd) == merged


# ------------------------------------------------- partial last batches, BN statistics, extra updates


def _partial(method, **loss):
    """A small config whose epochs end with a padded batch: 44 digits at batch 16 = 16, 16, 12
    (12 rows over 8 devices: padded to 16 with a mask)."""
    c = small(method, **loss)
    c.model.arch = "tiny"  # BN layers (the CNN has none)
    c.data.num_train = 44
    c.optim.update(dict(name="sgd", learning_rate=0.05, momentum=0.9))
    return c


@pytest.mark.parametrize("stop", [2, 3])
def test_train_resume_is_bit_identical_with_partial_batches(tmp_path, stop):
    """Two epochs of 3 steps, each ending with a padded batch; stopping before or right after the
    first padded batch and resuming gives the uninterrupted run's bits."""
    c = _partial("ascl")
    c.num_train_steps = 6
    c.checkpoint_every_steps = 100
    plan = train.setup.last_batch_plan(c, jax.device_count())
    assert train.total_steps(c) == (3, 6) and plan.masked and plan.size == 16 and plan.real == (12,)
    full = train.train_and_evaluate(c, str(tmp_path / "full"), evaluate=False)
    part = train.train_and_evaluate(c, str(tmp_path / "part"), stop_after_steps=stop, evaluate=False)
    assert part.report["stopped_at_step"] == stop
    resumed = train.train_and_evaluate(c, str(tmp_path / "part"), evaluate=False)
    chex.assert_trees_all_equal(params_of(full), params_of(resumed))
    chex.assert_trees_all_equal(
        jax.device_get(full.state.batch_stats), jax.device_get(resumed.state.batch_stats)
    )
    chex.assert_trees_all_equal(jax.device_get(full.state.opt_state), jax.device_get(resumed.state.opt_state))


def _rows(tree, n):
    return jax.tree.map(lambda a: a[:n], tree)


def _pad_rows(tree, n, size):
    """Pads every leaf's leading axis from n to size with copies of row 0 (as the pipeline does)."""
    return jax.tree.map(lambda a: np.concatenate([a[:n], np.repeat(a[:1], size - n, 0)]), tree)


MASK_CASES = [
    ("nat", {}, {}),
    ("adv", dict(nat_ce_weight=1.0), {}),
    ("trades", {}, {}),
    ("ascl", dict(strategy="global"), {}),
    ("ascl", dict(strategy="hard", similarity="neg_linf", normalize=True), {}),
    ("ascl", dict(strategy="soft"), {}),
    ("ascl", dict(strategy="leaked"), {}),
    ("ascl", dict(strategy="merge"), {}),
    ("ascl", dict(strategy="leaked", two_views=True, feature="proj"), dict(views=2, head="p1")),
    ("supcon", {}, dict(views=2)),
    ("acl_pretrain", dict(acl_variant="s2s"), {}),
    ("acl_pretrain", dict(acl_variant="a2a"), {}),
    ("acl_pretrain", dict(acl_variant="a2s"), {}),
    ("acl_pretrain", dict(acl_variant="ds"), {}),
    ("linear_eval", {}, {}),
    ("semi_student", {}, {}),
]


@pytest.mark.parametrize("method,loss,extra", MASK_CASES, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_padded_batch_step_equals_step_on_the_real_rows(method, loss, extra):
    """A batch of 5 real rows padded to 8 with a mask gives the step of the 5 rows alone (losses,
    metrics, gradients, BN statistics, in the train-mode attack too)."""
    c = _partial(method, **loss)
    c.attack.update(dict(random_start=False, num_steps=2, bn_mode="train"))
    if method == "trades":  # from x the KL objective's gradient is 0: its sign would be rounding noise
        c.attack.num_steps = 0
    c.init.linear_mode = "adversarial"
    if extra.get("views"):
        c.data.num_views = 2
    if extra.get("head"):
        c.model.head = extra["head"]
    model, info = train.build_model(c)
    tx, _ = make_optimizer(c.optim, 10, 100)
    state = create_train_state(model, tx, jax.random.key(0), info["image_shape"])
    rng = np.random.default_rng(0)
    views = (2,) if c.data.num_views == 2 else ()
    batch = {
        "image": rng.uniform(0, 1, (8, *views, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 8).astype(np.int32),
    }
    if method == "semi_student":
        batch["teacher_logits"] = rng.standard_normal((8, 10)).astype(np.float32)
        batch["labelled"] = np.arange(8) < 2
    step = jax.jit(train_steps.make_train_step(c, model, jit=False))
    padded = dict(_pad_rows(batch, 5, 8), mask=np.arange(8) < 5)
    s_pad, m_pad = step(state, padded)
    s_real, m_real = step(state, _rows(batch, 5))
    m_pad, m_real = jax.device_get(m_pad), jax.device_get(m_real)
    assert m_pad.keys() == m_real.keys()
    for k in m_real:
        np.testing.assert_allclose(m_pad[k], m_real[k], rtol=1e-4, atol=1e-5, err_msg=k)
    chex.assert_trees_all_close(
        jax.device_get(s_pad.params), jax.device_get(s_real.params), rtol=1e-4, atol=1e-5
    )
    chex.assert_trees_all_close(
        jax.device_get(s_pad.batch_stats), jax.device_get(s_real.batch_stats), rtol=1e-4, atol=1e-5
    )


def test_extra_bn_updates_equal_forwards_written_out():
    """loss.bn_extra_updates=2 (the ASCL authors' loop): the running statistics after one step
    equal those of the step without them followed by a train-mode forward of the natural batch and
    one of the step's adversarial batch at the updated parameters."""
    c = _partial("ascl")
    c.optim.learning_rate = 0.5  # a visible update, so the forwards see new parameters
    model, info = train.build_model(c)
    tx, _ = make_optimizer(c.optim, 10, 100)
    state = create_train_state(model, tx, jax.random.key(0), info["image_shape"])
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    assert c.loss.bn_extra_updates == 2  # the default
    with_extra = jax.jit(train_steps.make_train_step(c, model, jit=False))(state, batch)[0]
    c0 = c.copy_and_resolve_references()
    c0.loss.bn_extra_updates = 0
    plain = jax.jit(train_steps.make_train_step(c0, model, jit=False))(state, batch)[0]
    x_adv = jax.jit(lambda s, x, y: train_steps.ce_attack(model, s, c.attack, x, y, s.step_key()))(
        state, batch["image"], batch["label"]
    )

    @jax.jit
    def by_hand(params, bs, x_nat, x_adv):
        for x in (x_nat, x_adv):
            _, upd = model.apply(
                {"params": params, "batch_stats": bs}, x, train=True, bn="clean", mutable=["batch_stats"]
            )
            bs = upd["batch_stats"]
        return bs

    want = by_hand(plain.params, plain.batch_stats, batch["image"], x_adv)
    chex.assert_trees_all_close(
        jax.device_get(with_extra.batch_stats), jax.device_get(want), rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_close(
        jax.device_get(with_extra.params), jax.device_get(plain.params), rtol=1e-6, atol=1e-7
    )
    assert not np.allclose(
        jax.device_get(plain.batch_stats)["encoder"]["bn1"]["mean"],
        jax.device_get(want)["encoder"]["bn1"]["mean"],
    )


def test_last_batch_smaller_than_device_count_or_split_is_a_config_error(tmp_path):
    c = _partial("nat")
    c.data.num_train = 35  # 16, 16, 3: a last batch of 3 rows for 8 devices
    with pytest.raises(config_lib.ConfigError, match=r"data\.batch_size=16.*35 examples.*8 devices"):
        train.train_and_evaluate(c, str(tmp_path / "a"))
    c.data.drop_remainder = True  # dropping it is fine
    assert train.setup.last_batch_plan(c, 8).masked is False
    c = _partial("nat")
    c.data.batch_size = 64
    with pytest.raises(config_lib.ConfigError, match=r"data\.batch_size=64.*44 examples"):
        train.train_and_evaluate(c, str(tmp_path / "b"))


def test_schedule_counts_the_kept_last_batch():
    """ACL pre-training on CIFAR-10: 98 steps an epoch, 1000 epochs, warm-up over 10 x 98 steps."""
    c = load_config("acl_pretrain", "")
    spe, n = train.total_steps(c)
    assert (spe, n) == (98, 98 * c.optim.num_epochs)
    assert train.total_steps(load_config("ascl_released", ""))[0] == 391
