"""Every public loss and the public attack and evaluation entry points carry a ``>>>`` example, in a
file that ``make test``'s suite line (``pytest ... tests --doctest-modules PATHS``) runs."""

import inspect
import pathlib
import shlex

import pytest

from ascl_jax import attacks, evaluation, losses

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOSSES = (
    "selection_masks",
    "pairwise_similarity",
    "l2_normalize",
    "masked_contrastive_loss",
    "ascl_loss",
    "supcon_loss",
    "nt_xent_loss",
    "nt_xent_rows",
    "kl_divergence",
    "cross_entropy",
    "trades_kl",
    "soft_distillation",
    "acl_semi_supervised_loss",
)
ENTRY_POINTS = [(losses, n) for n in LOSSES] + [
    (attacks, "pgd_linf"),
    (attacks, "fgsm"),
    (attacks, "multi_targeted_pgd"),
    (attacks, "ce_objective"),
    (attacks, "model_forward"),
    (evaluation, "evaluate"),
    (evaluation, "run_autoattack"),
    (evaluation, "autoattack_callable"),
]


def _doctest_paths():
    """The paths of the Makefile's ``--doctest-modules`` line, relative to the repository root."""
    lines = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if "--doctest-modules" in ln]
    assert len(lines) == 1, "make test must have exactly one --doctest-modules line"
    words = shlex.split(lines[0])
    return [w for w in words[words.index("--doctest-modules") + 1 :] if not w.startswith("-")]


def test_every_public_loss_is_listed():
    public = {n for n in losses.__all__ if callable(getattr(losses, n)) and n != "Array"}
    assert public == set(LOSSES)


@pytest.mark.parametrize("module, name", ENTRY_POINTS, ids=[f"{m.__name__}.{n}" for m, n in ENTRY_POINTS])
def test_has_a_doctested_example(module, name):
    fn = getattr(module, name)
    assert ">>>" in (inspect.getdoc(fn) or ""), f"{module.__name__}.{name} has no >>> example"
    source = pathlib.Path(inspect.getsourcefile(fn)).resolve().relative_to(ROOT)
    covered = [p for p in _doctest_paths() if source == pathlib.Path(p) or pathlib.Path(p) in source.parents]
    assert covered, f"{source} is not in the Makefile's --doctest-modules line {_doctest_paths()}"
