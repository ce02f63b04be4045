"""Evaluation and analysis of a run's trained state, into its workdir.

evaluate_state: clean / PGD / mPGD / AutoAttack on the test split (`config.eval`) -> eval.json,
per_example.npz and report.json's 'eval', then the analysis when `config.analysis.enabled`.
analyze_state: R-DIV (ASCL §2) of benign vs PGD latents, the plots of ASCL Figs. 3-5 and 7.
evaluate_run: the last and (when kept, `eval.checkpoint='best'`) the best checkpoint of a run: the
headline (`eval.checkpoint`) through evaluate_state, the other one with the same attacks (sanity
checks and eps sweep off), both in report.json's / eval.json's 'checkpoints'.
evaluate_corruptions: accuracy on CIFAR-10-C (`config.eval.corruptions`, ACL §3 Fig. 2) -> eval.json's
'corruptions' and report.json's summary of it.
evaluate_workdir / analyze_workdir: the same for a workdir's checkpoints (the CLI's --mode=evaluate
and --mode=analyze; analysis of the headline checkpoint), merged into its report.json.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import analysis, attacks, data, evaluation, parallel, storage
from ascl_jax import config as config_lib
from ascl_jax import workdir as workdir_lib
from ascl_jax.train import selection
from ascl_jax.train.setup import restore_run, torch_run, total_steps


def _variables(state):
    return {"params": state.params, "batch_stats": state.batch_stats}


def _logits_fn(model, bn):
    return lambda variables, x: model.apply(variables, x, train=False, bn=bn)["logits"]


def _eval_attacks(config):
    ce = config.eval
    return [a for a in ce.attacks if not (a == "autoattack" and ce.autoattack == "none")]


def evaluate_state(config, model, state, workdir, mesh, checkpoints: dict | None = None) -> dict:
    """Evaluates `state` with `config.eval` on the test split; writes eval.json, per_example.npz
    and report.json's 'eval'. Returns the headline report keys (clean_accuracy, robust_accuracy,
    overall_robust_accuracy, eval_eps, sanity; analysis and r_div when the analysis is enabled),
    or {} when no attack is configured. `checkpoints` (`evaluate_run`): {'checkpoint': headline
    name, 'checkpoints': {name: {step, epoch, ...}}, 'selection': ...}; the headline's entry gets
    this evaluation's accuracies, and the dict goes into eval.json and the returned keys."""
    ce = config.eval
    attacks_ = _eval_attacks(config)
    if not attacks_:
        return {}
    check_corruption_data(config)
    n = ce.num_examples if ce.num_examples > 0 else None
    images, labels = data.load_eval_arrays(config.data, "test", n)
    res = _evaluate(config, model, state, mesh, images, labels, attacks_)
    if checkpoints is not None:  # the headline's entry, and the other's when it is the same step
        entries = checkpoints["checkpoints"]
        for entry in entries.values():
            if entry["step"] == entries[checkpoints["checkpoint"]]["step"]:
                entry.update(_accuracies(res))
        res.update(checkpoints)
    # Which "first n test images" the subsets are (eval.json, and report.json's 'eval').
    res["test_order"] = config.data.get("test_order", "tfds")
    corruptions = evaluate_corruptions(config, model, state, mesh)
    if corruptions:
        res["corruptions"] = corruptions
    evaluation.write_eval_json(workdir, res)
    out = dict(
        clean_accuracy=res["clean_accuracy"],
        robust_accuracy=res["robust_accuracy"],
        overall_robust_accuracy=res["overall"]["robust_accuracy"],
        eval_eps=res["eps"],
        sanity=evaluation.summary(res).get("sanity"),
    )
    if checkpoints is not None:
        out.update(checkpoints)
    if corruptions:
        out["corruptions"] = {k: v for k, v in corruptions.items() if k != "accuracy"}
    if config.analysis.enabled:
        out["analysis"] = analyze_state(config, model, state, workdir, mesh, images, labels, eval_results=res)
        if out["analysis"].get("r_div"):
            out["r_div"] = out["analysis"]["r_div"]
    return out


def _accuracies(res) -> dict:
    return dict(
        clean_accuracy=res["clean_accuracy"],
        robust_accuracy=dict(res["robust_accuracy"]),
        overall_robust_accuracy=res["overall"]["robust_accuracy"],
    )


