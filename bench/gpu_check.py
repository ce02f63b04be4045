"""The prepared check of the accelerator path: one command on a machine with one NVIDIA GPU, one
JSON file.

  bash bench/gpu_check.sh [--out bench/results/gpu_check.json] [--wheels .whl]
  python bench/gpu_check.py --dry-run --out /tmp/gpu_check.json      # CPU, tiny sizes, ~1 min CPU

Needs JAX with CUDA, flax, optax, orbax, chex, PyTorch, pytest (+ pytest-xdist, hypothesis,
scikit-learn for the tests); no TensorFlow, tensorflow-datasets or clu. Pure-Python packages the
machine lacks (ml_collections) are installed from the wheels in ``--wheels DIR`` (default
``<repo>/.whl`` when present; ``docs/gpu.md`` says how to fetch them) with
``pip install --no-index --no-deps --target <tmp>`` and put on ``PYTHONPATH``. Every section runs
in a Python process of its own (one per configuration on the GPU) with an import blocker for
tensorflow / tensorflow_datasets / clu (any import of them fails, and the section reports it),
under a time cap, inside one overall budget (``--budget-s``, 480 s).

Sections (JSON keys; docs/gpu.md lists the fields):

- ``env``: python, jax, jaxlib and the other packages' versions, backend, devices, GPU name, the
  driver and CPU (nvidia-smi, /proc/cpuinfo), torch version.
- ``jax_step``: the ASCL Leaked PGD-10 train step (``train.steps.ascl_step`` under jax.jit, the
  state donated; bench/train_step.py's set-up) for ResNet-20 and ResNet-18, batch 128, float32
  and bfloat16 (``model.dtype``): compile seconds, step ms and images/s, the PGD-10 training attack
  alone (``steps.ce_attack``) ms and images/s, peak device memory (``memory_stats``), one
  process per configuration so that each peak is its own.
- ``torch_step``: the same step in PyTorch on the same GPU (bench/torch_ascl_step.py, eager,
  channels-last; bfloat16 by autocast), step and attack ms and images/s,
  ``torch.cuda.max_memory_allocated``.
- ``autoattack``: AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square;
  ``evaluation.run_autoattack``) on 1000 random CIFAR-shaped images, eps 8/255, ResNet-20 at
  initialisation with the model's own predictions as labels (every example starts correct, so
  every one is attacked): examples/s with and without the first call's compilation.
- ``autoattack_all_robust``: the same at eps 1e-6, where no row is broken and every component
  runs its whole budget on all 1000 rows (a model robust everywhere: AutoAttack's worst case);
  the first call, on 500 rows (one batch), compiles. On the GPU it runs last, after the tests,
  within what is left of the budget: on an H200 the sections before it take about 430 s and it
  about 65 s, so it needs ``--budget-s 540`` (or ``--only autoattack``); the default 480 s leaves
  it out (status ``timeout``).
- ``tests``: the core tests (``tests/core_tests.txt``, the set the Makefile also runs with
  ``ASCL_JAX_CPU_FAST=0``) by pytest on the GPU, under a time cap (at the cap pytest gets SIGINT
  and reports the tests it finished): counts and every failure's node id and last message
  line. Tests that need TensorFlow (the tf.data pipeline) or 8 devices fail there by
  construction; each failure is classified (``needs_tensorflow``, ``needs_8_devices``,
  ``other``).

``--dry-run``: the same code on the CPU at tiny sizes, with the speed layer off (the plain graph,
as on the GPU) and every JAX section in one process: the 'tiny' encoder's ASCL step (float32,
batch 16, PGD-2; bfloat16 is left to tests/test_dtype.py, XLA:CPU compiles it slowly),
AutoAttack 'standard' on 8 images with 1 iteration / query, one test; about a minute of CPU
(XLA's compilations). ``--only`` picks sections; tests/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")
SECTIONS = ("jax_step", "torch_step", "autoattack", "tests")
# AutoAttack's worst case: at this radius no row is broken, so all four components run their whole
# budgets on every row (the cost of a model that is robust everywhere)
ALL_ROBUST_EPS = 1e-6
SIGINT_GRACE_S = 30  # how long the core tests' pytest may take to stop after the SIGINT at its cap
DRY_TEST = "tests/test_dtype.py::test_bad_dtype_is_a_config_error"  # the dry run's one test

# The core tests (models, attacks, losses, every train step, the evaluation programs, 1 vs 8
# devices, resume): pytest arguments, one a line. The Makefile's `test` target runs the same file
# with ASCL_JAX_CPU_FAST=0.
CORE_TESTS_FILE = os.path.join("tests", "core_tests.txt")


def core_tests() -> list[str]:
    """The pytest arguments of ``CORE_TESTS_FILE`` (node ids and ``--deselect=`` lines)."""
    with open(os.path.join(ROOT, CORE_TESTS_FILE)) as f:
        return [line.strip() for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# Orchestration (this process imports no JAX)


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(BENCH, "results", "gpu_check.json"))
    ap.add_argument("--wheels", default=None, help="folder of .whl files to install (default <repo>/.whl)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (about a minute)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="overall wall-clock budget")
    ap.add_argument("--tests-cap-s", type=float, default=200.0, help="time cap of the core tests")
    ap.add_argument("--iters", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (env always runs); the others are skipped",
    )
    ap.add_argument("--torch-python", default=sys.executable, help="interpreter that holds PyTorch")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    return ap.parse_args()


def install_wheels(folder: str | None) -> dict:
    """Installs every wheel of ``folder`` into a fresh target folder (no index, no dependencies)
    and puts it on PYTHONPATH for the sections. Returns what it did."""
    if folder is None:
        folder = os.path.join(ROOT, ".whl")
        if not os.path.isdir(folder):
            return {"folder": None, "installed": []}
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        raise SystemExit(f"--wheels {folder}: no .whl files there")
    target = tempfile.mkdtemp(prefix="ascl_gpu_check_site_")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--target", target, *wheels]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"installing the wheels of {folder} failed:\n{r.stderr[-3000:]}")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p)
    return {"folder": folder, "target": target, "installed": [os.path.basename(w) for w in wheels]}


def section_env(dry: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # peaks of each process, room for torch
    if dry:  # the plain graph, as on the GPU
        env.update(JAX_PLATFORMS="cpu", ASCL_JAX_CPU_FAST="0")
    return env


def run_worker(kind: str, wargs: dict, env: dict, timeout: float) -> dict:
    """Runs ``--worker kind`` in a fresh process; its last stdout line is the JSON result."""
    if timeout <= 5:
        return {"status": "skipped", "reason": "overall time budget spent"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--worker-args", json.dumps(wargs)]
    return _run_json(cmd, env, timeout)


def _run_json(cmd, env, timeout) -> dict:
    t = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": round(timeout, 1)}
    wall = round(time.time() - t, 2)
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        return {
            "status": "failed",
            "returncode": r.returncode,
            "wall_s": wall,
            "stderr_tail": r.stderr[-3000:],
        }
    out = json.loads(lines[-1])
    out.setdefault("status", "ok")
    out["wall_s"] = wall
    return out


def run_torch(python: str, arch: str, dtype: str, batch: int, iters: int, device: str, env, timeout):
    if timeout <= 5:
        return {"status": "skipped", "reason": "overall time budget spent"}
    cmd = [python, os.path.join(BENCH, "torch_ascl_step.py"), "--device", device, "--arch", arch]
    cmd += ["--dtype", dtype, "--batch", str(batch), "--iters", str(iters), "--channels-last"]
    if device == "cpu":
        cmd += ["--threads", str(os.cpu_count() or 1)]
    return _run_json(cmd, env, timeout)


def classify_failure(message: str) -> str:
    if re.search(r"No module named '?(tensorflow|clu)", message) or "blocked import" in message:
        return "needs_tensorflow"
    if "device_count() == 8" in message or "8 devices" in message or re.search(r"\b1 == 8\b", message):
        return "needs_8_devices"
    return "other"


def pytest_summary(output: str) -> dict:
    """The counts of pytest's final line (``3 failed, 69 passed in 88.01s``) in ``output``; the
    JUnit XML may count the test that a SIGINT cut short as passed, this line does not."""
    lines = [ln for ln in output.splitlines() if re.search(r"\bin [\d.]+s\b", ln)]
    if not lines:
        return {}
    found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", lines[-1])
    return {("errors" if k.startswith("error") else k): int(n) for n, k in found}


def run_tests(selection, env, cap: float, dry: bool) -> dict:
    """pytest on ``selection`` under ``cap`` seconds; counts and failures from its JUnit XML."""
    if cap <= 10:
        return {"status": "skipped", "reason": "overall time budget spent"}
    xml = tempfile.mktemp(suffix=".xml", prefix="ascl_gpu_check_")
    env = dict(env, ASCL_JAX_CPU_FAST="0")
    if not dry:
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # tests/conftest.py hides GPUs otherwise
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *selection]
    if not dry:
        cmd[4:4] = ["-n", "2"]
    t = time.time()
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            status = "ok" if p.wait(timeout=cap) == 0 else "failures"
        except subprocess.TimeoutExpired:  # SIGINT: pytest stops and still writes the JUnit XML
            status = "timeout"
            p.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=SIGINT_GRACE_S)
        finally:  # whatever happened (this process interrupted too): no pytest or xdist worker left
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.seek(0)
        tail = log.read()[-1500:]
    out = {"status": status, "selection": list(selection), "cap_s": cap, "wall_s": round(time.time() - t, 1)}
    if selection and selection[0] == "@" + CORE_TESTS_FILE:
        out["core_tests"] = core_tests()
    out["summary_tail"] = tail
    out["pytest_summary"] = pytest_summary(tail)
    if not os.path.exists(xml):
        return out
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if case.find("skipped") is not None:
            counts["skipped"] += 1
        elif bad is not None:
            counts["failed" if bad.tag == "failure" else "errors"] += 1
            msg = (bad.get("message") or bad.text or "").strip()
            failures.append(
                {"test": node, "kind": classify_failure(msg + (bad.text or "")), "message": msg[-300:]}
            )
        else:
            counts["passed"] += 1
    os.remove(xml)
    out.update(counts, failures=failures)
    return out


def main():
    args = _parse()
    if args.worker:
        return worker(args.worker, json.loads(args.worker_args))
    t0 = time.time()
    left = lambda: args.budget_s - (time.time() - t0)  # noqa: E731
    report = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    report["wheels"] = install_wheels(args.wheels)
    env = section_env(args.dry_run)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if only - set(SECTIONS):
        raise SystemExit(f"--only {args.only!r}: choose among {list(SECTIONS)}")
    skipped = {"status": "skipped", "reason": "--only"}
    report.update(jax_step=[skipped], torch_step=[skipped], autoattack=skipped, autoattack_all_robust=skipped)
    if args.dry_run:  # every JAX section in one process (one JAX start-up)
        dry = run_worker("dry", {"sections": sorted(only)}, env, min(170, left()))
        if "env" not in dry:  # the worker failed or ran out of time: its status everywhere
            dry = {"env": dry, "jax_step": [dry], "autoattack": dry, "autoattack_all_robust": dry}
        report["dry_worker"] = {
            k: dry.pop(k) for k in ("status", "wall_s", "tensorflow_imported") if k in dry
        }
        report.update(dry)
        reason = "dry run: bench/torch_ascl_step.py has no 'tiny' encoder"
        report["torch_step"] = [{"status": "skipped", "reason": reason}]
    else:
        report["env"] = run_worker("env", {}, env, min(120, left()))
        if only & {"jax_step", "torch_step"}:
            report["jax_step"], report["torch_step"] = [], []
        for arch in ("resnet20", "resnet18") if only & {"jax_step", "torch_step"} else ():
            for dtype in ("float32", "bfloat16"):
                wargs = dict(arch=arch, dtype=dtype, batch=128, iters=args.iters, dry=False)
                if "jax_step" in only:
                    res = run_worker("jax_step", wargs, env, min(150, left()))
                    report["jax_step"].append(dict(wargs, **res))
                if args.skip_torch or "torch_step" not in only:
                    t = {"status": "skipped", "reason": "--skip-torch" if args.skip_torch else "--only"}
                else:
                    cap = min(120, left())
                    t = run_torch(args.torch_python, arch, dtype, 128, args.iters, "cuda", env, cap)
                report["torch_step"].append({**t, "arch": arch, "dtype": dtype})
        if "autoattack" in only:
            report["autoattack"] = run_worker("autoattack", dict(n=1000, dry=False), env, min(180, left()))
    if args.skip_tests or "tests" not in only:
        report["tests"] = {"status": "skipped", "reason": "--skip-tests" if args.skip_tests else "--only"}
    else:
        selection = [DRY_TEST] if args.dry_run else ["@" + CORE_TESTS_FILE]
        cap = min(args.tests_cap_s, left() - 10 - SIGINT_GRACE_S)  # the whole section within the budget
        report["tests"] = run_tests(selection, env, cap, args.dry_run)
    if not args.dry_run and "autoattack" in only:  # last: the section the budget may leave out
        wargs = dict(n=1000, dry=False, eps=ALL_ROBUST_EPS, warmup_n=500)
        report["autoattack_all_robust"] = run_worker("autoattack", wargs, env, min(120, left()))
    report["total_s"] = round(time.time() - t0, 1)
    sections = [report[k] for k in ("env", "autoattack", "autoattack_all_robust")] + report["jax_step"]
    sections.append(report.get("dry_worker", {}))
    report["tensorflow_imported"] = any(bool(x.get("tensorflow_imported")) for x in sections)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: report[k] for k in ("dry_run", "total_s", "tensorflow_imported")}), "->", args.out)


# ----------------------------------------------------------------------------------------------
# Workers (one process each; JAX starts here)


class _Blocker:
    """Import hook: tensorflow, tensorflow_datasets and clu cannot be imported."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked import of {name!r}: the GPU path must not need it")
        return None


