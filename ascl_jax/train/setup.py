"""What a run needs before its loop: the model, the step count, the optimizer, the initial (or
restored, or pre-trained) state, and the train batches of `config.method`."""

from __future__ import annotations

import io
import logging
import math
from typing import NamedTuple

import jax
import numpy as np
import optax

from ascl_jax import checkpointing, data, models, parallel, storage
from ascl_jax import config as config_lib
from ascl_jax import workdir as workdir_lib
from ascl_jax.train import steps as train_steps
from ascl_jax.train.optim import make_optimizer
from ascl_jax.train.state import create_train_state, init_variables

log = logging.getLogger("ascl_jax")


def build_model(config):
    """(model, dataset info) for `config.model` on `config.data`'s classes and image shape."""
    info = data.dataset_info(config.data)
    model = models.build_model(config.model, num_classes=info["num_classes"], image_shape=info["image_shape"])
    return model, info


def total_steps(config) -> tuple[int, int]:
    """(steps per epoch, total train steps): `config.num_train_steps` when > 0, else
    `config.optim.num_epochs` epochs. An epoch is `data.steps_per_epoch` steps: ceil(pool / batch)
    by default (`data.drop_remainder=False`), pool // batch when dropping. For semi_student an
    epoch is one pass over the unlabelled pool."""
    if config.method == "semi_student":
        spe = data.steps_per_epoch(
            config.data, subset="unlabelled", batch_size=config.data.batch_size - config.semi.labelled_batch
        )
    else:
        spe = data.steps_per_epoch(config.data, subset=config.train_subset or None)
    n = config.num_train_steps if config.num_train_steps > 0 else config.optim.num_epochs * spe
    return spe, int(n)


def make_tx(config, spe, n_steps, params=None):
    """(optax transformation, lr schedule) of `config.optim`. linear_eval: the parameters outside
    the classifier (`steps.trainable_mask` of `params`, a tree or its shapes) get zero updates."""
    tx, schedule = make_optimizer(config.optim, spe, n_steps)
    if config.method == "linear_eval":
        labels = jax.tree.map(lambda keep: "train" if keep else "freeze", train_steps.trainable_mask(params))
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return tx, schedule


def initial_state_fn(config, model, image_shape, variables=None):
    """(state_fn, lr schedule): `state_fn()` builds the TrainState of `config` from key
    `config.seed` (or from `variables`, e.g. `pretrained_variables`); jit it to create the state,
    `jax.eval_shape` it for the structure."""
    spe, n_steps = total_steps(config)
    key = jax.random.key(config.seed)
    params_shape = jax.eval_shape(lambda: init_variables(model, key, image_shape))["params"]
    tx, schedule = make_tx(config, spe, n_steps, params_shape)
    return (lambda: create_train_state(model, tx, key, image_shape, variables)), schedule


def abstract_state(config):
    """The state's structure (shapes only) for `config`, used to restore a checkpoint."""
    model, info = build_model(config)
    state_fn, _ = initial_state_fn(config, model, info["image_shape"])
    return jax.eval_shape(state_fn)


def restore_run(workdir: str, mesh=None, checkpoint: str | None = None):
    """(config, model, state) of a checkpoint of a workdir, replicated over `mesh`.

    checkpoint: 'last' (the latest checkpoint), 'best' (workdir/best_checkpoint, kept by
    `eval.checkpoint='best'`, `ascl_jax.train.selection`), or None: the one the run's
    `eval.checkpoint` names (its headline). Raises WorkdirError when that checkpoint is missing."""
    config = workdir_lib.load_config(workdir)
    which = checkpoint or config.eval.get("checkpoint", "last")
    if which not in config_lib.EVAL_CHECKPOINTS:
        raise config_lib.ConfigError(
            f"checkpoint={which!r} is not allowed; choose one of {list(config_lib.EVAL_CHECKPOINTS)}"
        )
    model, _ = build_model(config)
    mesh = mesh or parallel.make_mesh()
    abstract = abstract_state(config)
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), abstract
    )
    if which == "best":
        mngr = checkpointing.make_best_manager(workdir) if checkpointing.has_best(workdir) else None
        if mngr is None or mngr.best_step() is None:
            raise workdir_lib.WorkdirError(
                f"{workdir} holds no best checkpoint ({checkpointing.BEST_DIR}/ is missing or empty): "
                "train with eval.checkpoint='best' to keep one, or evaluate eval.checkpoint='last'"
            )
        return config, model, checkpointing.restore(mngr, abstract, step=mngr.best_step())
    mngr = checkpointing.make_manager(workdir, save_every=1, max_to_keep=config.max_checkpoints)
    if mngr.latest_step() is None:
        raise workdir_lib.WorkdirError(f"{workdir} holds no checkpoint (checkpoints/ is empty)")
    state = checkpointing.restore(mngr, abstract)
    return config, model, state


