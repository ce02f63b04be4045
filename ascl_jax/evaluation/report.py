"""eval.json, per_example.npz and report.json's 'eval' key, under the evaluation's names.

The files, their writer and the archiving of a previous eval.json live in `ascl_jax.workdir`:
`write_eval_json(workdir, results, per_example=None, on_exists='archive')` writes the `summary` of
`evaluate`'s result to eval.json, its per-example arrays to per_example.npz, and sets report.json's
'eval' key; `load_per_example` / `compare_per_example` read and compare two runs' arrays.
"""

from ascl_jax.workdir import (
    EVAL_JSON,
    ON_EXISTS,
    PER_EXAMPLE,
    REPORT_JSON,
    compare_per_example,
    load_per_example,
    summary,
    write_eval_json,
)

__all__ = [
    "EVAL_JSON",
    "ON_EXISTS",
    "PER_EXAMPLE",
    "REPORT_JSON",
    "compare_per_example",
    "load_per_example",
    "summary",
    "write_eval_json",
]
