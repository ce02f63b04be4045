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

from ascl_jax import checkpointing, data, models, parallel
from ascl_jax import config as config_lib
from ascl_jax.train import steps as train_steps
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
    if config.method == "semi_student":  # an epoch is one pass over the unlabelled pool
        spe = data.steps_per_epoch(config.data, subset="unlabelled",
                                   batch_size=config.data.batch_size - config.semi.labelled_batch)
    else:
        spe = data.steps_per_epoch(config.data, subset=config.train_subset or None)
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
    to zero (ACL's cvt_state_dict) when `init.reset_classifier`."""
    _, _, pre = restore_run(config.init.workdir)
    variables = {"params": jax.device_get(pre.params), "batch_stats": jax.device_get(pre.batch_stats)}
    if models.has_dual_bn(variables) and config.model.bn == "single":
        variables = models.select_bn_branch(variables, config.init.bn_branch)
    variables = models.strip_head(variables)
    fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *image_shape)),
                                              train=False))
    fresh = {"params": fresh["params"], "batch_stats": fresh.get("batch_stats", {})}
    if config.init.reset_classifier:
        variables = models.reset_classifier(
            variables, num_classes=fresh["params"]["classifier"]["bias"].shape[0])
    shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
    if shapes(variables) != shapes(fresh):
        raise checkpointing.WorkdirError(
            f"the encoder in init.workdir={config.init.workdir!r} does not fit this model "
            f"(model.arch={config.model.arch!r}, model.bn={config.model.bn!r}): use the same "
            "architecture as the pre-training run")
    return variables


