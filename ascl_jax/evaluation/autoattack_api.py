"""``autoattack_callable``: AutoAttack for any JAX classifier given as a plain callable, with a result
that records which component broke which example and a RobustBench-style JSON record.

The callable is ``predict(x) -> logits`` (a flax ``apply`` closure, haiku / equinox module, or a
hand-written function; x [B, H, W, C] in [0, 1], logits [B, K]) or, for a randomised defence,
``predict(x, key) -> logits`` with ``randomized=True``. The work is ``autoattack_driver`` on an
``engine.Engine``: batches sharded over a 1-D ``('data',)`` mesh of all devices, every attack's
iterations in compiled loops.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax.evaluation import autoattack as aa
from ascl_jax.evaluation import autoattack_driver
from ascl_jax.evaluation import engine as engine_lib

# RobustBench's ModelInfo fields (robustbench/utils.py), in its order, and its threat-model names.
ROBUSTBENCH_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "corruptions_acc",
    "corruptions_acc_3d",
    "corruptions_mce",
    "corruptions_mce_3d",
    "autoattack_acc",
    "footnote",
)


def _percent(a: float) -> str:
    """An accuracy in [0, 1] as RobustBench writes it: a string of the percentage, 2 decimals."""
    return str(round(100.0 * float(a), 2))


def eps_string(eps: float, norm: str) -> str:
    """'8/255' when eps is a whole number of 255ths under L-inf (RobustBench's spelling), else
    the shortest decimal."""
    k = eps * 255.0
    if norm == "Linf" and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


@dataclasses.dataclass
class AutoAttackResult:
    """The outcome of ``autoattack_callable``.

    Attributes:
      norm, eps, version, attacks: the threat model, radius, version and its components in order.
      specs: each component's budget (``autoattack.ComponentSpec``).
      clean: bool [N], clean-correct; robust: bool [N], correct under every component.
      broken_by: int [N], position in ``attacks`` of the component that broke the example, -1 if
        robust or misclassified clean.
      accuracy_after: {'clean': acc, component: robust accuracy after it (cumulative)}.
      num_classes, seed, seconds (wall time of the attack), x_adv ([N, H, W, C] or None: the
        adversarial images of broken examples, the clean ones elsewhere).
    """

    norm: str
    eps: float
    version: str
    attacks: tuple
    specs: tuple
    clean: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    accuracy_after: dict
    num_classes: int
    seed: int
    seconds: float
    x_adv: np.ndarray | None = None

    @property
    def num_examples(self) -> int:
        return int(self.clean.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean.mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean())

    def broken_by_names(self) -> list[str]:
        """Per example: the component that broke it, 'robust', or 'misclassified' (clean)."""
        names = np.array(list(self.attacks) + ["robust"], dtype=object)
        out = names[np.where(self.broken_by >= 0, self.broken_by, len(self.attacks))]
        return ["misclassified" if not c else str(n) for c, n in zip(self.clean, out)]

    def per_example(self) -> dict:
        """numpy arrays: index, clean_correct, robust, broken_by (see the attributes)."""
        return dict(
            index=np.arange(self.num_examples),
            clean_correct=self.clean.copy(),
            robust=self.robust.copy(),
            broken_by=self.broken_by.copy(),
        )

    def summary(self) -> dict:
        """Everything but the per-example arrays, JSON-serialisable."""
        return dict(
            norm=self.norm,
            eps=self.eps,
            version=self.version,
            attacks=list(self.attacks),
            specs=[dataclasses.asdict(s) for s in self.specs],
            num_examples=self.num_examples,
            num_classes=self.num_classes,
            clean_accuracy=self.clean_accuracy,
            robust_accuracy=self.robust_accuracy,
            accuracy_after=dict(self.accuracy_after),
            broken_by_counts={a: int((self.broken_by == i).sum()) for i, a in enumerate(self.attacks)},
            seed=self.seed,
            seconds=self.seconds,
        )

    def robustbench_json(self, **info) -> dict:
        """A record in RobustBench's model_info fields (``ROBUSTBENCH_FIELDS``) plus its
        ``threat_model`` ('Linf' / 'L2'; 'L1' is not a RobustBench threat model and is written as
        is). ``clean_acc`` / ``autoattack_acc`` are percentage strings with 2 decimals and ``eps``
        is spelled as RobustBench does ('8/255', '0.5'). ``info`` sets the descriptive fields
        (name, link, authors, venue, architecture, dataset, additional_data, reported, footnote,
        number_forward_passes); a version other than 'standard' is stated in the footnote, since
        RobustBench's autoattack_acc means AutoAttack-standard."""
        unknown = set(info) - set(ROBUSTBENCH_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown RobustBench fields {sorted(unknown)}; allowed: {list(ROBUSTBENCH_FIELDS)}"
            )
        rec = {k: None for k in ROBUSTBENCH_FIELDS}
        rec.update(number_forward_passes=1)
        rec.update(info)
        rec.update(eps=eps_string(self.eps, self.norm), clean_acc=_percent(self.clean_accuracy))
        rec["autoattack_acc"] = _percent(self.robust_accuracy)
        if self.version != "standard":
            note = (
                f"AutoAttack version '{self.version}' ({', '.join(self.attacks)}), not 'standard'; "
                f"{self.num_examples} examples"
            )
            rec["footnote"] = note if not rec["footnote"] else f"{rec['footnote']} {note}"
        rec["threat_model"] = self.norm
        return rec

    def to_json(self, path: str | None = None, *, overwrite: bool = False, **info) -> str:
        """``robustbench_json(**info)`` as a JSON string, also written to ``path`` when given (an
        existing file is an error unless ``overwrite``)."""
        text = json.dumps(self.robustbench_json(**info), indent=2) + "\n"
        if path is not None:
            if os.path.exists(path) and not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
            with open(path, "w") as f:
                f.write(text)
        return text


def _check_model(predict, x, *, randomized: bool, version: str) -> None:
    """The reference's checks on one batch: two forward passes (a randomised model for
    version='rand', a deterministic one otherwise) and logits rather than probabilities."""
    xj = jnp.asarray(x)
    if randomized:
        f = jax.jit(lambda z, k: predict(z, k))
        z1, z2 = f(xj, jax.random.key(1)), f(xj, jax.random.key(2))
    else:
        f = jax.jit(predict)
        z1, z2 = f(xj), f(xj)
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    if z1.ndim != 2 or z1.shape[0] != x.shape[0]:
        raise ValueError(f"predict must return logits [B, K] for images [B, H, W, C]; got shape {z1.shape}")
    unit = lambda z: z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-10)  # noqa: E731
    differs = bool(np.any(z1.argmax(1) != z2.argmax(1)) or np.abs(unit(z1) - unit(z2)).max() > 1e-4)
    if version == "rand" and not differs:
        how = "predict takes no key (randomized=False)" if not randomized else "two forward passes agree"
        warnings.warn(
            f"version='rand' on a deterministic model ({how}): EoT averages identical gradients; "
            "use version='standard'",
            stacklevel=3,
        )
    if version != "rand" and differs:
        warnings.warn(
            "predict seems to be a randomised defence (two forward passes differ); use version='rand'",
            stacklevel=3,
        )
    if z1.max() < 1 + 1e-5 and z1.min() > -1e-5 and np.all(np.abs(z1.sum(-1) - 1) < 1e-5):
        warnings.warn("predict seems to return probabilities; AutoAttack expects logits", stacklevel=3)