def worker(kind: str, wargs: dict):
    sys.meta_path.insert(0, _Blocker())
    sys.path.insert(0, ROOT)
    from ascl_jax.xla_cpu import flags as xla_flags

    xla_flags.tune_cpu_flags()
    out = {"env": _env, "jax_step": _jax_step, "autoattack": _autoattack, "dry": _dry}[kind](**wargs)
    out["tensorflow_imported"] = any(m.split(".")[0] in BLOCKED for m in sys.modules)
    print(json.dumps(out))


def _INIT_KEY():  # noqa: N802
    """The parameters' key: the 'rbg' generator (the library's initialisers and distributions;
    XLA:CPU compiles threefry's bit generation for seconds per call site, rbg in a fraction)."""
    import jax

    return jax.random.key(0, impl="rbg")


def _peak_memory() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _dry(sections):
    """The dry run's JAX sections in one process: env, the tiny-encoder step (float32), an
    AutoAttack of 8 images (those of ``sections``)."""
    out = {"env": _env(with_torch=False)}
    if "jax_step" in sections:  # float32 only: XLA:CPU compiles bfloat16 slowly (test_dtype has it)
        wargs = dict(arch="tiny", dtype="float32", batch=16, iters=1, dry=True)
        out["jax_step"] = [dict(wargs, **_jax_step(**wargs))]
    if "autoattack" in sections:
        out["autoattack"] = _autoattack(8, True)
        out["autoattack_all_robust"] = _autoattack(8, True, eps=ALL_ROBUST_EPS, warmup_n=8)
    return out


