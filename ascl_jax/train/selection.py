"""Checkpoint selection (`eval.checkpoint='best'`): the checkpoint of highest selection metric,
kept beside the latest ones and evaluated as the run's headline.

Rule (`rule(config, spe)`), as the papers select:
- metric `eval.select_metric`: 'robust' = accuracy under PGD-k with the training attack's budget
  (`config.attack.eps`, `step_size`, `num_steps` = k; cross-entropy objective, uniform random start
  drawn per example from `fold_in(key(config.seed), row)`, clipped to [0, 1]; BN in eval mode,
  branch `eval.bn_branch`): the ASCL authors' `model_best.pt` (PGD-10 every epoch, SPEC 1.6) and
  ACL's "held-out validation RA" (ACL §3); 'clean' = natural accuracy (ACL's semi-supervised
  teacher, SPEC 3.7).
- split `eval.select_on`: 'val' = the `data.val_examples` held out of the training pool
  (`data.load_val_arrays`), 'test' = the test split (the ASCL authors' code); its first
  `eval.select_examples` examples (-1: all), un-augmented.
- when: after every `eval.select_every` epochs (step multiple of select_every x steps per epoch)
  and after the last step.
The best is the first step of strictly highest metric (ties keep the earlier one); orbax keeps it
in workdir/best_checkpoint (`checkpointing.make_best_manager`) with its metric and rule, so a
resumed run continues from the best so far; the selection settings are fixed from the first step
on (`check_resume`). Each measurement is a metrics.jsonl line
{'step', 'epoch', 'select_<metric>_accuracy'}.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import attacks, checkpointing, data, parallel
from ascl_jax import config as config_lib
from ascl_jax import workdir as workdir_lib
from ascl_jax.evaluation import pgd as eval_pgd

log = logging.getLogger("ascl_jax")


def enabled(config) -> bool:
    return config.eval.get("checkpoint", "last") == "best"


def metric_key(config) -> str:
    return f"select_{config.eval.get('select_metric', 'robust')}_accuracy"


def rule(config, spe: int) -> dict:
    """The selection rule of `config` (module doc) as JSON: metric, split, examples, every_epochs,
    every_steps, bn_branch and, for 'robust', attack {eps, step_size, num_steps}."""
    e = config.eval
    metric = e.get("select_metric", "robust")
    out = dict(
        metric=metric,
        split=e.get("select_on", "val"),
        examples=_num_examples(config),
        every_epochs=int(e.get("select_every", 1)),
        every_steps=int(e.get("select_every", 1)) * int(spe),
        bn_branch=e.bn_branch,
    )
    if metric == "robust":
        a = config.attack
        out["attack"] = dict(eps=float(a.eps), step_size=float(a.step_size), num_steps=int(a.num_steps))
    return out


def _num_examples(config) -> int:
    n = int(config.eval.get("select_examples", 500))
    if config.eval.get("select_on", "val") == "val":
        total = data.val_split(config.data)[1]
    else:
        total = data.dataset_info(config.data)["num_test"]
    return total if n == -1 else min(n, total)


def check(config, spe: int, n_steps: int) -> None:
    """The rule's checks that need the step count: at least `select_every` epochs in the run."""
    if not enabled(config):
        return
    every = int(config.eval.get("select_every", 1))
    epochs = -(-n_steps // spe)
    if every > epochs:
        raise config_lib.ConfigError(
            f"config.eval.checkpoint='best' with config.eval.select_every={every} epochs exceeds the "
            f"run's {epochs} epoch(s) (config.num_train_steps={config.num_train_steps}, {spe} steps per "
            "epoch); use select_every <= the number of epochs"
        )


def arrays(config) -> tuple[np.ndarray, np.ndarray]:
    """The selection examples: (float32 [n, H, W, C] in [0, 1], int32 [n])."""
    n = _num_examples(config)
    if config.eval.get("select_on", "val") == "val":
        return data.load_val_arrays(config.data, n)
    return data.load_eval_arrays(config.data, "test", n)


def make_metric(config, model, mesh):
    """metric(state) -> float: the selection metric of `state` (module doc) on `arrays(config)`.
    One jitted program per batch shape (the state is an argument, so no recompilation per epoch);
    per-example correctness comes back to the host once per batch."""
    images, labels = arrays(config)
    robust = config.eval.get("select_metric", "robust") == "robust"
    a, bn = config.attack, config.eval.bn_branch
    key = jax.random.key(config.seed)

    @jax.jit
    def correct(params, batch_stats, x, y, index):
        fwd = attacks.model_forward(model, {"params": params, "batch_stats": batch_stats}, bn=bn)
        if robust and a.num_steps > 0 and a.eps > 0:
            x = attacks.pgd_linf(
                attacks.ce_objective(fwd, y),
                x,
                None,
                eps=a.eps,
                step_size=a.step_size,
                num_steps=int(a.num_steps),
                x_init=eval_pgd.uniform_start(x, key, index, a.eps),
            )
        return (jnp.argmax(fwd(x), -1) == y).astype(jnp.int32)

    index = np.arange(len(labels), dtype=np.int32)
    sharding = parallel.data_sharded(mesh)
    batch = config.data.eval_batch_size

    def metric(state) -> float:
        fn = lambda _, x, y, i: correct(state.params, state.batch_stats, x, y, i)
        return float(np.mean(parallel.map_batches(fn, (images, labels, index), batch, sharding)))

    return metric


def epoch_of(step: int, spe: int) -> float:
    """The epoch count after `step` steps (fractional for a step inside an epoch)."""
    return step // spe if step % spe == 0 else step / spe


# The eval fields that decide what the train loop measures and keeps (with eval.checkpoint='best').
SELECTION_FIELDS = (
    "checkpoint",
    "select_on",
    "select_metric",
    "select_every",
    "select_examples",
    "bn_branch",
)


def check_resume(config, workdir: str) -> None:
    """A run resumed from a checkpoint selects as its first sitting did: eval.checkpoint and, when
    either sitting has 'best', eval.select_* and eval.bn_branch must equal workdir/config.json's
    (written at the first sitting, never rewritten). Otherwise the best would be chosen among the
    later epochs only; raises WorkdirError listing the fields that differ."""
    old, new = workdir_lib.load_config(workdir).eval, config.eval
    default = config_lib.base_config().eval
    get = lambda e, f: e.get(f, default[f])  # noqa: E731
    best = "best" in (get(old, "checkpoint"), get(new, "checkpoint"))
    fields = SELECTION_FIELDS if best else ("checkpoint",)
    diff = [f for f in fields if get(old, f) != get(new, f)]
    if diff:
        details = ", ".join(f"eval.{f}: {get(old, f)!r} -> {get(new, f)!r}" for f in diff)
        raise workdir_lib.WorkdirError(
            f"{workdir} holds a run trained with other checkpoint-selection settings ({details}); "
            "they cannot change once training has started (the selection would skip the epochs "
            "already trained): resume with the run's settings (--mode evaluate can still evaluate "
            "its last checkpoint), or use a fresh --workdir"
        )


class Selector:
    """The train loop's selection: `due(step)`, `update(step, state)` (measure, log, keep the best).

    On construction it reads the best so far from workdir/best_checkpoint; a best kept under
    another rule (eval.select_* changed between a run and its resumption) is a WorkdirError."""

    def __init__(self, config, model, workdir, mesh, spe: int, n_steps: int):
        check(config, spe, n_steps)
        self.config, self.workdir, self.spe, self.n_steps = config, workdir, spe, n_steps
        self.rule = rule(config, spe)
        self.key = metric_key(config)
        self.manager = checkpointing.make_best_manager(workdir)
        self.best = checkpointing.best_record(self.manager)
        if self.best is not None and self.best.get("rule") != self.rule:
            raise workdir_lib.WorkdirError(
                f"{workdir}/{checkpointing.BEST_DIR} holds a best checkpoint selected by "
                f"{self.best.get('rule')}, but this run selects by {self.rule} (eval.select_* changed): "
                "restore the run's eval.select_* settings, or move best_checkpoint/ aside"
            )
        self.metric = make_metric(config, model, mesh)

    def due(self, step: int) -> bool:
        return step % self.rule["every_steps"] == 0 or step == self.n_steps

    def update(self, step: int, state) -> dict:
        """Measures the metric of `state` after `step` steps, appends it to metrics.jsonl and saves
        `state` as the best when it is strictly better than the best so far. Returns the line."""
        value = self.metric(state)
        epoch = epoch_of(step, self.spe)
        line = {"epoch": epoch, self.key: value}
        workdir_lib.append_metrics(self.workdir, step, line)
        improved = self.best is None or (value > self.best["value"] and step > self.best["step"])
        if improved:
            meta = dict(epoch=epoch, rule=self.rule)
            checkpointing.save_best(self.manager, step, state, value, meta)
            self.best = dict(meta, step=step, value=value)
        log.info(
            "selection at step %d (epoch %s): %s=%.4f, best %.4f at step %d",
            step,
            epoch,
            self.key,
            value,
            self.best["value"],
            self.best["step"],
        )
        return line

    def summary(self) -> dict:
        """report.json's 'selection': the rule and the best (step, epoch, value)."""
        out = dict(self.rule)
        if self.best is not None:
            b = self.best
            out.update(best_step=b["step"], best_epoch=b["epoch"], best_value=b["value"])
        return out


def best_record(workdir: str) -> dict | None:
    """{'step', 'value', 'epoch', 'rule'} of the workdir's best checkpoint, or None."""
    if not checkpointing.has_best(workdir):
        return None
    return checkpointing.best_record(checkpointing.make_best_manager(workdir))
