"""Executes a notebook top to bottom with nbclient and saves it with its outputs.

    python examples/run_notebook.py [NOTEBOOK ...]     # default: examples/ascl_losses.ipynb

``make notebook`` runs it on the example notebook (the command that regenerates the saved outputs);
``tests/test_notebook.py`` calls :func:`execute` on a temporary copy. A cell that raises, or runs
longer than ``CELL_TIMEOUT_S``, stops the run with an error and nothing is written.

The kernel runs as a user's session would: it imports ``ascl_jax`` from this checkout
(``PYTHONPATH``), draws figures with the inline backend, and gets no ``XLA_FLAGS`` (the test suite
sets a simulated device count and CPU tuning flags there, which change the devices and the float
rounding), so JAX starts with its defaults on the host's real devices. No timing metadata is
recorded: re-running an unchanged notebook on the same machine gives the same file.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOK = ROOT / "examples" / "ascl_losses.ipynb"
CELL_TIMEOUT_S = 300


def kernel_env() -> dict[str, str]:
    """The environment of the notebook kernel (module docstring)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return env


def execute(path, out_path=None, *, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Runs every cell of the notebook at ``path`` in a fresh kernel (working directory: the
    notebook's folder) and writes the executed notebook to ``out_path`` (default: ``path``).

    Raises ``nbclient.exceptions.CellExecutionError`` if a cell raises and
    ``nbclient.exceptions.CellTimeoutError`` if one runs past ``timeout`` seconds.
    """
    path = pathlib.Path(path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=kernel_env())
    nbformat.write(nb, pathlib.Path(out_path) if out_path is not None else path)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", default=[str(DEFAULT_NOTEBOOK)])
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    args = parser.parse_args(argv)
    for nb in args.notebooks:
        t0 = time.perf_counter()
        execute(nb, timeout=args.timeout)
        print(f"executed {nb} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