def _versions(*names) -> dict:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


PACKAGES = (  # the versions env records (None where a package is absent)
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "etils",
    "numpy",
    "ml_collections",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
)


def _nvidia_smi() -> str | None:
    """'name, driver_version, memory.total' of each GPU by nvidia-smi (None without it)."""
    cmd = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def _cpu() -> dict:
    """The host CPU's name (bench/timing.py's ``cpu_name``) and logical CPU count."""
    from timing import cpu_name  # bench/timing.py

    return {"model_name": cpu_name(), "count": os.cpu_count()}


def _env(with_torch: bool = True):
    import jax
    import jaxlib

    d = jax.devices()[0]
    out = {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(x) for x in jax.devices()],
        "device_kind": d.device_kind,
        "packages": _versions(*PACKAGES),
        "nvidia_smi": _nvidia_smi(),
        "cpu": _cpu(),
    }
    if not with_torch:
        return out
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        out["torch"] = None
    return out


def _ascl_config(arch: str, dtype: str, dry: bool):
    from ascl_jax import config as config_lib

    c = config_lib.resnet20_adam(config_lib.cifar_base("cifar10", "resnet20"))
    c.method, c.loss.strategy = "ascl", "leaked"
    c.optim.update(dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4))
    c.model.update(dict(arch=arch, dtype=dtype))
    if dry:
        c.attack.num_steps = 2
    return c


