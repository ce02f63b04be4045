"""A local GCS emulator for tests/test_storage.py: `python tests/gcs_emulator.py PORT BUCKET`.

gcp-storage-emulator (in memory, on 127.0.0.1:PORT, with BUCKET created), plus two things real GCS
does that the emulator does not:

  * a media download carries the object's generation in the `x-goog-generation` header (tensorstore,
    which orbax writes checkpoints with, reads the generation from it for its conditional writes);
  * the bucket `locked` answers every request with 401, as GCS answers a caller without credentials.

Prints `ready` once it serves; stops on SIGTERM / SIGINT.
"""

import contextlib
import json
import re
import signal
import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

LOCKED_BUCKET = "locked"
_LOCKED = re.compile(rf"/b/{LOCKED_BUCKET}(/|$|\?)")
_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj.get("metageneration", "1")


_handle = server.Router.handle


def handle(self, method):
    h = self._request_handler
    if not _LOCKED.search(h.path):
        return _handle(self, method)
    h.rfile.read(int(h.headers.get("content-length") or 0))
    body = json.dumps(
        {"error": {"code": 401, "message": "Anonymous caller does not have storage.objects access."}}
    ).encode()
    h.send_response(401)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def main(port: int, bucket: str) -> None:
    objects.download = download  # `objects.get` (alt=media) calls it by this name
    for _, methods in server.HANDLERS:
        for method, fn in list(methods.items()):
            if fn is _download:
                methods[method] = download
    server.Router.handle = handle
    emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    emulator.start()
    print("ready", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt, SystemExit):  # SIGTERM / Ctrl-C: a normal stop
            signal.pause()
    finally:
        emulator.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