def autoattack_callable(
    predict,
    images,
    labels,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks=None,
    seed: int = 0,
    batch_size: int = 250,
    mesh=None,
    randomized: bool = False,
    n_iter: int | None = None,
    n_queries: int | None = None,
    n_targets: int | None = None,
    keep_adv: bool = False,
    progress: bool = False,
    unroll: int | None = None,
) -> AutoAttackResult:
    """AutoAttack (Croce & Hein 2020; L1: 2021) on any JAX classifier.

    Args:
      predict: ``x -> logits`` (x [B, H, W, C] float32 in [0, 1], logits [B, K]), rows treated
        independently (eval mode); with ``randomized=True``, ``(x, key) -> logits`` with a typed
        PRNG key (EoT for version='rand' draws a fresh key per forward pass).
      images: [N, H, W, C] in [0, 1] (NHWC; normalisation is the model's job); labels: [N] int.
      eps: radius under ``norm`` in (0, 1] for 'Linf', up to the box's diameter (sqrt(D) / D) for
        'L2' / 'L1'.
      norm: 'Linf', 'L2' or 'L1'.
      version: 'standard', 'plus', 'rand' (the reference's lists and budgets per norm, see
        ``autoattack``) or 'custom' with ``attacks``, a list of components from
        ``autoattack.COMPONENTS`` run with the reference's per-component defaults.
      seed: every random draw derives from ``jax.random.key(seed)`` and the example's index.
      batch_size: global batch, sharded over ``mesh`` (default: every device), rounded up to a
        multiple of the device count.
      n_iter, n_queries, n_targets: replace the version's APGD / FAB iterations, Square queries and
        target classes (None keeps them; the reference's values are 100, 5000 and 9 / 5).
      keep_adv: keep the adversarial images (``x_adv``). progress: tqdm bars. unroll: iterations
        per compiled loop body.
    Returns:
      an ``AutoAttackResult`` (robust accuracy, per-example flags and the breaking component,
      ``robustbench_json()``).
    Raises ValueError naming the argument for an unknown norm, version or component, ``attacks``
    without version='custom', eps out of range, images outside [0, 1] or not NHWC, bad labels.
    Warns (as the reference) for version='rand' on a deterministic model, a randomised model
    without 'rand', and probabilities instead of logits.

    Example: a hand-written linear classifier of the mean pixel m with 4 classes (boundaries at
    m = 0.25, 0.5, 0.75). At L-inf radius 0.08 only the image at m = 0.3 is within reach of a
    boundary::

      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from ascl_jax.evaluation import autoattack_callable
      >>> slope, offset = jnp.array([0.0, 1.0, 2.0, 3.0]), jnp.array([0.0, -0.25, -0.75, -1.5])
      >>> def predict(x):  # [B, H, W, C] -> [B, 4]
      ...     m = x.mean(axis=(1, 2, 3))[:, None]
      ...     return 10.0 * (m * slope + offset)
      >>> means = np.array([0.1, 0.3, 0.6, 0.9], np.float32)
      >>> images = np.ones((4, 4, 4, 1), np.float32) * means[:, None, None, None]
      >>> labels = np.array([0, 1, 2, 3])
      >>> res = autoattack_callable(predict, images, labels, eps=0.08, norm="Linf", version="standard",
      ...                           n_iter=20, n_queries=100, n_targets=3, batch_size=4)
      >>> res.clean_accuracy, res.robust_accuracy, res.broken_by_names()
      (1.0, 0.75, ['robust', 'apgd-ce', 'robust', 'robust'])
      >>> rec = res.robustbench_json(name="mean-pixel classifier", dataset="toy")
      >>> rec["clean_acc"], rec["autoattack_acc"], rec["eps"], rec["threat_model"]
      ('100.0', '75.0', '0.08', 'Linf')
    """
    if not callable(predict):
        raise ValueError(f"predict must be callable (x -> logits); got {type(predict).__name__}")
    norm = aa.check_norm(norm, "norm")
    if version not in aa.VERSIONS:
        raise ValueError(f"unknown version={version!r}; choose one of {list(aa.VERSIONS)}")
    specs = aa.version_specs(version, norm, attacks=None if attacks is None else aa.check_attacks(attacks))
    specs = aa.override_specs(specs, n_iter=n_iter, n_queries=n_queries, n_targets=n_targets)
    x, y = engine_lib.check_inputs(images, labels)
    eps = engine_lib.check_eps(eps, "eps", norm=norm, shape=x.shape[1:])
    _check_model(predict, x[: min(len(x), int(batch_size))], randomized=randomized, version=version)
    eng = engine_lib.get_engine(
        predict, batch_size=batch_size, mesh=mesh, progress=progress, unroll=unroll, stochastic=randomized
    )
    pred, num_classes = eng.predict(x, y=y, desc="clean")
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {num_classes} logits; got [{y.min()}, {y.max()}]"
        )
    t0 = time.perf_counter()
    out = autoattack_driver.run_on_engine(
        eng,
        x,
        y,
        jax.random.key(int(seed)),
        eps=eps,
        norm=norm,
        specs=specs,
        clean=pred == y,
        num_classes=num_classes,
        keep_adv=keep_adv,
        unroll=unroll,
    )
    return AutoAttackResult(
        norm=norm,
        eps=eps,
        version=version,
        attacks=tuple(out["components"]),
        specs=tuple(out["specs"]),
        clean=out["clean"],
        robust=out["robust"],
        broken_by=out["broken_by"],
        accuracy_after=out["accuracy"],
        num_classes=int(num_classes),
        seed=int(seed),
        seconds=time.perf_counter() - t0,
        x_adv=out["x_adv"],
    )