def _jax_step(arch: str, dtype: str, batch: int, iters: int, dry: bool):
    import jax
    import numpy as np
    from timing import median_ms  # bench/timing.py

    from ascl_jax import models, parallel
    from ascl_jax.train import steps as train_steps
    from ascl_jax.train.optim import make_optimizer
    from ascl_jax.train.state import create_train_state, init_variables

    c = _ascl_config(arch, dtype, dry)
    model = models.build_model(c.model, num_classes=10, image_shape=(32, 32, 3))
    tx, _ = make_optimizer(c.optim, 390, 390 * 200)
    mesh = parallel.make_mesh(jax.devices()[:1])
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    variables = jax.jit(lambda: init_variables(model, _INIT_KEY(), (32, 32, 3)))()
    state = jax.jit(
        lambda v: create_train_state(model, tx, jax.random.key(0), (32, 32, 3), v), out_shardings=repl
    )(variables)
    rng = np.random.default_rng(0)
    batch_np = {
        "image": rng.random((batch, 32, 32, 3), np.float32),
        "label": rng.integers(0, 10, batch).astype(np.int32),
    }
    b = jax.device_put(batch_np, dsh)
    step = train_steps.make_train_step(c, model, state_sharding=repl, data_sharding=dsh)
    attack = jax.jit(
        lambda st, b: train_steps.ce_attack(model, st, c.attack, b["image"], b["label"], st.step_key())
    )
    last = {"state": state}
    with jax.set_mesh(mesh):
        t = time.perf_counter()
        compiled = step.lower(state, b).compile()
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        attack_c = attack.lower(state, b).compile()
        attack_compile_s = time.perf_counter() - t

        def run_step():
            last["state"], last["metrics"] = compiled(last["state"], b)
            jax.block_until_ready(last["state"])

        ms = median_ms(run_step, iters, warmup=1 if dry else 2)
        attack_ms = median_ms(lambda: jax.block_until_ready(attack_c(last["state"], b)), iters, warmup=1)
    return {
        "pgd_steps": int(c.attack.num_steps),
        "compile_s": round(compile_s, 2),
        "attack_compile_s": round(attack_compile_s, 2),
        "ascl_step_ms": ms,
        "ascl_img_per_s": batch / (ms / 1000),
        "attack_ms": attack_ms,
        "attack_img_per_s": batch / (attack_ms / 1000),
        "loss": float(last["metrics"]["loss"]),
        "peak_memory_bytes": _peak_memory(),
        "backend": jax.default_backend(),
    }