def _evaluate(config, model, state, mesh, images, labels, attacks_, *, secondary=False):
    """evaluation.evaluate of `config.eval`; `secondary`: without sanity checks and eps sweep."""
    ce = config.eval
    return evaluation.evaluate(
        _logits_fn(model, ce.bn_branch),
        images,
        labels,
        params=_variables(state),
        attacks=tuple(attacks_),
        eps=ce.eps,
        step_size=ce.step_size,
        pgd_steps=ce.pgd_steps,
        pgd_restarts=ce.pgd_restarts,
        mpgd_steps=ce.mpgd_steps,
        version=ce.autoattack if ce.autoattack != "none" else "standard",
        autoattack_attacks=tuple(ce.get("autoattack_attacks", ())) or None,
        norm=ce.get("norm", "Linf"),
        batch_size=config.data.eval_batch_size,
        autoattack_examples=ce.autoattack_examples,
        seed=config.seed,
        mesh=mesh,
        progress=config.progress_bar and jax.process_index() == 0,
        eps_sweep=None if secondary else (tuple(ce.eps_sweep) or None),
        sanity=False if secondary else ce.sanity,
    )


def evaluate_run(config, model, last_state, workdir, mesh, *, last_step: int) -> dict:
    """Evaluates a run's last state (after `last_step` steps) and, when workdir/best_checkpoint
    holds one, its best state; the headline is `config.eval.checkpoint` ('best' without a kept
    best checkpoint is a WorkdirError). The headline runs `evaluate_state` (eval.json,
    per_example.npz, sanity checks, analysis); the other the same attacks on the same examples
    without sanity checks or eps sweep. Returns evaluate_state's keys plus 'checkpoint' (the
    headline's name), 'checkpoints' ({'last'|'best': {step, epoch, clean_accuracy,
    robust_accuracy, overall_robust_accuracy}}) and, with a best, 'selection' (the rule and the
    best's step, epoch and metric value)."""
    headline = config.eval.get("checkpoint", "last")
    spe, _ = total_steps(config)
    best = selection.best_record(workdir)
    if headline == "best" and best is None:
        raise workdir_lib.WorkdirError(
            f"eval.checkpoint='best' but {workdir} holds no best checkpoint: train with "
            "eval.checkpoint='best' (it keeps one), or evaluate with eval.checkpoint='last'"
        )
    states = {"last": last_state}
    info = {"last": dict(step=int(last_step), epoch=selection.epoch_of(int(last_step), spe))}
    if best is not None:
        info["best"] = dict(step=best["step"], epoch=best["epoch"], select_value=best["value"])
        if best["step"] == last_step:
            states["best"] = last_state
        else:
            states["best"] = restore_run(workdir, mesh, checkpoint="best")[2]
    checkpoints = {"checkpoint": headline, "checkpoints": info}
    if best is not None:
        checkpoints["selection"] = dict(
            best.get("rule", {}), best_step=best["step"], best_epoch=best["epoch"], best_value=best["value"]
        )
    attacks_ = _eval_attacks(config)
    for name in states:
        if name == headline or not attacks_:
            continue
        if states[name] is states[headline]:
            continue  # filled in from the headline's evaluation below
        n = config.eval.num_examples if config.eval.num_examples > 0 else None
        images, labels = data.load_eval_arrays(config.data, "test", n)
        res = _evaluate(config, model, states[name], mesh, images, labels, attacks_, secondary=True)
        info[name].update(_accuracies(res))
    out = evaluate_state(config, model, states[headline], workdir, mesh, checkpoints)
    return out or checkpoints


def check_corruption_data(config) -> None:
    """Raises DatasetNotPreparedError at once when a CIFAR-10-C set of `config.eval.corruptions`
    is not prepared (call before training / evaluating); a no-op without corruptions."""
    pairs = config_lib.parse_corruptions(config.eval.get("corruptions", ()))
    if pairs:
        data.corrupted.check_prepared(config.data, pairs)


