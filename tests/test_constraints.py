"""constraints.txt (the versions `make install` pins) stays inside setup.py's ranges."""

import importlib.metadata
import pathlib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRAS = ("test", "torch")  # the extras `make install` installs


def _pins():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"constraints.txt: {line!r} is not name==version"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt pins {req.name} twice"
        pins[name] = Version(spec[0].version)
    return pins


def test_every_requirement_is_pinned_inside_its_range():
    pins = _pins()
    checked = 0
    for line in importlib.metadata.requires("ascl_jax"):
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in EXTRAS):
            continue  # an extra make install does not install (gcs, s3, autoattack)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt has no pin for {req.name} (setup.py: {line!r})"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside setup.py's {req.specifier}"
        )
        checked += 1
    assert checked >= 25, checked  # setup.py's install_requires plus the test and torch extras


def test_no_cuda_packages_are_pinned():
    cuda = [n for n in _pins() if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert not cuda, f"constraints.txt pins CUDA packages {cuda}: the CPU torch build needs none"
