"""Checks Debian's Fashion-MNIST files (``dataset-fashion-mnist``) and jaxreg's reading of them.

Run by ``.ci/run`` after the test suite, with the package installed; the required suite never
reads these files (it writes small IDX files of its own). Checks, failing loudly on any miss:

1. each of the four ``.gz`` files in ``/usr/share/datasets/fashion-mnist/`` has the sha256 that
   ``shared/datasets.md`` lists (``../shared`` from the project root), and
   ``jaxreg.data.sources`` carries the same sums (they verify downloads);
2. ``jaxreg.data.load("fashion-mnist")`` finds the directory through its search order and
   decodes 60,000 + 10,000 images of 28x28 in [0, 1], 6,000 / 1,000 of each class;
3. the first test image equals an independent decode (``gzip`` + the 16-byte IDX header).

Usage: ``python .ci/check_debian_data.py [--datasets-md PATH]``; exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]


def listed_sums(datasets_md: Path) -> dict[str, str]:
    """``{file stem: sha256}`` from the ``<sha256>  <name>.gz`` lines of ``datasets.md``."""
    lines = re.findall(r"^([0-9a-f]{64})\s+(\S+)\.gz$", datasets_md.read_text(), re.M)
    return {name: digest for digest, name in lines}


def check(datasets_md: Path) -> list[str]:
    """The problems found (empty: all checks passed)."""
    from jaxreg.data import load, sources

    if not datasets_md.is_file():
        return [f"{datasets_md}: not found (pass --datasets-md PATH)"]
    problems = []
    expected = listed_sums(datasets_md)
    if set(expected) != set(sources.IDX_FILES):
        return [f"{datasets_md}: lists {sorted(expected)}, expected the four {sources.IDX_FILES}"]
    for stem, digest in expected.items():
        path = DEBIAN_DIR / f"{stem}.gz"
        if not path.is_file():
            problems.append(f"{path}: missing (apt-get install dataset-fashion-mnist)")
            continue
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            problems.append(f"{path}: sha256 {actual}, {datasets_md.name} lists {digest}")
    if sources.IDX_SOURCES["fashion-mnist"].sha256 != expected:
        problems.append(f"jaxreg.data.sources' fashion-mnist sums differ from {datasets_md}")
    if problems:
        return problems

    # The search order must reach the system directory: no JAXREG_DATA_DIR, an empty cache.
    os.environ.pop("JAXREG_DATA_DIR", None)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        ds = load("fashion-mnist", download=False)
    facts = {
        "source": (ds.source, str(DEBIAN_DIR)),
        "x_train.shape": (ds.x_train.shape, (60000, 28, 28, 1)),
        "x_test.shape": (ds.x_test.shape, (10000, 28, 28, 1)),
        "dtypes": ((ds.x_train.dtype, ds.y_train.dtype), (np.float32, np.int32)),
        "pixel range": ((float(ds.x_train.min()), float(ds.x_train.max())), (0.0, 1.0)),
        "train classes": (np.bincount(ds.y_train).tolist(), [6000] * 10),
        "test classes": (np.bincount(ds.y_test).tolist(), [1000] * 10),
    }
    problems += [f"load('fashion-mnist') {name}: {got}, expected {want}"
                 for name, (got, want) in facts.items() if got != want]
    raw = gzip.decompress((DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw[16:16 + 784], np.uint8).reshape(28, 28)
    if not np.allclose(ds.x_test[0, :, :, 0] * 255, first, atol=1e-4):
        problems.append("load('fashion-mnist').x_test[0] differs from an independent decode")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-md", type=Path, default=ROOT.parent / "shared" / "datasets.md")
    args = parser.parse_args()
    problems = check(args.datasets_md)
    for problem in problems:
        print(f"check_debian_data: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_debian_data: {DEBIAN_DIR}: 4 files match {args.datasets_md}; "
              "jaxreg.data.load decodes 60000 + 10000 images, 10 balanced classes")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
