"""Every file of a run, local or on object storage, through one path library (`etils.epath`).

A path is a local path or a URL: `gs://bucket/dir` (Google Cloud Storage) or `s3://bucket/dir`
(Amazon S3). A URL stays a URL end to end: nothing here turns it into a local path.

Backends. epath sends local paths to `os` and URLs to fsspec (gcsfs for gs://, s3fs for s3://,
`pip install 'ascl_jax[gcs]'` / `'ascl_jax[s3]'`). epath would pick `tf.io.gfile` for URLs
whenever TensorFlow is importable; importing this module sets `EPATH_USE_TF=false` (unless the
environment already sets it), so workdir files, plots and orbax's directory operations share one
client per scheme, the one tests/test_storage.py runs against local emulators (a GCS emulator
through `STORAGE_EMULATOR_HOST`, moto's S3 server through `AWS_ENDPOINT_URL`; TensorFlow's GCS
client has a fixed endpoint). Orbax's array data goes through tensorstore: its `gcs` driver
(`TENSORSTORE_GCS_HTTP_URL` for an emulator), and for s3:// its `s3` driver, to which
`orbax_options` / `route_orbax_s3` route orbax (orbax 0.12 builds gs:// and local specs only).
`check_workdir` probes a URL workdir at start-up within a bounded time. docs/storage.md has the
details.

Object stores have no rename and no append. `write_bytes` writes a local file through a temporary
sibling and `os.replace`, an object in one upload (readers see all of it or nothing);
`append_text` appends to a local file and rewrites an object with the text added; `move` renames
a local file and copies-then-deletes an object.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Mapping

os.environ.setdefault("EPATH_USE_TF", "false")

import jax  # noqa: E402
from etils import epath  # noqa: E402

log = logging.getLogger("ascl_jax")

Path = epath.Path
PathLike = str | os.PathLike

# URL scheme -> the fsspec package that serves it
CLIENTS = {"gs": "gcsfs", "s3": "s3fs"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# the start-up probe's bound on each request, retries included (`check_workdir`)
PROBE_TIMEOUT_ENV = "ASCL_JAX_STORAGE_PROBE_TIMEOUT"
PROBE_TIMEOUT_S = 10.0


class StorageError(OSError):
    """A workdir on object storage cannot be used (no client, no bucket, no credentials)."""


def scheme(p: PathLike) -> str | None:
    """'gs' for 'gs://bucket/x', None for a local path."""
    m = _URL.match(os.fspath(p))
    return m.group(1).lower() if m else None


def is_remote(p: PathLike) -> bool:
    return scheme(p) is not None


def path(p: PathLike) -> epath.Path:
    """`p` as an `epath.Path` (a URL kept as a URL). Raises StorageError for a URL scheme other
    than those of `CLIENTS`."""
    s = scheme(p)
    if s is not None and s not in CLIENTS:
        raise StorageError(
            f"{os.fspath(p)}: URL scheme '{s}://' is not supported; use a local path, gs:// or s3://"
        )
    return p if isinstance(p, epath.Path) else epath.Path(os.fspath(p))


def absolute(p: PathLike) -> epath.Path:
    """`path(p)`, a local path made absolute (a URL is absolute already)."""
    return path(p) if is_remote(p) else epath.Path(os.path.abspath(os.fspath(p)))


def makedirs(p: PathLike) -> None:
    """Creates a local directory and its parents. Object stores have no directories: a URL needs
    none (and a bucket is never created here)."""
    if not is_remote(p):
        path(p).mkdir(parents=True, exist_ok=True)


def write_bytes(p: PathLike, data: bytes) -> None:
    """Writes `data` to `p` whole: readers see the old content or the new one, never a part."""
    q = path(p)
    if is_remote(q):
        q.write_bytes(data)  # one object upload
        return
    tmp = q.with_name(q.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(q)


def append_text(p: PathLike, text: str) -> None:
    """Appends `text` to `p` (created when missing)."""
    q = path(p)
    if not is_remote(q):
        with q.open("a") as f:
            f.write(text)
        return
    old = q.read_bytes() if q.exists() else b""
    q.write_bytes(old + text.encode("utf-8"))


def move(src: PathLike, dst: PathLike) -> None:
    """Moves the file `src` to `dst` (replacing it)."""
    s, d = path(src), path(dst)
    if is_remote(s) or is_remote(d):
        d.write_bytes(s.read_bytes())
        s.unlink()
    else:
        s.replace(d)


def endpoint(s: str) -> str:
    """The endpoint URL the clients of scheme `s` ('gs' or 's3') talk to: the one the environment
    sets (gs://: STORAGE_EMULATOR_HOST; s3://: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, the
    variables botocore and so s3fs read), else the public service."""
    if s == "gs":
        return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return env or "https://s3.amazonaws.com"


class _LastError(logging.Handler):
    """Keeps the last error a client logged (the one it retries, which a timeout would hide)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.message = ""

    def emit(self, record):
        message = record.getMessage()
        if "error" in message.lower() or "exception" in message.lower():
            self.message = message