def corruption_accuracy(logits_fn, variables, data_cfg, pairs, *, num_examples, batch_size, mesh) -> dict:
    """Accuracy of `logits_fn(variables, x)` ([B, 32, 32, 3] in [0, 1] -> [B, 10]) on CIFAR-10-C.

    pairs: (corruption, severity) pairs (`config.parse_corruptions`); num_examples: the first n
    images of each set (None = all 10,000); batches of `batch_size` on `mesh`'s data axis, one
    compiled prediction for every set. Returns {'accuracy': {corruption: {'<severity>': acc}},
    'mean' (over the pairs), 'mean_per_corruption': {corruption: mean over its severities},
    'mean_per_severity': {'<severity>': mean over its corruptions}, 'num_examples': n per set,
    'num_sets'}; accuracies are fractions in [0, 1]."""
    predict = jax.jit(lambda v, x: jnp.argmax(logits_fn(v, x), axis=-1))
    sharding = parallel.data_sharded(mesh)
    acc: dict[str, dict[str, float]] = {}
    sizes = set()
    for c, sev in pairs:
        x, y = data.corrupted.load(data_cfg, c, sev, num_examples)
        pred = parallel.map_batches(lambda start, xb: predict(variables, xb), (x,), batch_size, sharding)
        acc.setdefault(c, {})[str(sev)] = float(np.mean(pred == y))
        sizes.add(len(y))
    flat = [(c, s, a) for c, per in acc.items() for s, a in per.items()]
    return dict(
        accuracy=acc,
        mean=float(np.mean([a for *_, a in flat])),
        mean_per_corruption={c: float(np.mean(list(per.values()))) for c, per in acc.items()},
        mean_per_severity={
            s: float(np.mean([a for _, s2, a in flat if s2 == s])) for s in sorted({s for _, s, _ in flat})
        },
        num_examples=min(sizes) if len(sizes) == 1 else sorted(sizes),
        num_sets=len(flat),
    )


def evaluate_corruptions(config, model, state, mesh) -> dict:
    """CIFAR-10-C accuracy of `state` (eval-mode BN of `config.eval.bn_branch`) for
    `config.eval.corruptions` on the first `eval.num_examples` images of each set (-1 = all);
    {} when no corruption is configured. See `corruption_accuracy` for the result."""
    ce = config.eval
    pairs = config_lib.parse_corruptions(ce.get("corruptions", ()))
    if not pairs:
        return {}
    return corruption_accuracy(
        _logits_fn(model, ce.bn_branch),
        _variables(state),
        config.data,
        pairs,
        num_examples=ce.num_examples if ce.num_examples > 0 else None,
        batch_size=config.data.eval_batch_size,
        mesh=mesh,
    )


def pgd_examples(config, logits_fn, x, y, key, start, *, eps):
    """The analysis' PGD-k examples of a batch x [b, H, W, C] in [0, 1] (rows from `start`), under
    `config.eval.norm` (k = eval.pgd_steps, step eval.step_size, cross-entropy): 'Linf' =
    `attacks.pgd_linf` from a uniform start drawn with `key`; 'L2' = evaluation PGD
    (`evaluation.pgd.pgd_program`, L2 steepest ascent, projection onto the L2 ball and [0, 1]),
    row i starting from fold_in(key, start + i). Other norms have no PGD (config.validate refuses
    the analysis with them)."""
    ce = config.eval
    norm = ce.get("norm", "Linf")
    if norm == "Linf":
        objective = attacks.ce_objective(logits_fn, y)
        return attacks.pgd_linf(objective, x, key, eps=eps, step_size=ce.step_size, num_steps=ce.pgd_steps)
    prog = evaluation.pgd.pgd_program(num_steps=ce.pgd_steps, step_ratio=ce.step_size / eps, norm=norm)
    index = start + jnp.arange(x.shape[0], dtype=jnp.int32)
    x_adv, _ = evaluation.programs.run_program(prog, logits_fn, x, y, index=index, key=key, eps=eps)
    return x_adv


def latents(config, model, state, images, labels, mesh, *, eps):
    """Penultimate features z of `images` [n, H, W, C] and of their PGD-k examples
    (`pgd_examples`: config.eval.norm, k = config.eval.pgd_steps, eval-mode BN of
    config.eval.bn_branch): two [n, h] arrays. Batch i (rows from `start`) draws its attack key as
    fold_in(key(config.seed), start)."""
    ce = config.eval
    fwd = attacks.model_forward(model, _variables(state), bn=ce.bn_branch, bn_mode="eval", output=None)

    @jax.jit
    def run(x, y, key, start):
        x_adv = pgd_examples(config, lambda v: fwd(v)["logits"], x, y, key, start, eps=eps)
        return fwd(x)["z"], fwd(x_adv)["z"]

    key = jax.random.key(config.seed)
    return parallel.map_batches(
        lambda start, x, y: run(x, y, jax.random.fold_in(key, start), start),
        (images, labels),
        config.data.eval_batch_size,
        parallel.data_sharded(mesh),
    )


