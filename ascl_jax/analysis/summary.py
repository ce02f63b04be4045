"""A short terminal summary of a run's ``report.json``, and readers of the report's headline numbers.

The keys read are those the writers of ``report.json`` produce:

* the training loop (``ascl_jax.train.loop.train_and_evaluate``): ``config``, ``method``, ``dataset``,
  ``arch``, ``steps``, ``train_images_per_second``, ``wall_seconds``, ``num_positives``,
  ``num_positives_nat``, ``num_positives_adv``, ``num_negatives``, ``num_negatives_nat``,
  ``num_negatives_adv`` (ASCL methods only);
* its evaluation (``evaluate_state``): ``clean_accuracy``, ``robust_accuracy`` ({attack: accuracy}),
  ``overall_robust_accuracy``, ``eval_eps``, ``sanity`` ({'passed', 'messages', ...} or None), and
  with the analysis on, ``r_div`` ({'ratio', 'intra', 'inter', ...});
* ``ascl_jax.evaluation.write_eval_json``: ``eval``, the summary of ``evaluation.evaluate``
  (``clean_accuracy``, ``robust_accuracy``, ``overall.robust_accuracy``, ``eps``, ``sanity``); a
  headline number missing at the top level is read from there;
* the semi-supervised routine: ``teacher_clean_accuracy``.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ascl_jax.analysis.records import to_float

# Top-level key of the training loop's report -> path of the same number inside report['eval'].
_EVAL_PATHS = {
    "clean_accuracy": ("clean_accuracy",),
    "robust_accuracy": ("robust_accuracy",),
    "overall_robust_accuracy": ("overall", "robust_accuracy"),
    "eval_eps": ("eps",),
    "sanity": ("sanity",),
}


def report_value(report: Mapping[str, Any], key: str) -> Any:
    """``report[key]``, else (for the evaluation keys of ``_EVAL_PATHS``) the same number inside
    ``report['eval']``; None when neither holds it."""
    if key in report:
        return report[key]
    value: Any = report.get("eval")
    for k in _EVAL_PATHS.get(key, (None,)):
        if not isinstance(value, Mapping) or k not in value:
            return None
        value = value[k]
    return value


def robust_accuracies(report: Mapping[str, Any]) -> dict[str, float]:
    """``{attack: robust accuracy}`` of the report (empty when no attack was evaluated)."""
    robust = report_value(report, "robust_accuracy")
    return {str(k): to_float(v) for k, v in robust.items()} if isinstance(robust, Mapping) else {}


def headline_robust_accuracy(report: Mapping[str, Any]) -> float:
    """The report's PGD robust accuracy (an attack name starting with "pgd"), else its first one;
    NaN without any."""
    robust = robust_accuracies(report)
    for k, v in robust.items():
        if k.lower().startswith("pgd"):
            return v
    return next(iter(robust.values())) if robust else float("nan")


def _fmt_acc(value: Any) -> str:
    v = to_float(value)
    return "n/a" if math.isnan(v) else f"{100.0 * v:.2f}%"


def _fmt_num(value: Any, digits: int = 2) -> str:
    v = to_float(value)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _fmt_eps(value: Any) -> str:
    v = to_float(value)
    if math.isnan(v):
        return "n/a"
    return f"{v:.4g} ({v * 255:.3g}/255)" if v <= 1.0 else f"{v:.4g}"


def _count_text(report: Mapping[str, Any], name: str) -> str:
    text = _fmt_num(report.get(name))
    if name + "_nat" in report or name + "_adv" in report:
        text += f" (nat {_fmt_num(report.get(name + '_nat'))}, adv {_fmt_num(report.get(name + '_adv'))})"
    return text


def text_summary(report: Mapping[str, Any]) -> str:
    """A terminal summary of a ``report.json`` dict (the keys of the module docstring), one number a line.

    Lines: a head with ``config``, ``method``, ``dataset``, ``arch``; clean accuracy; robust accuracy
    per attack; the worst case over the attacks with its eps (when an attack was evaluated); the
    sanity checks (when they ran); R-DIV ``ratio`` (``intra`` d+, ``inter`` d-); positives and
    negatives per anchor (total, natural, adversarial); the teacher's clean accuracy (semi-supervised
    runs); ``steps``, train images/s and wall time. The clean, robust, R-DIV and count lines are
    always present and read "n/a" when the report lacks their key (or holds None); the others appear
    only with their keys. Accuracies are printed in percent.
    """
    report = report or {}
    head = ", ".join(f"{k}={report[k]}" for k in ("config", "method", "dataset", "arch") if k in report)
    lines = ["ascl_jax summary" + (f" ({head})" if head else "")]
    lines.append(f"  clean accuracy : {_fmt_acc(report_value(report, 'clean_accuracy'))}")
    robust = robust_accuracies(report)
    if robust:
        lines.append("  robust accuracy: " + " | ".join(f"{k} {_fmt_acc(v)}" for k, v in robust.items()))
        overall = report_value(report, "overall_robust_accuracy")
        if overall is not None:
            lines.append(
                f"  worst case     : {_fmt_acc(overall)} at eps {_fmt_eps(report_value(report, 'eval_eps'))}"
            )
    elif isinstance(report_value(report, "robust_accuracy"), Mapping):
        lines.append("  robust accuracy: no attack evaluated")
    else:
        lines.append("  robust accuracy: n/a")
    sanity = report_value(report, "sanity")
    if isinstance(sanity, Mapping):
        text = "passed" if sanity.get("passed") else "FAILED"
        messages = "; ".join(str(m) for m in sanity.get("messages") or ())
        lines.append(f"  sanity checks  : {text}" + (f" ({messages})" if messages else ""))
    rd = report.get("r_div")
    if isinstance(rd, Mapping):
        lines.append(
            f"  R-DIV          : {_fmt_num(rd.get('ratio'), 4)} "
            f"(intra d+ {_fmt_num(rd.get('intra'), 4)}, inter d- {_fmt_num(rd.get('inter'), 4)})"
        )
    else:
        lines.append("  R-DIV          : n/a")
    lines.append(f"  positives/anchor: {_count_text(report, 'num_positives')}")
    lines.append(f"  negatives/anchor: {_count_text(report, 'num_negatives')}")
    if "teacher_clean_accuracy" in report:
        lines.append(f"  teacher clean  : {_fmt_acc(report['teacher_clean_accuracy'])}")
    extra = []
    if "steps" in report:
        extra.append(f"{report['steps']} steps")
    if "train_images_per_second" in report:
        extra.append(f"{_fmt_num(report['train_images_per_second'], 1)} train images/s")
    if "wall_seconds" in report:
        extra.append(f"wall {_fmt_num(report['wall_seconds'], 1)} s")
    if extra:
        lines.append("  run            : " + ", ".join(extra))
    return "\n".join(lines)