def pretrained_variables(config, model, image_shape):
    """Variables for fine-tuning / linear evaluation from `config.init.workdir` (ACL Tables 4, 5):
    the chosen BN set of a dual-BN encoder, projection head dropped, classifier re-initialised
    to zero (ACL's cvt_state_dict) when `init.reset_classifier`."""
    if config.init.get("torch_checkpoint"):
        variables = torch_variables(config, model, finetune=True)
    else:
        _, _, pre = restore_run(config.init.workdir)
        variables = parallel.to_host({"params": pre.params, "batch_stats": pre.batch_stats})
    if models.has_dual_bn(variables) and config.model.bn == "single":
        variables = models.select_bn_branch(variables, config.init.bn_branch)
    variables = models.strip_head(variables)
    fresh = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))
    fresh = {"params": fresh["params"], "batch_stats": fresh.get("batch_stats", {})}
    if config.init.reset_classifier:
        variables = models.reset_classifier(
            variables, num_classes=fresh["params"]["classifier"]["bias"].shape[0]
        )
    shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
    if shapes(variables) != shapes(fresh):
        raise workdir_lib.WorkdirError(
            f"the encoder in init.workdir={config.init.workdir!r} does not fit this model "
            f"(model.arch={config.model.arch!r}, model.bn={config.model.bn!r}): use the same "
            "architecture as the pre-training run"
        )
    return variables


def torch_variables(config, model, *, finetune: bool) -> dict:
    """ascl_jax variables of `model` from the PyTorch checkpoint `config.init.torch_checkpoint`
    (ascl_jax.torchio; a dual-BN checkpoint gives a single-BN model its `init.bn_branch` set).
    finetune: read the encoder only (plus the classifier unless `init.reset_classifier`; a zero
    classifier stands in otherwise) and ignore the checkpoint's other keys (e.g. ACL's projection
    head); else read every part of the model and refuse keys that fit none."""
    from ascl_jax import torchio

    path = config.init.torch_checkpoint
    if finetune:
        parts = ("encoder",) if config.init.reset_classifier else ("encoder", "classifier")
    else:
        parts = ("encoder", "head", "classifier") if model.head != "identity" else ("encoder", "classifier")
    variables, unused = torchio.load_variables(
        path, model, bn_branch=config.init.bn_branch, parts=parts, strict=not finetune
    )
    if unused:
        log.info("init.torch_checkpoint: %d keys not read (e.g. %s)", len(unused), unused[:3])
    if "classifier" not in variables["params"]:
        clf = torchio.template(model)["params"]["classifier"]
        variables["params"]["classifier"] = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), clf)
    return variables


def check_torch_checkpoint(config) -> None:
    """`config.init.torch_checkpoint`, when set, exists: a local file (`config.validate` checks it)
    or a gs:// / s3:// object (through `ascl_jax.storage`). Raises ConfigError naming the field."""
    p = config.init.get("torch_checkpoint", "")
    if not p or not storage.is_remote(p):
        return
    try:
        there = storage.path(p).exists()
    except (storage.StorageError, OSError, ImportError) as e:
        raise config_lib.ConfigError(f"config.init.torch_checkpoint={p!r} cannot be read: {e}") from e
    if not there:
        raise config_lib.ConfigError(f"config.init.torch_checkpoint={p!r} does not exist")


def torch_run(config, mesh=None):
    """(config, model, state) of `config` with its variables from `config.init.torch_checkpoint`
    (every part of the model; `--mode=evaluate` of a PyTorch checkpoint), replicated over `mesh`."""
    config_lib.validate(config)
    check_torch_checkpoint(config)
    model, info = build_model(config)
    mesh = mesh or parallel.make_mesh()
    variables = torch_variables(config, model, finetune=False)
    state_fn, _ = initial_state_fn(config, model, info["image_shape"], variables)
    state = jax.jit(state_fn, out_shardings=parallel.replicated(mesh))()
    return config, model, state


class LastBatchPlan(NamedTuple):
    """The last batch of an epoch (`data.drop_remainder=False`), per input stream (process).

    real: real rows of the last batch per stream (the full local batch when there is no
    remainder); size: rows each stream feeds at the last step (equal for all streams, the real
    rows padded so that the global batch divides over the devices); masked: whether that batch
    carries 'mask' (True as soon as any stream pads)."""

    real: tuple[int, ...]
    size: int
    masked: bool


