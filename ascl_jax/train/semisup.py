"""ACL's semi-supervised routine (ACL §2.2.1, Eq. 3, Table 2; SPEC 3.7), one command, one workdir.

  workdir/1_pretrain/   ACL (DS) pre-training on all training images (50k on CIFAR; labels unused)
  workdir/2_teacher/    standard CE training on the labelled subset from the ACL weights with the
                        clean BN set ('normal' BN, --bnNameCnt 0)
  workdir/pseudo_labels.npz   the teacher's logits on the un-augmented training images (eval mode)
  workdir/3_student/    adversarial training from the ACL weights with the adversarial BN set over
                        labelled + pseudo-labelled images with the loss of Eq. 3
  workdir/report.json   the student's report plus the teacher's accuracy

Each stage is an ordinary run in its own sub-workdir, so it resumes from its own checkpoints; a
stage that finished is not trained again, and the pseudo-labels are computed once. The student
loads the pre-trained weights once at its start (the authors' code reloads a checkpoint inside
its epoch loop, SPEC 3.7; not reproduced).
"""

from __future__ import annotations

import copy
import io

import jax
import numpy as np

from ascl_jax import checkpointing, data, parallel, storage
from ascl_jax import config as config_lib
from ascl_jax import workdir as workdir_lib
from ascl_jax.train.loop import train_and_evaluate
from ascl_jax.train.setup import restore_run, total_steps

STAGES = ("pretrain", "teacher", "student")


def stage_configs(config, workdir: str) -> dict:
    """The three stage configs of `config.stages`, with the run-time paths filled in."""
    out = {}
    for i, name in enumerate(STAGES, 1):
        c = copy.deepcopy(config.stages[name])
        c.unlock()
        if name in ("teacher", "student"):
            c.init.workdir = str(storage.path(workdir) / "1_pretrain")
        if name == "student":
            c.semi.pseudo_labels = str(storage.path(workdir) / "pseudo_labels.npz")
        out[name] = (c, str(storage.path(workdir) / f"{i}_{name}"))
    return out


def pseudo_labels(config, workdir: str, path: str) -> str:
    """The teacher's logits on every training image (no augmentation, eval mode) -> .npz with
    'index', 'logits' [n, C] and 'labels'. Written once (atomically, by process 0; every process
    returns once it is written); an existing file is reused."""
    if storage.path(path).exists():
        return path
    mesh = parallel.make_mesh()
    tcfg, model, state = restore_run(workdir, mesh)
    cfg = copy.deepcopy(tcfg.data)
    cfg.unlock()
    cfg.augment = "none"
    images, labels = data.load_eval_arrays(cfg, cfg.train_split, None)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    fn = jax.jit(lambda x: model.apply(variables, x, train=False, bn="clean")["logits"])
    with jax.set_mesh(mesh):
        logits = parallel.map_batches(
            lambda _, x: fn(x), (images,), tcfg.data.eval_batch_size, parallel.data_sharded(mesh)
        )
    if jax.process_index() == 0:
        buf = io.BytesIO()
        np.savez(
            buf, index=np.arange(len(labels), dtype=np.int32), logits=logits, labels=labels.astype(np.int32)
        )
        storage.write_bytes(path, buf.getvalue())
    parallel.sync("pseudo_labels")  # every process reads the file next (the student's batches)
    return path


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the three stages; returns the student's report with the teacher's
    clean accuracy and the stages' sub-workdirs (also written to workdir/report.json)."""
    config_lib.validate(config)
    workdir_lib.check_or_write_config(config, workdir)
    stages = stage_configs(config, workdir)
    reports = {}
    for name in STAGES:
        c, wd = stages[name]
        if name == "student":
            pseudo_labels(config, stages["teacher"][1], c.semi.pseudo_labels)
        previous = storage.path(wd) / workdir_lib.REPORT_JSON
        if previous.exists() and _finished(c, wd):
            reports[name] = workdir_lib.read_report(wd)  # done: not trained again
            continue
        reports[name] = train_and_evaluate(c, wd).report
    report = dict(reports["student"])
    report.update(
        config=config.name,
        method="semi_supervised",
        teacher_clean_accuracy=reports["teacher"].get("clean_accuracy"),
        stages={n: stages[n][1] for n in STAGES},
    )
    workdir_lib.write_report(workdir, report)
    return report


def _finished(config, workdir) -> bool:
    mngr = checkpointing.make_manager(workdir, save_every=1, max_to_keep=config.max_checkpoints)
    return mngr.latest_step() == total_steps(config)[1]