def probe_timeout() -> float:
    """Seconds the start-up probe waits for the store: ASCL_JAX_STORAGE_PROBE_TIMEOUT, default
    PROBE_TIMEOUT_S."""
    raw = os.environ.get(PROBE_TIMEOUT_ENV, "")
    try:
        t = float(raw) if raw else PROBE_TIMEOUT_S
    except ValueError:
        t = -1.0
    if not t > 0:
        raise StorageError(f"{PROBE_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return t


def check_workdir(workdir: PathLike) -> None:
    """Start-up probe of a URL workdir (a local one passes): the client package is installed, and
    this process can write and delete an object there (a missing bucket, missing credentials or an
    unreachable endpoint fail here). Raises StorageError naming the path, before any training.

    The probe is two requests of the run's own fsspec client (the instance epath uses), each
    bounded by `probe_timeout()` seconds, retries included: an endpoint that refuses or does not
    answer fails within that bound, where the client would retry for about 35 s (gcsfs) before
    giving up. The run's later I/O keeps the clients' own retries."""
    if not is_remote(workdir):
        return
    url = os.fspath(workdir)
    s = scheme(url)
    path(url)  # the scheme is supported
    client = CLIENTS[s]
    if importlib.util.find_spec(client) is None:
        raise StorageError(
            f"--workdir {url}: {s}:// paths need the package {client}: pip install 'ascl_jax[{s}]' "
            f"(or pip install {client})"
        )
    import fsspec
    from fsspec.exceptions import FSTimeoutError

    timeout = probe_timeout()
    name = f".ascl_jax_probe.{socket.gethostname()}.{os.getpid()}.{jax.process_index()}"
    client_log, last = logging.getLogger(client), _LastError()
    level, propagate = client_log.level, client_log.propagate
    # its tracebacks of a refused request stay quiet (the error below says it); its last message kept
    client_log.setLevel(logging.DEBUG)
    client_log.propagate = False
    client_log.addHandler(last)
    try:
        fs, root = fsspec.core.url_to_fs(url)
        probe = f"{root.rstrip('/')}/{name}"
        fs.pipe_file(probe, b"ascl_jax write probe\n", timeout=timeout)
        fs.rm_file(probe, timeout=timeout)
    except FSTimeoutError as e:
        seen = f"; the client's last error: {last.message}" if last.message else ""
        raise StorageError(
            f"--workdir {url}: the storage endpoint {endpoint(s)} could not be reached within "
            f"{timeout:g} s ({PROBE_TIMEOUT_ENV}){seen}. Check the network and the endpoint settings "
            f"(docs/storage.md). Nothing was trained."
        ) from e
    except Exception as e:  # noqa: BLE001 - each client raises its own types
        raise StorageError(
            f"--workdir {url} is not writable from this machine ({type(e).__name__}: {e}). Check that "
            f"the bucket exists and that this machine has credentials with write access to it "
            f"(gs://: `gcloud auth application-default login` or the VM's service account; "
            f"s3://: AWS_* variables or ~/.aws). Nothing was trained."
        ) from e
    finally:
        client_log.removeHandler(last)
        client_log.setLevel(level)
        client_log.propagate = propagate


# --------------------------------------------------------------------------------------------
# Orbax on s3://


def orbax_options(directory: PathLike) -> dict:
    """The `ocp.CheckpointManagerOptions` fields a checkpoint directory needs beyond the defaults:
    none for a local path or gs://. For s3:// the commit-file protocol (orbax writes the step in
    place and marks it finished with `commit_success.txt`, as it does on GCS; its default for other
    paths renames a temporary directory, which S3 cannot do), and orbax's TensorStore specs are
    routed to TensorStore's `s3` driver (`route_orbax_s3`)."""
    if scheme(directory) != "s3":
        return {}
    import orbax.checkpoint as ocp

    route_orbax_s3()
    mode = ocp.options.AtomicityMode.COMMIT_FILE
    return {"atomicity_options": ocp.options.AtomicityOptions(mode=mode)}


def s3_kvstore(bucket: str, key: str) -> dict:
    """TensorStore's `s3` kvstore spec of s3://bucket/key: the endpoint `endpoint('s3')` when the
    environment sets one (an S3-compatible store or emulator), the region of AWS_REGION /
    AWS_DEFAULT_REGION when set (else TensorStore asks the bucket); credentials are TensorStore's
    default AWS chain (AWS_* variables, ~/.aws, the instance's role)."""
    spec = {"driver": "s3", "bucket": bucket, "path": key}
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        spec["endpoint"] = endpoint("s3")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        spec["aws_region"] = region
    return spec


def _gcs_to_s3(spec):
    if isinstance(spec, list):
        return [_gcs_to_s3(x) for x in spec]
    if not isinstance(spec, dict):
        return spec
    if spec.get("driver") in ("gcs", "gcs_grpc"):
        rest = {k: v for k, v in spec.items() if k not in ("driver", "bucket", "path")}
        return {**s3_kvstore(spec["bucket"], spec.get("path", "")), **rest}
    return {k: _gcs_to_s3(v) for k, v in spec.items()}


def route_orbax_s3() -> None:
    """Makes orbax write and read the arrays of an s3:// checkpoint through TensorStore's `s3`
    kvstore driver (idempotent).

    orbax-checkpoint 0.12 builds TensorStore kvstore specs (`build_kvstore_tspec` of
    `orbax.checkpoint._src.serialization.tensorstore_utils`, every array read and write goes
    through it) for gs:// and local paths only; an s3:// directory fails there ("Checkpoint path
    should be absolute. Got s3:/..."). The wrapper installed here builds the spec of an s3://
    directory as orbax builds it for the same bucket and key on GCS (OCDBT, per-process
    sub-databases, read coalescing) and swaps each `gcs` base for the `s3` spec of `s3_kvstore`;
    any other directory goes to orbax's function unchanged. orbax's directory operations
    (step directories, metadata, `commit_success.txt`) go through epath and s3fs."""
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    build = ts_utils.build_kvstore_tspec
    if getattr(build, "ascl_jax_s3", False):
        return

    @functools.wraps(build)
    def build_kvstore_tspec(directory, *args, **kwargs):
        d = os.fspath(directory)
        if scheme(d) != "s3":
            return build(directory, *args, **kwargs)
        return _gcs_to_s3(build("gs://" + d.split("://", 1)[1], *args, **kwargs))

    build_kvstore_tspec.ascl_jax_s3 = True
    ts_utils.build_kvstore_tspec = build_kvstore_tspec


# --------------------------------------------------------------------------------------------
# TensorBoard scalars


def _masked_crc32c(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return masked_crc32c(data)


def _record(data: bytes) -> bytes:
    """One TFRecord frame: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    header = struct.pack("<Q", len(data))
    crc = struct.pack("<I", _masked_crc32c(header)), struct.pack("<I", _masked_crc32c(data))
    return header + crc[0] + data + crc[1]


class ScalarWriter:
    """TensorBoard scalars of a run in `logdir/events.out.tfevents.<time>.<host>.<pid>.v2`, written
    through `path` by process 0 (other processes write nothing). `write_scalars(step, {tag:
    value})` writes at once (a run killed later keeps them): appended to a local file, the whole
    file rewritten as one object on object storage. `flush()` and `close()` have nothing left to
    do; they exist for the clu `MetricWriter` interface."""

    def __init__(self, logdir: PathLike):
        self._active = jax.process_index() == 0
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
        self.path = path(logdir) / name
        self._written = b""  # what an object store needs again on each flush
        self._pending = [self._event(file_version="brain.Event:2")]

    @staticmethod
    def _event(**kw) -> bytes:
        from tensorboard.compat.proto import event_pb2

        return _record(event_pb2.Event(wall_time=time.time(), **kw).SerializeToString())

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboard.compat.proto import summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._pending.append(self._event(step=int(step), summary=summary_pb2.Summary(value=values)))
        self.flush()

    def flush(self) -> None:
        if not self._active or not self._pending:
            return
        new, self._pending = b"".join(self._pending), []
        if is_remote(self.path):
            self._written += new
            self.path.write_bytes(self._written)
        else:
            makedirs(self.path.parent)
            with self.path.open("ab") as f:
                f.write(new)

    def close(self) -> None:
        self.flush()


def read_scalars(p: PathLike | bytes) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in a TensorBoard events file written by ScalarWriter
    (its path, or its bytes)."""
    from tensorboard.compat.proto import event_pb2

    data, out, i = p if isinstance(p, bytes) else path(p).read_bytes(), [], 0
    buf = io.BytesIO(data)
    while i < len(data):
        buf.seek(i)
        (n,) = struct.unpack("<Q", buf.read(8))
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        i += 12 + n + 4
    return out
