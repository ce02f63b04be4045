"""Workdirs on object storage, for real and offline: the CLI against local GCS and S3 emulators.

Two module-scoped emulators on 127.0.0.1, each serving the bucket `ascl`: gcp-storage-emulator in
memory (tests/gcs_emulator.py) for gs://, moto's S3 server (`ThreadedMotoServer`, in this process)
for s3://. The CLI runs with cwd, HOME and TMPDIR in a fresh sandbox directory and the workdir
gs://ascl/run or s3://ascl/run: a smoke training killed (SIGKILL) right after its step-2
checkpoint, the resumed run, `--mode evaluate` and `--mode analyze` (one scenario, run once per
store). The bucket must then hold every file of the run and the sandbox none; the bucket is read
through each emulator's own HTTP API, not the clients under test. The clients reach an emulator
through their own settings. gs://: STORAGE_EMULATOR_HOST (gcsfs, behind etils.epath:
config.json, metrics.jsonl, report.json, eval.json, per_example.npz, plots, TensorBoard events,
orbax's directories) and TENSORSTORE_GCS_HTTP_URL (tensorstore: orbax's arrays). s3://:
AWS_ENDPOINT_URL and dummy AWS_* credentials, read by s3fs (botocore) and by
`storage.s3_kvstore` (tensorstore's s3 driver, orbax's arrays). Bad input before any work: a
GCS bucket that refuses the caller, missing GCS and S3 buckets (never created), and, for both
schemes, an endpoint that does not answer (a closed port), which ends the CLI within the
start-up probe's bound.
"""

import dataclasses
import io
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable

import local_processes
import numpy as np
import pytest

from ascl_jax import storage

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "ascl"
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


def gcs_env(url: str) -> dict:
    """The settings that point gcsfs and tensorstore at the GCS endpoint `url`."""
    return dict(
        STORAGE_EMULATOR_HOST=url,  # gcsfs (etils.epath's gs:// client here)
        TENSORSTORE_GCS_HTTP_URL=url,  # tensorstore (orbax's array data)
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",  # no zonal-bucket look-ups (gRPC, real GCS)
        NO_GCE_CHECK="true",  # no metadata-server look-up for credentials
        GCE_METADATA_HOST="127.0.0.1:9",  # google-auth: a closed port, answered at once
        GCE_METADATA_ROOT="127.0.0.1:9",  # tensorstore
    )


def s3_env(url: str) -> dict:
    """The settings that point s3fs (botocore) and tensorstore (`storage.s3_kvstore`) at the S3
    endpoint `url`, with dummy credentials (moto accepts any)."""
    return dict(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",  # no instance-metadata look-up for credentials
    )


@dataclasses.dataclass(frozen=True)
class Store:
    """A running emulator: its URL scheme, the client settings that reach it, and its bucket seen
    through the emulator's own HTTP API (urllib; S3 requests signed with botocore's SigV4 signer),
    not through the client under test."""

    scheme: str
    url: str  # http://127.0.0.1:PORT
    env: dict
    buckets: Callable[[], set[str]]  # the names of every bucket
    names: Callable[[str], set[str]]  # bucket -> the names of every object in it
    read: Callable[[str, str], bytes]  # bucket, name -> the object's bytes

    @property
    def run(self) -> str:
        return f"{self.scheme}://{BUCKET}/run"

    def bucket(self, bucket=BUCKET):
        """The names of every object in `bucket` (relative to the bucket), and a reader of one."""
        return self.names(bucket), lambda name: self.read(bucket, name)


@pytest.fixture(scope="module")
def gcs():
    """A fresh in-memory GCS emulator holding the bucket `ascl`; stopped after the module,
    whatever its tests did."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), str(port), BUCKET],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def buckets():
        return {b["name"] for b in json.loads(_get(f"{url}/storage/v1/b?project=test"))["items"]}

    def names(bucket):
        listing = json.loads(_get(f"{url}/storage/v1/b/{bucket}/o"))
        assert "nextPageToken" not in listing
        return {item["name"] for item in listing.get("items", [])}

    def read(bucket, name):
        quoted = urllib.parse.quote(name, safe="")
        return _get(f"{url}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media")

    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"the emulator did not start (exit code {proc.poll()})"
        yield Store("gs", url, gcs_env(url), buckets, names, read)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def s3():
    """A fresh moto S3 server (in memory, a thread of this process) holding the bucket `ascl`;
    stopped after the module."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    url = "http://{}:{}".format(*server.get_host_and_port())
    env = s3_env(url)
    xmlns = "{http://s3.amazonaws.com/doc/2006-03-01/}"

    def signed(method, u):  # moto serves private objects to signed requests only
        request = AWSRequest(method=method, url=u)
        credentials = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        S3SigV4Auth(credentials, "s3", env["AWS_DEFAULT_REGION"]).add_auth(request)
        return _get(u, method, dict(request.headers))

    def buckets():
        listing = ET.fromstring(signed("GET", f"{url}/"))
        return {b.findtext(f"{xmlns}Name") for b in listing.iter(f"{xmlns}Bucket")}

    def names(bucket):
        listing = ET.fromstring(signed("GET", f"{url}/{bucket}?list-type=2&max-keys=1000"))
        assert listing.findtext(f"{xmlns}IsTruncated") == "false"
        return {c.findtext(f"{xmlns}Key") for c in listing.iter(f"{xmlns}Contents")}

    def read(bucket, name):
        return signed("GET", f"{url}/{bucket}/{urllib.parse.quote(name)}")

    try:
        signed("PUT", f"{url}/{BUCKET}")  # CreateBucket
        yield Store("s3", url, env, buckets, names, read)
    finally:
        server.stop()


