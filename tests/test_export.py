"""Every train step and evaluation program lowers for GPU and TPU from this CPU machine.

``jax.export`` (through ``xla_cpu.export``, which lowers with the CPU speed layer off) of each
method's jitted train step -- nat, adv, trades, ascl (strategies global / hard / soft / leaked),
supcon, acl_pretrain (s2s / a2a / a2s / ds), linear_eval, semi_student -- and of the evaluation
stages (PGD, APGD-CE, APGD-T, FAB-T, Square; ``evaluation.programs``) for ``('cuda',)`` and
``('tpu',)``, on the 8-device ('data',) mesh (tests/conftest.py simulates 8 CPU devices). For each:

- lowering succeeds;
- the module's custom calls are only the platform-independent sharding markers (no C++ kernel of
  the speed layer, no CPU library call, no host callback);
- the exported input shardings: the batch (every leaf) split over 'data' on its first axis, the
  state (train) or the parameters, key, rank and eps (evaluation) replicated; a train step's
  outputs (new state and metrics) replicated.

Also: the export helper's module is the plain graph (equal to the export with
``ASCL_JAX_CPU_FAST=0``), whereas a bare ``jax.export`` with the layer on would carry the C++
kernels into a cuda module; one exported step is serialised, deserialised and run on CPU, and
equals the jitted step. Tiny model (``arch='tiny'``), 8x8x1 digits shapes, batch 16, PGD-2.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ascl_jax import config as config_lib
from ascl_jax import parallel, xla_cpu
from ascl_jax.evaluation import autoattack as aa
from ascl_jax.evaluation import engine as engine_lib
from ascl_jax.evaluation import pgd as eval_pgd
from ascl_jax.train import setup
from ascl_jax.train import steps as train_steps
from ascl_jax.xla_cpu import kernels

PLATFORMS = ("cuda", "tpu")
BATCH = 16
IMAGE = (8, 8, 1)
# Custom calls a multi-device module may hold on any platform (sharding markers, jax.export's
# own allowlist entries that are not tied to a backend).
NEUTRAL_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "AllocateBuffer"}
SPEED_LAYER_TARGETS = {kernels.TARGET, kernels.CONV_TARGET, kernels.WGRAD_TARGET}

# (case id, method, loss overrides, extra config edits)
STEP_CASES = [
    ("nat", "nat", {}),
    ("adv", "adv", {}),
    ("trades", "trades", {}),
    *[(f"ascl-{s}", "ascl", dict(strategy=s)) for s in ("global", "hard", "soft", "leaked")],
    ("supcon", "supcon", {}),
    *[(f"acl_pretrain-{v}", "acl_pretrain", dict(acl_variant=v)) for v in ("s2s", "a2a", "a2s", "ds")],
    ("linear_eval", "linear_eval", {}),
    ("semi_student", "semi_student", {}),
]


def step_config(method, loss):
    c = config_lib.load("default", "smoke")
    c.method = method
    c.loss.update(loss)
    if method in ("acl_pretrain", "supcon"):
        c.data.num_views = 2
    if method == "acl_pretrain":
        c.model.update(dict(bn="dual" if loss["acl_variant"] in ("a2s", "ds") else "single", head="acl_mlp"))
        c.attack.bn_mode = "eval"
    if method == "semi_student":
        c.data.label_fraction = 0.1
    if method == "linear_eval":
        c.init.linear_mode = "adversarial"  # the PGD examples are part of the step
    return c


def abstract_batch(config):
    views = (2,) if config.data.num_views == 2 else ()
    batch = {
        "image": jax.ShapeDtypeStruct((BATCH, *views, *IMAGE), jnp.float32),
        "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
    }
    if config.method == "semi_student":
        batch["teacher_logits"] = jax.ShapeDtypeStruct((BATCH, 10), jnp.float32)
        batch["labelled"] = jax.ShapeDtypeStruct((BATCH,), jnp.bool_)
    return batch


def build_step(method, loss):
    """(config, model, jitted step with the state replicated and the batch sharded, abstract
    state, abstract batch, mesh)."""
    c = step_config(method, loss)
    model, info = setup.build_model(c)
    assert tuple(info["image_shape"]) == IMAGE
    mesh = parallel.make_mesh()
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    state_fn, _ = setup.initial_state_fn(c, model, info["image_shape"])
    state = jax.eval_shape(state_fn)
    step = train_steps.make_train_step(c, model, state_sharding=repl, data_sharding=dsh)
    return c, model, step, state, abstract_batch(c), mesh


def custom_call_targets(text: str) -> set:
    """Every custom-call target named in a StableHLO module's text."""
    return set(re.findall(r"custom_call @([\w.$]+)", text)) | set(
        re.findall(r'call_target_name = "([^"]+)"', text)
    )


