"""Where the IDX datasets (Fashion-MNIST, MNIST) come from: local directories, then a download.

Offline-first. An explicit ``data_dir`` (the directory holding the four files) is the only
place looked at: its files are used or refused (missing, corrupt, another dataset's), never
replaced by another copy. Without it the files are looked for, in this order, in

1. ``$JAXREG_DATA_DIR/<name>/``,
2. the cache ``$XDG_CACHE_HOME/jaxreg/<name>/`` (``~/.cache/jaxreg/<name>/`` by default),
3. system directories (Debian's ``dataset-fashion-mnist`` package installs
   ``/usr/share/datasets/fashion-mnist/``),

and only when none holds all four files are they downloaded from the official source into the
cache. The first directory holding all four is used: a corrupt copy there is an error, not a
reason to try the next. Each file may be gzip-compressed (``<stem>.gz``, as distributed) or
not (``<stem>``), and every file read is checked against its known sha256 (:func:`verify`):
that of its IDX content (the decompressed bytes, so a ``.gz`` copy and a plain one of the
same file both pass) or, for a ``.gz`` file, that of the file as distributed. A download is
checked against the published sha256 and written to a temporary file in the cache directory
that is renamed into place only when complete and verified, so the cache never holds a
partial or unverified file. This stays a few standard-library calls rather than a
dependency such as tensorflow-datasets or torchvision: four files do not justify a heavy
install, and machines without network access must work from local copies.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from jaxreg.data.idx import DataError

# File stems of an MNIST-format dataset, as distributed (each with a ``.gz`` suffix).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class IdxSource(NamedTuple):
    """Where an IDX dataset is downloaded from and how its files are verified.

    Attributes:
      base_url: URL prefix; file ``<stem>.gz`` is fetched from ``base_url + stem + ".gz"``.
      sha256: file stem -> sha256 hex digest of the ``.gz`` file as distributed.
      content_sha256: file stem -> sha256 hex digest of its IDX content (the decompressed
        file); empty when unknown, and then only ``.gz`` files can be verified.
      system_dirs: directories where system packages install the files.
    """

    base_url: str
    sha256: dict[str, str]
    content_sha256: Mapping[str, str] = MappingProxyType({})
    system_dirs: tuple[str, ...] = ()


IDX_SOURCES = {
    # Zalando's official location. The Debian package's files are byte-identical to it
    # (sums from ../shared/datasets.md, package version 0.0~git20200523.55506a9-1).
    "fashion-mnist": IdxSource(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        sha256={
            "train-images-idx3-ubyte":
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "train-labels-idx1-ubyte":
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "t10k-images-idx3-ubyte":
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "t10k-labels-idx1-ubyte":
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        },
        # Computed with sha256sum from the decompressed files of that Debian package.
        content_sha256={
            "train-images-idx3-ubyte":
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte":
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte":
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte":
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    # The mirror TensorFlow uses (yann.lecun.com no longer serves the files reliably); the
    # sums are those of the original files, as published by TFDS and torchvision. The sums of
    # the decompressed files are not known here (no copy to compute them from), so only the
    # .gz files as distributed can be verified.
    "mnist": IdxSource(
        base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        sha256={
            "train-images-idx3-ubyte":
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte":
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte":
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte":
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
}


def cache_root() -> Path:
    """jaxreg's cache directory, ``$XDG_CACHE_HOME/jaxreg`` (``~/.cache/jaxreg``; XDG spec)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxreg"


def cache_dir(name: str) -> Path:
    """The download cache of dataset ``name``: ``cache_root() / name``."""
    return cache_root() / name


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order (see the module docstring):
    ``[data_dir]`` alone when it is given."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    if env := os.environ.get("JAXREG_DATA_DIR"):
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_dir(name))
    dirs.extend(Path(d) for d in IDX_SOURCES[name].system_dirs)
    return dirs


def find_file(directory: Path, stem: str) -> Path | None:
    """``directory/<stem>.gz`` if it is a file, else ``directory/<stem>`` if it is, else None."""
    for path in (directory / f"{stem}.gz", directory / stem):
        if path.is_file():
            return path
    return None