def _autoattack(n: int, dry: bool, eps: float = 8 / 255, warmup_n: int | None = None):
    import jax
    import numpy as np

    from ascl_jax import evaluation, models, parallel
    from ascl_jax.train.state import init_variables

    arch = "tiny" if dry else "resnet20"
    model = models.build_model(
        dict(arch=arch, normalization="cifar10"), num_classes=10, image_shape=(32, 32, 3)
    )
    variables = jax.jit(lambda: init_variables(model, _INIT_KEY(), (32, 32, 3)))()
    logits_fn = lambda v, x: model.apply(v, x, train=False)["logits"]  # noqa: E731
    x = np.random.default_rng(0).random((n, 32, 32, 3), np.float32)
    y = np.asarray(jax.jit(lambda v, x: logits_fn(v, x).argmax(-1))(variables, x)).astype(np.int32)
    kw = dict(eps=eps, version="standard", params=variables, progress=False)
    kw.update(batch_size=n if dry else 500, mesh=parallel.make_mesh(jax.devices()[:1]))
    if dry:
        kw.update(n_iter=1, n_queries=1)
    first = warmup_n or n  # rows of the first call, which compiles (one batch compiles every program)
    runs = []
    for m in (first, n):  # the second call, on all n rows, is warm
        t = time.perf_counter()
        res = evaluation.run_autoattack(logits_fn, x[:m], y[:m], jax.random.key(1), **kw)
        runs.append(time.perf_counter() - t)
    return {
        "arch": arch,
        "examples": n,
        "version": "standard",
        "eps": eps,
        "first_call_examples": first,
        "n_iter": kw.get("n_iter", 100),
        "n_queries": kw.get("n_queries", 5000),
        "first_call_s": round(runs[0], 2),
        "warm_call_s": round(runs[1], 2),
        "examples_per_s": n / runs[1],
        "examples_per_s_with_compile": first / runs[0],
        "accuracy": res["accuracy"],
        "peak_memory_bytes": _peak_memory(),
    }


if __name__ == "__main__":
    sys.path.insert(0, BENCH)
    main()