def without_locations(text: str) -> str:
    """A module's text without its source locations (which name the tracing call sites)."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("#loc"))
    return re.sub(r"\s*loc\((?:[^()]|\([^()]*\))*\)", "", text)


def check_portable(text: str):
    targets = custom_call_targets(text)
    assert not targets & SPEED_LAYER_TARGETS, targets
    assert targets <= NEUTRAL_CUSTOM_CALLS, targets - NEUTRAL_CUSTOM_CALLS
    assert "callback" not in text.lower()


def spec_of(sharding, ndim):
    """A NamedSharding's spec without trailing Nones (P('data', None) -> P('data'))."""
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return P(*spec)


def input_specs(exp, mesh):
    """The exported inputs' specs; None for an input the program does not read (jax.export drops
    it from the module: ``module_kept_var_idx``)."""
    kept = set(exp.module_kept_var_idx)
    out = []
    for i, (s, aval) in enumerate(zip(exp.in_shardings_jax(mesh), exp.in_avals)):
        if i in kept:
            out.append(spec_of(s, aval.ndim))
        else:
            assert s is None
            out.append(None)
    return out


@functools.cache
def exported_step(case_id):
    """{platform: Exported} of a case's train step, plus the case's abstract inputs and mesh."""
    _, method, loss = next(c for c in STEP_CASES if c[0] == case_id)
    _, _, step, state, batch, mesh = build_step(method, loss)
    out = {p: xla_cpu.export(step, platforms=(p,))(state, batch) for p in PLATFORMS}
    return out, state, batch, mesh


@pytest.mark.parametrize("case_id", [c[0] for c in STEP_CASES])
def test_train_step_lowers_for_gpu_and_tpu(case_id):
    exps, state, batch, mesh = exported_step(case_id)
    n_state = len(jax.tree.leaves(state))
    batch_leaves = jax.tree.leaves(batch)
    for platform, exp in exps.items():
        assert exp.platforms == (platform,)
        assert exp.nr_devices == 8
        check_portable(exp.mlir_module())
        specs = input_specs(exp, mesh)
        assert len(specs) == n_state + len(batch_leaves)
        assert set(specs[:n_state]) <= {P(), None}, (platform, specs[:n_state])
        assert set(specs[n_state:]) <= {P(parallel.DATA_AXIS), None}, (platform, specs[n_state:])
        assert specs[n_state] == P(parallel.DATA_AXIS)  # 'image' (dict keys sorted: first)
        for s, aval in zip(exp.out_shardings_jax(mesh), exp.out_avals):
            assert spec_of(s, aval.ndim) == P(), (platform, s)
        # the state's leaves come back with their shapes and dtypes (parameters float32)
        assert [(a.shape, a.dtype) for a in exp.out_avals[:n_state]] == [
            (a.shape, a.dtype) for a in jax.tree.leaves(state)
        ]


def test_export_is_the_plain_graph(monkeypatch):
    """The helper's cuda module equals the one traced with ASCL_JAX_CPU_FAST=0; a bare
    jax.export with the layer on (CPU default backend) would put the C++ kernels in it."""
    exps, state, batch, _ = exported_step("ascl-leaked")
    _, _, step, _, _, _ = build_step("ascl", dict(strategy="leaked"))
    monkeypatch.setenv(xla_cpu.ENV_SWITCH, "0")
    with xla_cpu.off():  # the off context only keys the tracing cache apart from the runs above
        plain = jax.export.export(step, platforms=("cuda",))(state, batch)
    assert without_locations(plain.mlir_module()) == without_locations(exps["cuda"].mlir_module())
    monkeypatch.setenv(xla_cpu.ENV_SWITCH, "1")
    assert xla_cpu.enabled()
    with xla_cpu.off():
        assert not xla_cpu.enabled()
    assert xla_cpu.enabled()
    if kernels.available():
        leaky = jax.export.export(
            step,
            platforms=("cuda",),
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(t) for t in SPEED_LAYER_TARGETS],
        )(state, batch)
        assert custom_call_targets(leaky.mlir_module()) & SPEED_LAYER_TARGETS