@pytest.fixture(params=["gcs", "s3"])
def store(request):
    return request.getfixturevalue(request.param)


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


def _env(store_env, sandbox, keras_home):
    """The CLI's environment: the store's client settings, cwd-independent imports, and every place
    a library writes by default moved into the sandbox (or, for caches, outside it)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = local_processes.one_device_xla_flags()
    env.update(
        store_env,
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


def _get(url: str, method: str = "GET", headers=None) -> bytes:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.read()


def _local_files(sandbox):
    return sorted(str(p.relative_to(sandbox)) for p in sandbox.rglob("*") if p.is_file())


def test_train_kill_resume_evaluate_analyze_on_a_bucket(store, sandbox, keras_home):
    env, run = _env(store.env, sandbox, keras_home), store.run
    # 1. killed right after the step-2 checkpoint
    r = _run(env, sandbox, *CONFIG, "--workdir", run, script=KILL_AFTER_STEP_2)
    assert r.returncode == -9, r.stderr[-3000:]
    names, _ = store.bucket()
    assert "run/checkpoints/2/commit_success.txt" in names, sorted(names)
    assert not any(n.startswith("run/checkpoints/4") for n in names)
    assert "run/config.json" in names and "run/report.json" not in names

    # 2. resumed from the bucket's checkpoint, trained to the end, evaluated, analysed
    r = _run(env, sandbox, *CONFIG, "--workdir", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed {run} from step 2" in r.stderr
    names, read = store.bucket()
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
    assert all(p.startswith(f"{run}/plots/") for p in report["analysis"]["plots"].values())
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
    r = _run(env, sandbox, "--mode", "evaluate", "--workdir", run)
    assert r.returncode == 0, r.stderr[-3000:]
    names, read = store.bucket()
    archived = [n for n in names if n.startswith("run/eval.") and n != "run/eval.json"]
    assert len(archived) == 1 and json.loads(read(archived[0]))["clean_accuracy"] == accuracy
    assert any(n.startswith("run/per_example.") and n != "run/per_example.npz" for n in names)
    assert json.loads(read("run/eval.json"))["clean_accuracy"] == accuracy  # same checkpoint, same data

    # 4. --mode analyze: R-DIV and the plots again, merged into report.json
    r = _run(env, sandbox, "--mode", "analyze", "--workdir", run)
    assert r.returncode == 0, r.stderr[-3000:]
    names, read = store.bucket()
    report2 = json.loads(read("run/report.json"))
    assert report2["r_div"]["ratio"] == pytest.approx(report["r_div"]["ratio"], rel=1e-5)
    assert {n for n in names if n.startswith("run/plots/")} == {f"run/plots/{p}" for p in PLOTS}

    # nothing of the run reached local disk: not the cwd, HOME or TMPDIR of the runs
    assert _local_files(sandbox) == []


def test_unusable_bucket_is_a_clear_error_before_any_work(gcs, sandbox, keras_home):
    env = _env(gcs.env, sandbox, keras_home)
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
    names, _ = gcs.bucket()
    assert not any(n.startswith("no-such-bucket") or "locked" in n for n in names)
    assert gcs.buckets() == {BUCKET}  # the probe never creates a bucket
    assert _local_files(sandbox) == []


def test_missing_s3_bucket_is_a_clear_error_and_is_not_created(s3, sandbox, keras_home):
    # s3fs creates a missing bucket when asked for a directory in it (orbax asks, at create=True):
    # the probe must stop the run before anything gets there
    r = _run(
        _env(s3.env, sandbox, keras_home), sandbox, "--mode", "evaluate", "--workdir", "s3://no-such/run"
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error (StorageError): --workdir s3://no-such/run is not writable" in r.stderr
    assert "The specified bucket does not exist" in r.stderr and "Traceback" not in r.stderr
    assert s3.buckets() == {BUCKET}
    assert _local_files(sandbox) == []


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_unreachable_endpoint_is_a_clear_error_within_the_probe_bound(scheme, sandbox, keras_home):
    # the store's endpoint is a closed port: every request is refused. Unbounded, gcsfs retries for
    # about 35 s (sleeps of 1+2+4+8+16 s and jitter) before it gives up; the probe stops at its bound.
    closed = f"http://127.0.0.1:{_free_port()}"
    store_env = {"gs": gcs_env, "s3": s3_env}[scheme](closed)
    env = _env({**store_env, storage.PROBE_TIMEOUT_ENV: "3"}, sandbox, keras_home)
    url = f"{scheme}://{BUCKET}/run"
    start = time.monotonic()
    r = _run(env, sandbox, *CONFIG, "--workdir", url)
    elapsed = time.monotonic() - start
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error (StorageError): ")]
    assert len(errors) == 1 and f"--workdir {url}" in errors[0], r.stderr[-3000:]
    assert "Nothing was trained" in errors[0] and "Traceback" not in r.stderr
    assert f"the storage endpoint {closed} could not be reached within 3 s" in errors[0] or (
        scheme == "s3" and "not writable" in errors[0]  # botocore's retries may give up sooner
    ), errors[0]
    if scheme == "gs":
        assert "Cannot connect to host 127.0.0.1" in errors[0]  # the error gcsfs was retrying
    assert elapsed < 25, elapsed  # start-up (imports) plus at most 2 x 3 s of probing
    assert _local_files(sandbox) == []


def test_paths_keep_urls_and_refuse_unknown_schemes():
    assert str(storage.path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
    assert str(storage.absolute("gs://b/run")) == "gs://b/run"  # never <cwd>/gs:/b/run
    assert str(storage.absolute("rel/run")) == os.path.abspath("rel/run")
    with pytest.raises(storage.StorageError, match="hdfs://x/run.*'hdfs://' is not supported"):
        storage.path("hdfs://x/run")
    assert storage.is_remote("s3://b/x") and not storage.is_remote("/tmp/gs:/b")


def test_orbax_specs_of_an_s3_directory_use_tensorstores_s3_driver(monkeypatch):
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    options = storage.orbax_options("s3://b/run")
    assert options["atomicity_options"].mode == "commit_file"
    assert storage.orbax_options("gs://b/run") == {} and storage.orbax_options("/tmp/run") == {}
    monkeypatch.setenv(storage.PROBE_TIMEOUT_ENV, "soon")
    with pytest.raises(storage.StorageError, match="ASCL_JAX_STORAGE_PROBE_TIMEOUT='soon'.*> 0"):
        storage.probe_timeout()
    spec = ts_utils.build_kvstore_tspec("s3://b/run/checkpoints/2/default", name="params.w")
    s3 = {"driver": "s3", "bucket": "b", "path": "run/checkpoints/2/default"}
    assert spec["driver"] == "ocdbt" and spec["path"] == "params.w"
    assert spec["base"] == {**s3, "endpoint": "http://127.0.0.1:1", "aws_region": "eu-west-3"}
    plain = ts_utils.build_kvstore_tspec("s3://b/run/x", use_ocdbt=False)
    assert plain["driver"] == "s3" and plain["path"] == "run/x"
    # other directories reach orbax's own function unchanged
    assert ts_utils.build_kvstore_tspec("gs://b/run/x", use_ocdbt=False)["driver"] == "gcs"
    assert ts_utils.build_kvstore_tspec("/tmp/run/x", use_ocdbt=False)["driver"] == "file"


def test_torch_checkpoint_and_chain_json_at_s3_urls(s3, monkeypatch, tmp_path):
    """init.torch_checkpoint read from an s3:// object and launch/run_chain's chain.json written to
    an s3:// ROOT, through ascl_jax.storage (the emulator's own API sees the object, nothing lands
    under ./s3:); a missing object is a ConfigError naming the field."""
    import torch

    from ascl_jax import config, torchio
    from ascl_jax.train import setup

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ASCL_JAX_KEEP_XLA_FLAGS", "1")  # importing run_chain leaves XLA_FLAGS alone
    want = {"w": torch.arange(6.0).reshape(2, 3)}
    buf = io.BytesIO()
    torch.save({"state_dict": want}, buf)
    url = f"s3://{BUCKET}/ckpt/m.pt"
    storage.write_bytes(url, buf.getvalue())
    c = config.base_config()
    c.init.torch_checkpoint = url
    config.validate(c)
    setup.check_torch_checkpoint(c)
    assert torch.equal(torchio.read_checkpoint(url)["w"], want["w"])
    c.init.torch_checkpoint = f"s3://{BUCKET}/ckpt/absent.pt"
    config.validate(c)  # a URL is checked through storage, in the trainer
    with pytest.raises(config.ConfigError, match=r"torch_checkpoint='s3://ascl/ckpt/absent.pt' does not"):
        setup.check_torch_checkpoint(c)

    from launch import run_chain

    chain = tmp_path / "chain.json"
    chain.write_text("[]")
    monkeypatch.chdir(tmp_path)
    assert run_chain.main(["--config", str(chain), "--workdir", f"s3://{BUCKET}/chains"]) == 0
    names, read = s3.bucket()
    assert "chains/chain.json" in names and json.loads(read("chains/chain.json")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.json"]
