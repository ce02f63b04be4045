"""The run: `train_and_evaluate(config, workdir)`.

mesh -> data (per-process, deterministic, resumable) -> state (replicated, or restored) ->
jitted step loop (metrics fetched every `log_every_steps`, NaN/Inf guard, orbax checkpoints every
`checkpoint_every_steps` and at the end) -> evaluation (clean, PGD, ...) -> report.json.
"""
from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ascl_jax import checkpointing, config_lib, data, models, parallel, train_steps
from ascl_jax.optim import make_optimizer
from ascl_jax.state import TrainState, create_train_state

log = logging.getLogger("ascl_jax")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def build_model(config):
    info = data.dataset_info(config.data)
    model = models.build_model(config.model, num_classes=info["num_classes"],
                               image_shape=info["image_shape"])
    return model, info


def total_steps(config) -> tuple[int, int]:
    spe = data.steps_per_epoch(config.data)
    n = config.num_train_steps if config.num_train_steps > 0 else config.optim.num_epochs * spe
    return spe, int(n)


def make_tx(config, spe, n_steps, params=None):
    tx, schedule = make_optimizer(config.optim, spe, n_steps)
    if config.method == "linear_eval":
        labels = jax.tree.map(lambda keep: "train" if keep else "freeze",
                              train_steps.trainable_mask(params))
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return tx, schedule


def abstract_state(config):
    """The state's structure (shapes only) for `config`, used to restore a checkpoint."""
    model, info = build_model(config)
    spe, n = total_steps(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *info["image_shape"])),
                                               train=False))
    tx, _ = make_tx(config, spe, n, shapes["params"])
    return jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0), info["image_shape"]))


def restore_run(workdir: str, mesh=None):
    """(config, model, state) of the latest checkpoint of a workdir, replicated over `mesh`."""
    config = checkpointing.load_config(workdir)
    model, _ = build_model(config)
    mesh = mesh or parallel.make_mesh()
    abstract = abstract_state(config)
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                           sharding=parallel.replicated(mesh)),
                            abstract)
    mngr = checkpointing.make_manager(workdir, save_every=1, max_to_keep=config.max_checkpoints)
    if mngr.latest_step() is None:
        raise checkpointing.WorkdirError(f"{workdir} holds no checkpoint (checkpoints/ is empty)")
    state = checkpointing.restore(mngr, abstract)
    return config, model, state


def pretrained_variables(config, model, image_shape):
    """Variables for fine-tuning / linear evaluation from `config.init.workdir` (ACL Tables 4, 5):
    the chosen BN set of a dual-BN encoder, projection head dropped, classifier re-initialised
    (zero, as ACL's cvt_state_dict) when `init.reset_classifier`."""
    _, _, pre = restore_run(config.init.workdir)
    variables = {"params": jax.device_get(pre.params), "batch_stats": jax.device_get(pre.batch_stats)}
    if models.has_dual_bn(variables) and config.model.bn == "single":
        variables = models.select_bn_branch(variables, config.init.bn_branch)
    fresh = jax.device_get(model.init(jax.random.key(config.seed),
                                      jnp.zeros((2, *image_shape)), train=False))
    return models.transfer_encoder(variables, fresh, reset_classifier=config.init.reset_classifier)