def test_exported_step_serialises_and_runs_on_cpu():
    """ASCL (leaked) step: exported for ('cpu',), serialised, deserialised, called on the 8 CPU
    devices; new state and metrics equal the jitted step's (up to float rounding: the jitted step
    runs with the speed layer as the environment sets it)."""
    c, model, step, state_abs, batch_abs, mesh = build_step("ascl", dict(strategy="leaked"))
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    treedef = jax.tree.structure(state_abs)

    def flat_step(leaves, batch):  # the TrainState's pytree node holds functions: export leaves
        new, metrics = train_steps.make_train_step(c, model, jit=False)(treedef.unflatten(leaves), batch)
        return jax.tree.leaves(new), metrics

    flat = jax.jit(flat_step, in_shardings=(repl, dsh), out_shardings=(repl, repl))
    exp = xla_cpu.export(flat, platforms=("cpu",))(jax.tree.leaves(state_abs), batch_abs)
    check_portable(exp.mlir_module())
    blob = exp.serialize()
    assert isinstance(blob, (bytes, bytearray)) and len(blob) > 0
    loaded = jax.export.deserialize(blob)

    # parameters from an 'rbg' key: XLA:CPU compiles it far faster than threefry's bits
    variables = jax.jit(lambda: setup.init_variables(model, jax.random.key(0, impl="rbg"), IMAGE))()
    state_fn, _ = setup.initial_state_fn(c, model, IMAGE, variables)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(0, 1, (BATCH, *IMAGE)).astype(np.float32),
        "label": rng.integers(0, 10, BATCH).astype(np.int32),
    }
    batch = jax.device_put(batch, dsh)
    state = jax.jit(state_fn, out_shardings=repl)()
    got_leaves, got_m = loaded.call(jax.tree.leaves(state), batch)
    want_state, want_m = step(state, batch)  # donates `state`: called last
    want_leaves = jax.tree.leaves(want_state)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-6)
    assert set(got_m) == set(want_m)
    for k in want_m:
        np.testing.assert_allclose(np.asarray(got_m[k]), np.asarray(want_m[k]), rtol=2e-5, atol=2e-6)
    assert int(treedef.unflatten(got_leaves).step) == int(want_state.step) == 1


# ----------------------------------------------------------------------------------------------
# Evaluation programs

EVAL_CASES = {
    "pgd": lambda: eval_pgd.pgd_program(num_steps=2, step_ratio=0.25),
    "apgd-ce": lambda: aa.component_program("apgd-ce", n_iter=2),
    "apgd-t": lambda: aa.component_program("apgd-t", n_iter=2),
    "fab-t": lambda: aa.component_program("fab-t", n_iter=2),
    "square": lambda: aa.component_program("square", n_queries=2),
}


@functools.cache
def eval_setup():
    c = config_lib.load("default", "smoke")
    model, _ = setup.build_model(c)
    variables = jax.jit(lambda: setup.init_variables(model, jax.random.key(0, impl="rbg"), IMAGE))()
    mesh = parallel.make_mesh()
    eng = engine_lib.Engine(
        lambda v, x: model.apply(v, x, train=False)["logits"],
        params=variables,
        batch_size=BATCH,
        mesh=mesh,
        progress=False,
    )
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    sds = lambda shape, dtype, s: jax.ShapeDtypeStruct(shape, dtype, sharding=s)  # noqa: E731
    args = (
        jax.tree.map(lambda a: sds(a.shape, a.dtype, repl), variables),
        sds((BATCH, *IMAGE), jnp.float32, dsh),  # x
        sds((BATCH,), jnp.int32, dsh),  # y
        sds((BATCH,), jnp.int32, dsh),  # index
        sds((BATCH,), jnp.bool_, dsh),  # active
        sds((2,), jnp.uint32, repl),  # key data
        sds((), jnp.int32, repl),  # rank
        sds((), jnp.float32, repl),  # eps
    )
    return eng, args, mesh


@pytest.mark.parametrize("name", list(EVAL_CASES))
def test_evaluation_program_lowers_for_gpu_and_tpu(name):
    eng, args, mesh = eval_setup()
    stage = eng.stage(("export", name), EVAL_CASES[name]())

    def run(params, x, y, index, active, key_data, rank, eps):  # the key as raw data [2]
        return stage(params, x, y, index, active, jax.random.wrap_key_data(key_data), rank, eps)

    # placed as the engine places a stage's arguments (engine.run_stage / compile_stage)
    run = jax.jit(run, in_shardings=(eng.repl,) + (eng.data,) * 4 + (eng.repl,) * 3)

    n_params = len(jax.tree.leaves(args[0]))
    for platform in PLATFORMS:
        exp = xla_cpu.export(run, platforms=(platform,))(*args)
        assert exp.nr_devices == 8
        text = exp.mlir_module()
        check_portable(text)
        assert "stablehlo.while" in text  # the attack iterations: one compiled loop
        specs = input_specs(exp, mesh)
        assert len(specs) == n_params + 7
        assert set(specs[:n_params]) == {P()}, specs[:n_params]
        assert specs[n_params] == P(parallel.DATA_AXIS)  # x
        assert set(specs[n_params + 1 : n_params + 4]) <= {P(parallel.DATA_AXIS), None}
        assert set(specs[n_params + 4 :]) <= {P(), None}
        assert [a.shape for a in exp.out_avals] == [(BATCH, *IMAGE), (BATCH,)]
