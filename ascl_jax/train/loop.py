"""The run of one config: `train_and_evaluate(config, workdir) -> RunResult(report, state)`.

mesh -> data (per-process, deterministic, resumable) -> state (replicated, or restored) ->
jitted step loop (metrics fetched every `log_every_steps`, NaN/Inf guard, checkpoint selection
every `eval.select_every` epochs with `eval.checkpoint='best'` (`selection`), orbax checkpoints
every `checkpoint_every_steps`, at the end and on SIGTERM (`preemption`)) -> evaluation of the last
and the best checkpoint (`run_eval.evaluate_run`) -> report.json.

A checkpoint saved inside a logging window stores that window's per-step metrics in its orbax
metadata, so a run resumed from it logs exactly the lines (and final metrics) of an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import jax
import numpy as np

from ascl_jax import checkpointing, parallel, storage
from ascl_jax import config as config_lib
from ascl_jax import workdir as workdir_lib
from ascl_jax.train import preemption, run_eval, selection
from ascl_jax.train import steps as train_steps
from ascl_jax.train.setup import (
    build_model,
    check_torch_checkpoint,
    initial_state_fn,
    last_batch_plan,
    pretrained_variables,
    total_steps,
    train_batches,
)
from ascl_jax.train.state import TrainState

log = logging.getLogger("ascl_jax")

COUNT_KEYS = ("num_positives_nat", "num_positives_adv", "num_negatives_nat", "num_negatives_adv")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class RunResult(NamedTuple):
    """report: the run's report (`workdir.Report` keys; on process 0 what report.json holds).
    state: the final TrainState, replicated over the mesh."""

    report: dict
    state: TrainState


def train_and_evaluate(
    config, workdir: str, *, mesh=None, stop_after_steps: int | None = None, evaluate: bool = True
) -> RunResult:
    """Trains `config` into `workdir` (resuming if it holds a checkpoint) and evaluates it.

    mesh: the ('data',) mesh (default: all devices). stop_after_steps: stop (with a checkpoint)
    after this many steps of this invocation, as a preemption would; a later call with the same
    workdir resumes, and the report is {'stopped_at_step': step} (report.json is not written).
    evaluate: run `config.eval` (and the analysis) after training. A finished run writes
    report.json (keeping a previous one as report.<timestamp>.json).

    SIGTERM (`preemption.Watcher`) stops the loop after the step being computed, at a step every
    process agrees on; that step is checkpointed, metrics.jsonl is complete up to it, and
    `preemption.Preempted` is raised (the command line exits with PREEMPTED_EXIT_CODE). Raises
    ConfigError / WorkdirError / NonFiniteLossError as their docs say."""
    if config.method == "semi_supervised":
        raise config_lib.ConfigError(
            "config.method='semi_supervised' runs three stages: use ascl_jax.train.run(config, workdir)"
        )
    t_start = time.time()
    config_lib.validate(config)
    check_torch_checkpoint(config)
    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_divides(config.data.batch_size, mesh=mesh)
    last_batch_plan(config, mesh.devices.size)  # a bad last batch is a ConfigError before training
    run_eval.check_corruption_data(config)  # missing CIFAR-10-C data fails before training
    selection.check(config, *total_steps(config))  # before anything is written
    resuming = workdir_lib.check_or_write_config(config, workdir)
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    model, info = build_model(config)
    spe, n_steps = total_steps(config)

    variables = None
    if config.init.workdir or config.init.get("torch_checkpoint"):
        variables = pretrained_variables(config, model, info["image_shape"])
    state_fn, schedule = initial_state_fn(config, model, info["image_shape"], variables)
    state = jax.jit(state_fn, out_shardings=repl)()
    mngr = checkpointing.make_manager(
        workdir, save_every=config.checkpoint_every_steps, max_to_keep=config.max_checkpoints
    )
    start, buffer = 0, []
    if mngr.latest_step() is not None:
        selection.check_resume(config, workdir)  # before anything is written
        state = checkpointing.restore(mngr, state)
        start = int(parallel.to_host(state.step))
        buffer = _window_from_metadata(checkpointing.step_metadata(mngr, start))
        log.info("resumed %s from step %d", workdir, start)
    elif resuming:
        log.info("workdir %s has a config but no checkpoint: starting from step 0", workdir)

    selector = None
    if selection.enabled(config):
        selector = selection.Selector(config, model, workdir, mesh, spe, n_steps)
    step_fn = train_steps.make_train_step(config, model, state_sharding=repl, data_sharding=dsh)
    batches = train_batches(config, start, mesh.devices.size)
    writer = _metric_writer(workdir)
    is_main = jax.process_index() == 0
    bar = None
    if config.progress_bar and is_main and start < n_steps:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, initial=start, desc=config.name, dynamic_ncols=True)

    summary, last_good, preempted = {}, start, False
    t_first = step_first = None
    end = n_steps if stop_after_steps is None else min(n_steps, start + stop_after_steps)
    with jax.set_mesh(mesh), preemption.Watcher() as watcher:
        for step in range(start, end):
            batch = parallel.to_global(next(batches), dsh)
            state, metrics = step_fn(state, batch)
            buffer.append(metrics)
            done = step + 1
            if step == start:  # the first step compiles: time from its end
                jax.block_until_ready(metrics)
                t_first, step_first = time.time(), done
            if done % config.log_every_steps == 0 or done == n_steps:
                summary = _mean_metrics(buffer)  # fetches the window's metrics to the host
                buffer = []
                _guard_finite(summary, done, last_good, workdir)
                summary["learning_rate"] = float(schedule(done - 1))
                writer.write_scalars(done, summary)
                workdir_lib.append_metrics(workdir, done, summary)
            if bar is not None:
                bar.update(1)
                if summary:
                    bar.set_postfix(loss=f"{summary.get('loss', float('nan')):.4f}", refresh=False)
            stop = watcher.reached(done)  # every process, every step (the sync point's contract)
            if selector is not None and selector.due(done):
                line = selector.update(done, state)
                writer.write_scalars(done, {selector.key: line[selector.key]})
            if done % config.checkpoint_every_steps == 0 or done in (n_steps, end) or stop:
                _guard_finite(_mean_metrics([metrics]), done, last_good, workdir)
                checkpointing.save_with_metadata(mngr, done, state, _window_metadata(buffer))
                last_good = done
            if stop:
                preempted, end = True, done
                break
        jax.block_until_ready(state)
    throughput = None
    if step_first is not None and end > step_first:
        throughput = (end - step_first) * config.data.batch_size / (time.time() - t_first)
    mngr.wait_until_finished()
    if bar is not None:
        bar.close()
    writer.flush()
    if preempted:
        log.warning("preempted: checkpoint of step %d saved in %s", end, workdir)
        raise preemption.Preempted(end, workdir)
    if end < n_steps:  # stopped part way: resume later with the same workdir
        return RunResult({"stopped_at_step": end}, state)

    report = _train_report(config, workdir, n_steps, throughput, summary)
    if selector is not None:
        report["selection"] = selector.summary()
    workdir_lib.write_report(workdir, report)
    if evaluate:
        with jax.set_mesh(mesh):
            report.update(run_eval.evaluate_run(config, model, state, workdir, mesh, last_step=n_steps))
    report["wall_seconds"] = time.time() - t_start
    return RunResult(workdir_lib.update_report(workdir, report), state)


def _train_report(config, workdir, n_steps, throughput, summary) -> dict:
    """The report's training keys. A run resumed at its end (no step trained now) keeps the
    throughput and final metrics of the invocation that trained."""
    previous = workdir_lib.read_report(workdir) if throughput is None or not summary else {}
    if throughput is None:
        throughput = previous.get("train_images_per_second")
    report = dict(
        config=config.name,
        method=config.method,
        dataset=config.data.name,
        arch=config.model.arch,
        steps=n_steps,
        train_images_per_second=throughput,
        final_train_metrics=summary or previous.get("final_train_metrics", {}),
    )
    for k in COUNT_KEYS:
        if k in report["final_train_metrics"]:
            report[k] = report["final_train_metrics"][k]
    if "num_positives_nat" in report:
        report["num_positives"] = (report["num_positives_nat"] + report["num_positives_adv"]) / 2
        report["num_negatives"] = (report["num_negatives_nat"] + report["num_negatives_adv"]) / 2
    return report


def _window_metadata(buffer) -> dict:
    """The per-step metrics of a logging window not yet logged, as JSON (values and dtypes)."""
    if not buffer:
        return {}
    host = jax.device_get(buffer)
    dtypes = {k: str(np.asarray(v).dtype) for m in host for k, v in m.items()}
    return {"log_window": [{k: float(v) for k, v in m.items()} for m in host], "log_window_dtypes": dtypes}


def _window_from_metadata(meta: dict) -> list:
    """The inverse of `_window_metadata`: the window's per-step metrics, bit-equal host arrays."""
    dtypes = meta.get("log_window_dtypes", {})
    return [{k: np.asarray(v, dtypes[k]) for k, v in m.items()} for m in meta.get("log_window", [])]


def _mean_metrics(buffer):
    host = parallel.to_host(buffer)
    keys = sorted(set().union(*[m.keys() for m in host]))
    return {k: float(np.mean([m[k] for m in host if k in m])) for k in keys}


def _metric_writer(workdir):
    return storage.ScalarWriter(workdir)  # TensorBoard scalars, process 0 only


def _guard_finite(summary, step, last_good, workdir):
    bad = [k for k, v in summary.items() if not np.isfinite(v)]
    if bad:
        raise NonFiniteLossError(
            f"{', '.join(bad)} became NaN/Inf by step {step}. Stopped; the last good checkpoint "
            f"(step {last_good}) in {workdir}/checkpoints is kept. Lower the learning rate or "
            "check the inputs."
        )
