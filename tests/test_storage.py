"""Workdirs on object storage, for real and offline: the CLI against a local GCS emulator.

A module-scoped emulator (tests/gcs_emulator.py: gcp-storage-emulator in memory on 127.0.0.1)
serves the bucket `ascl`. The CLI runs with cwd, HOME and TMPDIR in a fresh sandbox directory and
the workdir gs://ascl/run: a smoke training killed (SIGKILL) right after its step-2 checkpoint,
the resumed run, `--mode evaluate` and `--mode analyze`. The bucket must then hold every file of
the run and the sandbox none. The clients reach the emulator through their own settings:
STORAGE_EMULATOR_HOST (gcsfs, behind etils.epath: config.json, metrics.jsonl, report.json,
eval.json, per_example.npz, plots, TensorBoard events, orbax's directories) and
TENSORSTORE_GCS_HTTP_URL (tensorstore: orbax's arrays).
"""

import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request

import numpy as np
import pytest

from ascl_jax import storage

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "ascl"
RUN = f"gs://{BUCKET}/run"
# the cheap part of the default smoke config's evaluation (AutoAttack and the sanity sweeps are
# tested elsewhere); the analysis stays on: R-DIV, t-SNE and the selection-count plot
CONFIG = [
    "--config",
    f"{ROOT}/configs/default.py:smoke",
    "--config.eval.attacks=('clean','pgd')",
    "--config.eval.sanity=False",
    "--config.eval.eps_sweep=()",
]
RUN_FILES = {"config.json", "metrics.jsonl", "report.json", "eval.json", "per_example.npz"}
PLOTS = {"rdiv_vs_robust_accuracy.png", "selection_counts.png", "tsne.png"}