def last_batch_plan(
    config, device_count: int | None = None, stream_count: int | None = None
) -> LastBatchPlan:
    """The :class:`LastBatchPlan` of `config` for `device_count` global devices (default: all) and
    `stream_count` input streams (default: `config.input_processes` or the process count).

    Each stream pads its last batch to the smallest multiple of device_count / gcd(device_count,
    stream_count) holding its real rows (so the global batch divides over the devices). Raises
    ConfigError (naming `data.batch_size` and the split size) for a batch larger than the
    training split, or a last batch of fewer real rows than devices."""
    d = device_count or jax.device_count()
    k = stream_count or config.input_processes or jax.process_count()
    semi = config.method == "semi_student"
    if semi:
        n_l = config.semi.labelled_batch
        layout = data.epoch_layout(
            config.data, process_count=k, subset="unlabelled", batch_size=config.data.batch_size - n_l
        )
        fixed = n_l // k
    else:
        layout = data.epoch_layout(config.data, process_count=k, subset=config.train_subset or None)
        fixed = 0
    full = layout.b_local + fixed
    real = tuple(r + fixed for r in layout.last_local)
    if all(r == full for r in real):
        return LastBatchPlan(real, full, False)
    total = sum(real)
    if total < d:
        raise config_lib.ConfigError(
            f"config.data.batch_size={config.data.batch_size}: the training split of {layout.pool} "
            f"examples leaves a last batch of {total} per epoch, fewer than the {d} devices; choose "
            "a batch size whose remainder is 0 or at least the device count, or set "
            "data.drop_remainder=True"
        )
    q = d // math.gcd(d, k)
    size = -(-max(real) // q) * q
    return LastBatchPlan(real, size, any(r != size for r in real))


def train_batches(config, start_step: int, device_count: int | None = None):
    """This process's batches from `start_step` on. With `config.input_processes` = k > 1 in a
    single process, the k per-process streams of a k-process run are read and concatenated, so a
    one-process run sees exactly the global batches of a k-process run. The last batch of an epoch
    with a kept remainder is padded as `last_batch_plan(config, device_count)` says (with 'mask'
    bool [b] when padded); every other batch is full and has no 'mask'."""
    k = config.input_processes or jax.process_count()
    plan = last_batch_plan(config, device_count, k if jax.process_count() == 1 else jax.process_count())
    if jax.process_count() > 1 or k == 1:
        yield from _process_batches(config, start_step, jax.process_index(), jax.process_count(), plan)
        return
    its = [_process_batches(config, start_step, p, k, plan) for p in range(k)]
    while True:
        parts = [next(it) for it in its]
        yield {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _process_batches(config, start_step, process_index, process_count, plan=None):
    kw = dict(
        seed=config.seed, start_step=start_step, process_index=process_index, process_count=process_count
    )
    if config.method != "semi_student":
        last = plan.size if plan is not None and plan.masked else None
        yield from data.make_train_iterator(
            config.data, subset=config.train_subset or None, last_batch=last, **kw
        )
        return
    yield from semi_student_batches(config, plan=plan, **kw)


def semi_student_batches(config, plan=None, **kw):
    """ACL semi-supervised step iii (SPEC 3.7): per step `config.semi.labelled_batch` labelled rows
    then `data.batch_size - labelled_batch` unlabelled rows, with the teacher's soft pseudo-labels
    (`config.semi.pseudo_labels`: .npz of 'index', 'logits') looked up by example index.

    An epoch is a pass over the unlabelled pool (its last batch kept or dropped as
    `data.drop_remainder` says, padded per `plan`, a `LastBatchPlan`); the labelled sub-batches
    cycle over their own pool with incomplete batches dropped, so the labelled part is always
    `labelled_batch` rows (the authors size both loaders to the same number of batches, SPEC 3.7).

    Yields {'image', 'label' (true labels, then argmax pseudo-labels), 'teacher_logits' [b, C],
    'labelled' bool [b]} (+ 'mask' bool [b] on a padded last batch). kw:
    `data.make_train_iterator`'s seed, start_step, process_index/count."""
    with np.load(io.BytesIO(storage.path(config.semi.pseudo_labels).read_bytes())) as f:
        table = np.zeros((int(f["index"].max()) + 1, f["logits"].shape[1]), np.float32)
        table[f["index"]] = f["logits"]
    n_l = config.semi.labelled_batch
    last = None
    if plan is not None and plan.masked:
        last = plan.size - n_l // kw["process_count"]
    lab = data.make_train_iterator(config.data, subset="labelled", batch_size=n_l, drop_remainder=True, **kw)
    unl = data.make_train_iterator(
        config.data, subset="unlabelled", batch_size=config.data.batch_size - n_l, last_batch=last, **kw
    )
    for bl, bu in zip(lab, unl):
        t_l, t_u = table[bl["index"]], table[bu["index"]]
        batch = {
            "image": np.concatenate([bl["image"], bu["image"]]),
            "label": np.concatenate([bl["label"], t_u.argmax(-1).astype(np.int32)]),
            "teacher_logits": np.concatenate([t_l, t_u]),
            "labelled": np.concatenate([np.ones(len(t_l), bool), np.zeros(len(t_u), bool)]),
        }
        if "mask" in bu:
            batch["mask"] = np.concatenate([np.ones(len(t_l), bool), bu["mask"]])
        yield batch
