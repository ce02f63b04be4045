"""bench/gpu_check.py runs on CPU with --dry-run and writes its JSON without TensorFlow.

The script runs in a subprocess whose workers block ``import tensorflow`` /
``tensorflow_datasets`` / ``clu`` (bench/gpu_check.py's import hook; any such import fails the
section). Two dry runs split the sections so that the two pytest workers share them: the train
step, and AutoAttack with the one-test pytest run. The core-test list that the GPU run and the
Makefile use is checked against the test files.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def dry_run(tmp_path, only):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--only", only, "--out", str(out), "--budget-s", "240"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    assert report["tensorflow_imported"] is False
    assert report["dry_worker"]["status"] == "ok", report["dry_worker"]
    assert report["env"]["backend"] == "cpu" and report["env"]["jax"]
    assert "tensorflow" not in json.dumps(report["env"]).lower()
    return report


def test_dry_run_train_step(tmp_path):
    report = dry_run(tmp_path, "jax_step")
    (step,) = report["jax_step"]
    assert (step["arch"], step["dtype"], step["batch"], step["pgd_steps"]) == ("tiny", "float32", 16, 2)
    for key in (
        "compile_s",
        "attack_compile_s",
        "ascl_step_ms",
        "ascl_img_per_s",
        "attack_ms",
        "attack_img_per_s",
    ):
        assert step[key] > 0, key
    assert step["ascl_img_per_s"] == pytest.approx(16 / (step["ascl_step_ms"] / 1000))
    assert step["loss"] == step["loss"]  # finite, not NaN
    assert report["autoattack"]["status"] == "skipped" and report["tests"]["status"] == "skipped"


def test_dry_run_autoattack_and_tests(tmp_path):
    report = dry_run(tmp_path, "autoattack,tests")
    aa = report["autoattack"]
    assert aa["version"] == "standard" and aa["examples"] == 8
    assert list(aa["accuracy"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["accuracy"]["clean"] == 1.0  # labels are the model's own predictions
    assert aa["examples_per_s"] > 0 and aa["first_call_s"] >= aa["warm_call_s"] > 0
    worst = report["autoattack_all_robust"]  # no row broken: every component ran on every row
    assert worst["eps"] == 1e-6 and worst["examples"] == 8
    assert set(worst["accuracy"].values()) == {1.0}, worst["accuracy"]
    tests = report["tests"]
    assert tests["status"] == "ok" and tests["passed"] == 1 and tests["failed"] == tests["errors"] == 0


def test_core_test_list_names_existing_tests():
    """tests/core_tests.txt (the Makefile's ASCL_JAX_CPU_FAST=0 run and the GPU run): every entry
    names an existing test file and function, and the Makefile runs the file with the switch off
    (a node id that does not exist would also fail that run: pytest exits 4)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    args = gpu_check.core_tests()
    assert len(args) >= 10
    for a in args:
        path, _, name = a.removeprefix("--deselect=").partition("::")
        assert (ROOT / path).is_file(), a
        if name:
            assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), a
    make = (ROOT / "Makefile").read_text()
    line = next(ln for ln in make.splitlines() if "@" + gpu_check.CORE_TESTS_FILE in ln)
    assert line.strip().startswith("ASCL_JAX_CPU_FAST=0 ") and "pytest -n 2" in line


def test_pytest_summary_reads_the_final_line_only():
    """The tests section's counts come from pytest's last line, not from counts quoted earlier in
    the output (a failure message) and not from the JUnit XML of an interrupted session."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    out = "E   assert '7 passed' == x\n!!! KeyboardInterrupt !!!\n3 failed, 69 passed in 88.01s (0:01:28)\n"
    assert gpu_check.pytest_summary(out) == {"failed": 3, "passed": 69}
    assert gpu_check.pytest_summary("1 error, 2 passed, 1 deselected in 3.20s") == {
        "errors": 1,
        "passed": 2,
        "deselected": 1,
    }
    assert gpu_check.pytest_summary("collecting ...") == {}