def train_batches(config, start_step: int):
    """This process's batches from `start_step` on. With `config.input_processes` = k > 1 in a
    single process, the k per-process streams of a k-process run are read and concatenated, so a
    one-process run sees exactly the global batches of a k-process run."""
    k = config.input_processes or jax.process_count()
    if jax.process_count() > 1 or k == 1:
        yield from _process_batches(config, start_step, jax.process_index(), jax.process_count())
        return
    its = [_process_batches(config, start_step, p, k) for p in range(k)]
    while True:
        parts = [next(it) for it in its]
        yield {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _process_batches(config, start_step, process_index, process_count):
    kw = dict(seed=config.seed, start_step=start_step, process_index=process_index,
              process_count=process_count)
    if config.method != "semi_student":
        yield from data.make_train_iterator(config.data, subset=config.train_subset or None, **kw)
        return
    # ACL semi-supervised step iii: a labelled and an unlabelled sub-batch per step (SPEC 3.7),
    # with the teacher's soft pseudo-labels looked up by example index.
    with np.load(config.semi.pseudo_labels) as f:
        table = np.zeros((int(f["index"].max()) + 1, f["logits"].shape[1]), np.float32)
        table[f["index"]] = f["logits"]
    n_l = config.semi.labelled_batch
    lab = data.make_train_iterator(config.data, subset="labelled", batch_size=n_l, **kw)
    unl = data.make_train_iterator(config.data, subset="unlabelled",
                                   batch_size=config.data.batch_size - n_l, **kw)
    for bl, bu in zip(lab, unl):
        t_l, t_u = table[bl["index"]], table[bu["index"]]
        yield {"image": np.concatenate([bl["image"], bu["image"]]),
               "label": np.concatenate([bl["label"], t_u.argmax(-1).astype(np.int32)]),
               "teacher_logits": np.concatenate([t_l, t_u]),
               "labelled": np.concatenate([np.ones(len(t_l), bool), np.zeros(len(t_u), bool)])}


def _mean_metrics(buffer):
    host = jax.device_get(buffer)
    keys = sorted(set().union(*[m.keys() for m in host]))
    return {k: float(np.mean([m[k] for m in host if k in m])) for k in keys}


def train_and_evaluate(config, workdir: str, *, mesh=None, stop_after_steps: int | None = None,
                       evaluate: bool = True) -> dict:
    """Trains `config` into `workdir` (resuming if it holds a checkpoint) and evaluates it.

    mesh: the ('data',) mesh (default: all devices). stop_after_steps: stop (with a checkpoint)
    after this many steps of this invocation, as a preemption would; a later call with the same
    workdir resumes. Returns the report (also written to workdir/report.json)."""
    if config.method == "semi_supervised":
        from ascl_jax.train import semisup
        return semisup.run(config, workdir)
    t_start = time.time()
    config_lib.validate(config)
    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_divides(config.data.batch_size, mesh=mesh)
    resuming = checkpointing.check_or_write_config(config, workdir)
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    model, info = build_model(config)
    spe, n_steps = total_steps(config)
    key = jax.random.key(config.seed)

    variables = None
    if config.init.workdir:
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
    batches = train_batches(config, start)
    writer = _metric_writer(workdir)
    is_main = jax.process_index() == 0
    bar = None
    if config.progress_bar and is_main and start < n_steps:
        from tqdm import tqdm
        bar = tqdm(total=n_steps, initial=start, desc=config.name, dynamic_ncols=True)

    buffer, summary, last_good = [], {}, start
    t_first = step_first = None
    end = n_steps if stop_after_steps is None else min(n_steps, start + stop_after_steps)
    with jax.set_mesh(mesh):
        for step in range(start, end):
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
            if done % config.checkpoint_every_steps == 0 or done in (n_steps, end):
                _guard_finite(_mean_metrics([metrics]), done, last_good, workdir)
                checkpointing.save(mngr, done, state, force=True)
                last_good = done
        jax.block_until_ready(state)
    throughput = None
    if step_first is not None and end > step_first:
        throughput = (end - step_first) * config.data.batch_size / (time.time() - t_first)
    mngr.wait_until_finished()
    if bar is not None:
        bar.close()
    writer.flush()
    if end < n_steps:  # stopped part way: resume later with the same workdir
        return {"stopped_at_step": end, "state": state}
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
    backup = checkpointing.write_json_keeping_old(os.path.join(workdir, "report.json"), report)
    if backup:
        log.info("the previous report.json was kept as %s", backup)
    if evaluate:
        with jax.set_mesh(mesh):
            report.update(evaluate_state(config, model, state, workdir, mesh))
    report["wall_seconds"] = time.time() - t_start
    _merge_report(workdir, report)
    report = dict(_previous_report(workdir), **report) if jax.process_index() == 0 else report
    report["state"] = state
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


# --------------------------------------------------------------------------------------------
# Evaluation and analysis of a trained state


def _merge_report(workdir, updates):
    """Merges `updates` into workdir/report.json (process 0; atomic)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "report.json")
    report = _previous_report(workdir)
    report.update(updates)
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=float)
    os.replace(path + ".tmp", path)


def _logits_fn(model, bn):
    return lambda variables, x: model.apply(variables, x, train=False, bn=bn)["logits"]


def evaluate_state(config, model, state, workdir, mesh) -> dict:
    """Clean / PGD / mPGD / AutoAttack on the test split (config.eval) -> eval.json,
    per_example.npz, and the headline numbers for report.json; then the analysis when enabled."""
    from ascl_jax import evaluation
    ce = config.eval
    attacks_ = [a for a in ce.attacks if not (a == "autoattack" and ce.autoattack == "none")]
    if not attacks_:
        return {}
    n = ce.num_examples if ce.num_examples > 0 else None
    images, labels = data.load_eval_arrays(config.data, "test", n)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    res = evaluation.evaluate(
        _logits_fn(model, ce.bn_branch), images, labels, params=variables, attacks=tuple(attacks_),
        eps=ce.eps, step_size=ce.step_size, pgd_steps=ce.pgd_steps, pgd_restarts=ce.pgd_restarts,
        mpgd_steps=ce.mpgd_steps, version=ce.autoattack if ce.autoattack != "none" else "fast",
        batch_size=config.data.eval_batch_size, autoattack_examples=ce.autoattack_examples,
        seed=config.seed, mesh=mesh, progress=config.progress_bar and jax.process_index() == 0,
        eps_sweep=tuple(ce.eps_sweep) or None, sanity=ce.sanity)
    evaluation.write_eval_json(workdir, res)
    out = dict(clean_accuracy=res["clean_accuracy"], robust_accuracy=res["robust_accuracy"],
               overall_robust_accuracy=res["overall"]["robust_accuracy"],
               eval_eps=res["eps"], sanity=evaluation.summary(res).get("sanity"))
    if config.analysis.enabled:
        out["analysis"] = analyze_state(config, model, state, workdir, mesh, images, labels,
                                        eval_results=res)
        if out["analysis"].get("r_div"):
            out["r_div"] = out["analysis"]["r_div"]
    return out


def latents(config, model, state, images, labels, mesh, *, eps):
    """Penultimate features z of images and of their PGD-k (config.eval.pgd_steps) examples."""
    from ascl_jax import attacks
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    ce = config.eval
    dsh = parallel.data_sharded(mesh)
    b = config.data.eval_batch_size

    @jax.jit
    def run(x, y, key):
        fwd = attacks.model_forward(model, variables, bn=ce.bn_branch, bn_mode="eval", output=None)
        x_adv = attacks.pgd_linf(attacks.ce_objective(lambda v: fwd(v)["logits"], y), x, key,
                                 eps=eps, step_size=ce.step_size, num_steps=ce.pgd_steps)
        return fwd(x)["z"], fwd(x_adv)["z"]

    zs, zas = [], []
    n = len(labels)
    for i in range(0, n, b):
        x, y = images[i:i + b], labels[i:i + b]
        pad = b - len(y)
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad,), y.dtype)])
        z, za = run(jax.device_put(x, dsh), jax.device_put(y, dsh),
                    jax.random.fold_in(jax.random.key(config.seed), i))
        zs.append(np.asarray(z)[:b - pad])
        zas.append(np.asarray(za)[:b - pad])
    return np.concatenate(zs), np.concatenate(zas)


def analyze_state(config, model, state, workdir, mesh, images, labels, eval_results=None) -> dict:
    """R-DIV (ASCL §2) of benign vs PGD latents, the plots of ASCL Figs. 3-5 and 7 into
    workdir/plots, and the selection counts over training (Fig. 4) from metrics.jsonl."""
    from ascl_jax import analysis
    m = min(config.analysis.num_examples, len(labels))
    x, y = images[:m], labels[:m]
    z_nat, z_adv = latents(config, model, state, x, y, mesh, eps=config.eval.eps)
    sweep = None
    if eval_results and eval_results.get("sanity"):
        fall = eval_results["sanity"].get("checks", eval_results["sanity"]).get("accuracy_falls_with_eps")
        if isinstance(fall, dict) and "eps" in fall:
            sweep = {config.name: (list(fall["eps"]), list(fall["accuracy"]))}
    report = dict(_previous_report(workdir))
    if eval_results:
        report.update(clean_accuracy=eval_results["clean_accuracy"],
                      robust_accuracy=eval_results["robust_accuracy"])
    metrics = os.path.join(workdir, "metrics.jsonl")
    res = analysis.run_analysis(
        workdir, z_nat=z_nat, z_adv=z_adv, labels=y, eps_sweep_results=sweep,
        metrics_path=metrics if os.path.exists(metrics) else None, report=report,
        model_name=config.name, tsne_max_points=config.analysis.tsne_points, seed=config.seed)
    return {k: res[k] for k in ("plots", "r_div", "skipped", "errors") if k in res}


def evaluate_workdir(workdir: str, override_config=None) -> dict:
    """`--mode=evaluate`: the latest checkpoint of `workdir`, evaluated with its config's eval
    settings (or those of `override_config`, e.g. to run AutoAttack-standard later)."""
    mesh = parallel.make_mesh()
    config, model, state = restore_run(workdir, mesh)
    if override_config is not None:
        config.unlock()
        config.eval = override_config.eval
        config.analysis = override_config.analysis
    with jax.set_mesh(mesh):
        out = evaluate_state(config, model, state, workdir, mesh)
    _merge_report(workdir, out)
    return dict(_previous_report(workdir), **out)


def analyze_workdir(workdir: str) -> dict:
    """`--mode=analyze`: R-DIV, plots and summary for the latest checkpoint of `workdir`."""
    mesh = parallel.make_mesh()
    config, model, state = restore_run(workdir, mesh)
    n = config.eval.num_examples if config.eval.num_examples > 0 else None
    images, labels = data.load_eval_arrays(config.data, "test", n)
    with jax.set_mesh(mesh):
        out = analyze_state(config, model, state, workdir, mesh, images, labels)
    _merge_report(workdir, {"analysis": out, "r_div": out.get("r_div")})
    return dict(_previous_report(workdir))