def analyze_state(config, model, state, workdir, mesh, images, labels, eval_results=None) -> dict:
    """R-DIV of benign vs PGD latents of the first `config.analysis.num_examples` images, the
    plots of ASCL Figs. 3-5 and 7 into workdir/plots, and the selection counts over training
    (Fig. 4) from metrics.jsonl. Returns {'plots', 'r_div', 'skipped', 'errors'}."""
    m = min(config.analysis.num_examples, len(labels))
    x, y = images[:m], labels[:m]
    z_nat, z_adv = latents(config, model, state, x, y, mesh, eps=config.eval.eps)
    sweep = None
    if eval_results and eval_results.get("sanity"):
        fall = eval_results["sanity"].get("checks", eval_results["sanity"]).get("accuracy_falls_with_eps")
        if isinstance(fall, dict) and "eps" in fall:
            sweep = {config.name: (list(fall["eps"]), list(fall["accuracy"]))}
    report = workdir_lib.read_report(workdir)
    if eval_results:
        report.update(
            clean_accuracy=eval_results["clean_accuracy"], robust_accuracy=eval_results["robust_accuracy"]
        )
    metrics = storage.path(workdir) / workdir_lib.METRICS_JSONL
    res = analysis.run_analysis(
        workdir,
        z_nat=z_nat,
        z_adv=z_adv,
        labels=y,
        eps_sweep_results=sweep,
        metrics_path=metrics if metrics.exists() else None,
        report=report,
        model_name=config.name,
        tsne_max_points=config.analysis.tsne_points,
        seed=config.seed,
    )
    return {k: res[k] for k in ("plots", "r_div", "skipped", "errors") if k in res}


def evaluate_workdir(workdir: str, override_config=None) -> dict:
    """`--mode=evaluate`: the checkpoints of `workdir` (`evaluate_run`: the last and, when kept, the
    best; the headline is `eval.checkpoint`), evaluated with its config's eval settings (or those of
    `override_config`, e.g. to run AutoAttack-standard later; checked with `config.validate` before
    anything is written). When `override_config.init.torch_checkpoint` is set, that PyTorch
    checkpoint is evaluated instead (the model of `override_config`; its config is written to
    `workdir`, with eval.checkpoint='last') and is the headline whatever `eval.checkpoint` says
    (report checkpoint='last'; the file is config.json's init.torch_checkpoint). Returns the
    updated report."""
    mesh = parallel.make_mesh()
    if override_config is not None and override_config.init.get("torch_checkpoint"):
        config, model, state = torch_run(override_config.copy_and_resolve_references(), mesh)
        config.eval.checkpoint = "last"  # the PyTorch checkpoint is the one state there is
        workdir_lib.check_or_write_config(config, workdir)
        with jax.set_mesh(mesh):
            out = evaluate_state(config, model, state, workdir, mesh)
        out["checkpoint"] = "last"
        return workdir_lib.update_report(workdir, out)
    config, model, state = restore_run(workdir, mesh, checkpoint="last")
    if override_config is not None:
        config.unlock()
        config.eval = override_config.eval
        config.analysis = override_config.analysis
        config_lib.validate(config)
    with jax.set_mesh(mesh):
        out = evaluate_run(config, model, state, workdir, mesh, last_step=int(jax.device_get(state.step)))
    return workdir_lib.update_report(workdir, out)


def analyze_workdir(workdir: str) -> dict:
    """`--mode=analyze`: R-DIV, plots and summary for the headline checkpoint of `workdir` (the one
    its config's `eval.checkpoint` names: 'last' or 'best'). Returns the updated report."""
    mesh = parallel.make_mesh()
    config, model, state = restore_run(workdir, mesh)  # the headline checkpoint (eval.checkpoint)
    n = config.eval.num_examples if config.eval.num_examples > 0 else None
    images, labels = data.load_eval_arrays(config.data, "test", n)
    with jax.set_mesh(mesh):
        out = analyze_state(config, model, state, workdir, mesh, images, labels)
    return workdir_lib.update_report(workdir, {"analysis": out, "r_div": out.get("r_div")})