def _mean_metrics(buffer):
    host = jax.device_get(buffer)
    keys = sorted(set().union(*[m.keys() for m in host]))
    return {k: float(np.mean([m[k] for m in host if k in m])) for k in keys}


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains `config` into `workdir` (resuming if it holds a checkpoint) and evaluates it."""
    t_start = time.time()
    config_lib.validate(config)
    parallel.check_batch_divides(config.data.batch_size)
    resuming = checkpointing.check_or_write_config(config, workdir)
    mesh = parallel.make_mesh()
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    model, info = build_model(config)
    spe, n_steps = total_steps(config)
    key = jax.random.key(config.seed)

    variables = None
    if config.method in ("trades_finetune", "linear_eval"):
        variables = pretrained_variables(config, model, info["image_shape"])
    params_shape = jax.eval_shape(lambda: model.init(key, jnp.zeros((2, *info["image_shape"])),
                                                     train=False))["params"]
    tx, schedule = make_tx(config, spe, n_steps, params_shape)
    state = jax.jit(lambda: create_train_state(model, tx, key, info["image_shape"], variables),
                    out_shardings=repl)()
    mngr = checkpointing.make_manager(workdir, save_every=config.checkpoint_every_steps,
                                      max_to_keep=config.max_checkpoints)
    start = 0
    if mngr.latest_step() is not None:
        state = checkpointing.restore(mngr, state)
        start = int(jax.device_get(state.step))
        log.info("resumed %s from step %d", workdir, start)
    elif resuming:
        log.info("workdir %s has a config but no checkpoint: starting from step 0", workdir)

    step_fn = train_steps.make_train_step(config, model, state_sharding=repl, data_sharding=dsh)
    batches = data.make_train_iterator(config.data, seed=config.seed, start_step=start,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
    writer = _metric_writer(workdir)
    is_main = jax.process_index() == 0
    bar = None
    if config.progress_bar and is_main and start < n_steps:
        from tqdm import tqdm
        bar = tqdm(total=n_steps, initial=start, desc=config.name, dynamic_ncols=True)

    buffer, summary, last_good = [], {}, start
    t_first = step_first = None
    with jax.set_mesh(mesh):
        for step in range(start, n_steps):
            batch = parallel.to_global(next(batches), dsh)
            state, metrics = step_fn(state, batch)
            buffer.append(metrics)
            done = step + 1
            if step == start:  # the first step compiles: time from its end
                jax.block_until_ready(metrics)
                t_first, step_first = time.time(), done
            if done % config.log_every_steps == 0 or done == n_steps:
                summary = _mean_metrics(buffer)  # the only host sync of the loop
                buffer = []
                _guard_finite(summary, done, last_good, workdir)
                summary["learning_rate"] = float(schedule(done - 1))
                _log_metrics(writer, workdir, done, summary)
            if bar is not None:
                bar.update(1)
                if summary:
                    bar.set_postfix(loss=f"{summary.get('loss', float('nan')):.4f}", refresh=False)
            if done % config.checkpoint_every_steps == 0 or done == n_steps:
                _guard_finite(_mean_metrics([metrics]), done, last_good, workdir)
                checkpointing.save(mngr, done, state, force=True)
                last_good = done
        jax.block_until_ready(state)
    throughput = None
    if step_first is not None and n_steps > step_first:
        throughput = (n_steps - step_first) * config.data.batch_size / (time.time() - t_first)
    mngr.wait_until_finished()
    if bar is not None:
        bar.close()
    writer.flush()
    if throughput is None:  # resumed at the end: keep the figure of the run that trained
        throughput = _previous_report(workdir).get("train_images_per_second")
    report = dict(config=config.name, method=config.method, dataset=config.data.name,
                  arch=config.model.arch, steps=n_steps, train_images_per_second=throughput,
                  final_train_metrics=summary or _previous_report(workdir).get("final_train_metrics", {}))
    for k in ("num_positives_nat", "num_positives_adv", "num_negatives_nat", "num_negatives_adv"):
        if k in report["final_train_metrics"]:
            report[k] = report["final_train_metrics"][k]
    if "num_positives_nat" in report:
        report["num_positives"] = (report["num_positives_nat"] + report["num_positives_adv"]) / 2
        report["num_negatives"] = (report["num_negatives_nat"] + report["num_negatives_adv"]) / 2
    with jax.set_mesh(mesh):
        report.update(evaluate_state(config, model, state, workdir, mesh))
    report["wall_seconds"] = time.time() - t_start
    backup = checkpointing.write_json_keeping_old(os.path.join(workdir, "report.json"), report)
    if backup:
        log.info("the previous report.json was kept as %s", backup)
    return report


def _previous_report(workdir):
    path = os.path.join(workdir, "report.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def _metric_writer(workdir):
    from clu import metric_writers
    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def _log_metrics(writer, workdir, step, summary):
    writer.write_scalars(step, summary)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(dict(step=step, **summary)) + "\n")


def _guard_finite(summary, step, last_good, workdir):
    bad = [k for k, v in summary.items() if not np.isfinite(v)]
    if bad:
        raise NonFiniteLossError(
            f"{', '.join(bad)} became NaN/Inf by step {step}. Stopped; the last good checkpoint "
            f"(step {last_good}) in {workdir}/checkpoints is kept. Lower the learning rate or "
            "check the inputs.")