# SIGKILL right after the step-2 checkpoint is committed: a run lost with everything after it
KILL_AFTER_STEP_2 = textwrap.dedent(
    """
    import os, signal, sys
    from absl import app
    from ascl_jax import checkpointing, main
    save = checkpointing.save_with_metadata  # the training loop's periodic save
    def save_then_die(manager, step, state, metadata):
        out = save(manager, step, state, metadata)
        if step == 2:
            manager.wait_until_finished()
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    checkpointing.save_with_metadata = save_then_die
    sys.argv = ["ascl_jax.main", *sys.argv[1:]]
    app.run(main.main)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    """http://127.0.0.1:PORT of a fresh in-memory emulator holding the bucket `ascl`; stopped after
    the module, whatever its tests did."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), str(port), BUCKET],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"the emulator did not start (exit code {proc.poll()})"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """cwd, HOME and TMPDIR of the CLI runs: nothing of a run may land in it."""
    root = tmp_path_factory.mktemp("sandbox")
    for d in ("cwd", "home", "tmp"):
        (root / d).mkdir()
    return root


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """Keras writes its keras.json on TensorFlow's import: a library setting, kept out of the
    sandbox so that the sandbox must stay empty."""
    return tmp_path_factory.mktemp("keras")


def _env(emulator, sandbox, keras_home):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.update(
        STORAGE_EMULATOR_HOST=emulator,  # gcsfs (etils.epath's gs:// client here)
        TENSORSTORE_GCS_HTTP_URL=emulator,  # tensorstore (orbax's array data)
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",  # no zonal-bucket look-ups (gRPC, real GCS)
        NO_GCE_CHECK="true",  # no metadata-server look-up for credentials
        GCE_METADATA_HOST="127.0.0.1:9",  # google-auth: a closed port, answered at once
        GCE_METADATA_ROOT="127.0.0.1:9",  # tensorstore
        PYTHONPATH=str(ROOT),  # this checkout, though cwd is elsewhere
        HOME=str(sandbox / "home"),
        TMPDIR=str(sandbox / "tmp"),
        # caches outside the sandbox: the compiled CPU kernels, matplotlib's font list
        XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        MPLCONFIGDIR=os.environ.get("MPLCONFIGDIR") or os.path.expanduser("~/.config/matplotlib"),
        KERAS_HOME=str(keras_home),
    )
    return env


def _run(env, sandbox, *args, script=None):
    head = ["-c", script] if script else ["-m", "ascl_jax.main"]
    return subprocess.run(
        [sys.executable, *head, *args],
        cwd=sandbox / "cwd",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _bucket(emulator, bucket=BUCKET):
    """The names of every object in the bucket (relative to gs://ascl/), and a reader of one, through
    the emulator's JSON API (plain HTTP: not the client under test)."""
    listing = json.loads(_get(f"{emulator}/storage/v1/b/{bucket}/o"))
    assert "nextPageToken" not in listing
    names = {item["name"] for item in listing.get("items", [])}

    def read(name):
        return _get(
            f"{emulator}/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
        )

    return names, read


@pytest.fixture(scope="module")
def env(emulator, sandbox, keras_home):
    return _env(emulator, sandbox, keras_home)


def _local_files(sandbox):
    return sorted(str(p.relative_to(sandbox)) for p in sandbox.rglob("*") if p.is_file())


def test_train_kill_resume_evaluate_analyze_on_a_bucket(emulator, env, sandbox):
    # 1. killed right after the step-2 checkpoint
    r = _run(env, sandbox, *CONFIG, "--workdir", RUN, script=KILL_AFTER_STEP_2)
    assert r.returncode == -9, r.stderr[-3000:]
    names, _ = _bucket(emulator)
    assert "run/checkpoints/2/commit_success.txt" in names, sorted(names)
    assert not any(n.startswith("run/checkpoints/4") for n in names)
    assert "run/config.json" in names and "run/report.json" not in names

    # 2. resumed from the bucket's checkpoint, trained to the end, evaluated, analysed
    r = _run(env, sandbox, *CONFIG, "--workdir", RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed {RUN} from step 2" in r.stderr
    names, read = _bucket(emulator)
    files = {n.removeprefix("run/") for n in names if n.count("/") == 1}
    assert files >= RUN_FILES, sorted(files)
    assert {n.removeprefix("run/plots/") for n in names if n.startswith("run/plots/")} == PLOTS
    assert {"run/checkpoints/2/commit_success.txt", "run/checkpoints/4/commit_success.txt"} <= names
    assert any(n.startswith("run/checkpoints/4/default/") and "ocdbt" in n for n in names)
    assert not any(".ascl_jax_probe" in n for n in names)  # the start-up probes are deleted
    metrics = [json.loads(line) for line in read("run/metrics.jsonl").decode().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]  # the killed run's line kept, the resumed run's added
    report = json.loads(read("run/report.json"))
    assert report["steps"] == 4 and 0 <= report["clean_accuracy"] <= 1
    assert set(report["analysis"]["plots"]) == {p.removesuffix(".png") for p in PLOTS}
    assert all(p.startswith(f"{RUN}/plots/") for p in report["analysis"]["plots"].values())
    events = [n for n in files if n.startswith("events.out.tfevents.")]
    assert len(events) == 2  # one per invocation that trained, each written as it logged
    losses = sorted(
        (step, v) for e in events for step, tag, v in storage.read_scalars(read(f"run/{e}")) if tag == "loss"
    )
    assert losses == [(m["step"], pytest.approx(m["loss"])) for m in metrics]
    accuracy = json.loads(read("run/eval.json"))["clean_accuracy"]
    per_example = np.load(io.BytesIO(read("run/per_example.npz")))
    assert per_example["clean_correct"].mean() == pytest.approx(accuracy)

    # 3. --mode evaluate: a new eval.json, the previous one archived in the bucket
    r = _run(env, sandbox, "--mode", "evaluate", "--workdir", RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    names, read = _bucket(emulator)
    archived = [n for n in names if n.startswith("run/eval.") and n != "run/eval.json"]
    assert len(archived) == 1 and json.loads(read(archived[0]))["clean_accuracy"] == accuracy
    assert any(n.startswith("run/per_example.") and n != "run/per_example.npz" for n in names)
    assert json.loads(read("run/eval.json"))["clean_accuracy"] == accuracy  # same checkpoint, same data

    # 4. --mode analyze: R-DIV and the plots again, merged into report.json
    r = _run(env, sandbox, "--mode", "analyze", "--workdir", RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    names, read = _bucket(emulator)
    report2 = json.loads(read("run/report.json"))
    assert report2["r_div"]["ratio"] == pytest.approx(report["r_div"]["ratio"], rel=1e-5)
    assert {n for n in names if n.startswith("run/plots/")} == {f"run/plots/{p}" for p in PLOTS}

    # nothing of the run reached local disk: not the cwd, HOME or TMPDIR of the runs
    assert _local_files(sandbox) == []


def test_unusable_bucket_is_a_clear_error_before_any_work(emulator, env, sandbox):
    # a bucket that refuses the caller (GCS's 401 to a caller without credentials)
    r = _run(env, sandbox, *CONFIG, "--workdir", "gs://locked/run")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error (StorageError): --workdir gs://locked/run is not writable" in r.stderr
    assert "credentials" in r.stderr and "Nothing was trained" in r.stderr
    assert "Traceback" not in r.stderr  # one line, not the client's traceback
    # a bucket that does not exist
    r = _run(env, sandbox, "--mode", "evaluate", "--workdir", "gs://no-such-bucket/run")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "--workdir gs://no-such-bucket/run is not writable" in r.stderr
    names, _ = _bucket(emulator)
    assert not any(n.startswith("no-such-bucket") or "locked" in n for n in names)
    buckets = json.loads(_get(f"{emulator}/storage/v1/b?project=test"))
    assert [b["name"] for b in buckets["items"]] == [BUCKET]  # the probe never creates a bucket
    assert _local_files(sandbox) == []


def test_paths_keep_urls_and_refuse_unknown_schemes():
    assert str(storage.path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
    assert str(storage.absolute("gs://b/run")) == "gs://b/run"  # never <cwd>/gs:/b/run
    assert str(storage.absolute("rel/run")) == os.path.abspath("rel/run")
    with pytest.raises(storage.StorageError, match="hdfs://x/run.*'hdfs://' is not supported"):
        storage.path("hdfs://x/run")
    assert storage.is_remote("s3://b/x") and not storage.is_remote("/tmp/gs:/b")
