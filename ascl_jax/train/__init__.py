"""Training, in data-flow order: `state` (TrainState, model initialisation), `optim` (optax
optimisers and schedules), `steps` (the pure per-method train steps), `setup` (model, step count,
optimizer, initial / restored / pre-trained state, train batches), `loop` (`train_and_evaluate`:
one config into one workdir), `run_eval` (evaluation and analysis of a trained state) and
`semisup` (ACL's three-stage semi-supervised routine).

`run(config, workdir)` is the entry point for every method; it returns the run's report.
"""

from ascl_jax.train import semisup
from ascl_jax.train.loop import NonFiniteLossError, RunResult, train_and_evaluate
from ascl_jax.train.run_eval import analyze_workdir, evaluate_workdir
from ascl_jax.train.setup import abstract_state, build_model, pretrained_variables, restore_run, total_steps
from ascl_jax.train.state import init_variables

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "abstract_state",
    "analyze_workdir",
    "build_model",
    "evaluate_workdir",
    "init_variables",
    "pretrained_variables",
    "restore_run",
    "run",
    "total_steps",
    "train_and_evaluate",
]


def run(config, workdir: str) -> dict:
    """Trains and evaluates `config` into `workdir` (resuming what it holds); returns the report.
    method 'semi_supervised' runs `semisup.run`'s three stages, every other method one
    `train_and_evaluate`."""
    if config.method == "semi_supervised":
        return semisup.run(config, workdir)
    return train_and_evaluate(config, workdir).report