def download_file(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Downloads ``url`` to ``dest`` atomically, keeping it only if its sha256 matches.

    The bytes go to a temporary file in ``dest``'s directory (so the final ``os.replace`` is an
    atomic rename on the same file system); on any failure, checksum mismatch and interruption
    included, the temporary file is removed and ``dest`` is left untouched. Any URL scheme
    ``urllib`` supports works, ``file://`` included (used by the tests).

    Raises:
      DataError: the download's sha256 differs from ``sha256``.
      OSError, ValueError, http.client.HTTPException: the download failed (``urllib``'s own).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(f"sha256 mismatch: expected {sha256}, got {digest.hexdigest()}; "
                            "the download was discarded")
        os.replace(tmp, dest)
    except BaseException:  # KeyboardInterrupt included: never leave a partial file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def verify(name: str, stem: str, path: Path, raw: bytes, content: bytes) -> str:
    """Checks file ``path`` of dataset ``name`` (``raw``: its bytes, ``content``: its IDX
    bytes) against the known sha256 of file ``stem``; returns the sha256 of ``content``.

    Raises:
      DataError: neither the content's sha256 nor (for a ``.gz`` file) the file's matches, or
        the file is uncompressed and only the ``.gz`` file's sum is known.
    """
    source = IDX_SOURCES[name]
    digest = hashlib.sha256(content).hexdigest()
    gz = path.suffix == ".gz"
    if digest == source.content_sha256.get(stem) or (
            gz and hashlib.sha256(raw).hexdigest() == source.sha256[stem]):
        return digest
    if not gz and stem not in source.content_sha256:
        raise DataError(f"{path}: cannot verify an uncompressed {name} file (only the sha256 of "
                        f"{stem}.gz as distributed is known): use the .gz file")
    raise DataError(f"{path}: not {name}'s {stem}: sha256 {digest} of its IDX content is not "
                    f"the known one (a corrupt, truncated or other dataset's file); replace it "
                    f"with the file from {source.base_url}")


def locate(name: str, data_dir: str | os.PathLike | None = None,
           download: bool = True) -> tuple[Path, str]:
    """Finds (or downloads) the four IDX files of dataset ``name``.

    Returns:
      The directory holding all four files, and a human-readable description of the source.

    Raises:
      DataError: ``data_dir`` is given and lacks some of the files (the message names them);
        or no searched directory holds all four files and downloading is disabled or failed
        (the message, one line, lists the directories searched and how to supply the files).
    """
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        missing = [s + "[.gz]" for s in IDX_FILES if find_file(directory, s) is None]
        if missing:
            raise DataError(f"{directory}: data_dir lacks {len(missing)} of the 4 {name} IDX "
                            f"files: {', '.join(missing)} (an explicit data_dir is used alone, "
                            f"never replaced by another copy)")
        return directory, str(directory)
    searched = search_dirs(name)
    for directory in searched:
        if all(find_file(directory, stem) for stem in IDX_FILES):
            return directory, str(directory)
    source = IDX_SOURCES[name]
    target = cache_dir(name)
    problem = (f"{name}: no directory holds all four IDX files "
               f"({', '.join(s + '[.gz]' for s in IDX_FILES)}); searched "
               f"{', '.join(map(str, searched))}.")
    remedy = (f"Supply the files: put them in a directory and pass data_dir=DIR, or set "
              f"JAXREG_DATA_DIR=ROOT with the files in ROOT/{name}/, or download them from "
              f"{source.base_url} into {target}/.")
    if not download:
        raise DataError(f"{problem} Downloading is disabled (download=False). {remedy}")
    for stem in IDX_FILES:
        if find_file(target, stem) is None:
            url = source.base_url + stem + ".gz"
            try:
                download_file(url, target / f"{stem}.gz", source.sha256[stem])
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError: OSError
                why = " ".join(f"{type(e).__name__}: {e}".split())  # one line
                raise DataError(f"{problem} Downloading {url} failed ({why}). {remedy}") from e
    return target, f"{target} (downloaded from {source.base_url})"
