"""Training: the pure per-method steps (`steps`), the run loop (`loop`) and ACL's semi-supervised
routine (`semisup`). `train_and_evaluate(config, workdir)` is the entry point."""
from ascl_jax.train.loop import (NonFiniteLossError, abstract_state, analyze_workdir, build_model,
                                 evaluate_workdir, pretrained_variables, restore_run, total_steps,
                                 train_and_evaluate)

__all__ = [
    "NonFiniteLossError", "abstract_state", "analyze_workdir", "build_model", "evaluate_workdir",
    "pretrained_variables", "restore_run", "total_steps", "train_and_evaluate",
]
