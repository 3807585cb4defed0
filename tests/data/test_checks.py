"""The IDX loader refuses bad data at load: checksums (gz and plain), shapes, counts, labels,
and an explicit ``data_dir`` is used or refused, never replaced by another copy.

Hermetic: tiny IDX files of the real format are written here (by tests/helpers.py's own
encoder), and the known sha256 of ``fashion-mnist`` are replaced by those of these files,
computed here; the system directory is an empty folder, the cache and JAXREG_DATA_DIR
isolated. Nothing reads the real Fashion-MNIST.
"""
import gzip
import hashlib

import numpy as np
import pytest

from jaxreg import data
from jaxreg.data import DataError, sources
from tests.helpers import tiny_files, write

STEMS = sources.IDX_FILES


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@pytest.fixture
def known(tmp_path, monkeypatch):
    """Makes ``tiny_files()`` fashion-mnist's known files (content and .gz sums computed here);
    returns them. The system directory is an empty folder; no cache, no JAXREG_DATA_DIR."""
    monkeypatch.delenv("JAXREG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    files = tiny_files()
    fake = sources.IDX_SOURCES["fashion-mnist"]._replace(
        sha256={s: sha(gzip.compress(b, mtime=0)) for s, b in files.items()},
        content_sha256={s: sha(b) for s, b in files.items()},
        system_dirs=(str(tmp_path / "empty-system-dir"),))
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist", fake)
    return files


def load(directory, name="fashion-mnist"):
    return data.load(name, data_dir=directory, download=False)


# --- checksums -----------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_known_files_load_gz_and_plain_with_one_fingerprint(tmp_path, known, gz):
    ds = load(write(tmp_path / "d", known, gz=gz))
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train[0, 0, 0, 0] == np.float32(1 / 255)
    # the fingerprint, independently: sha256 of "<stem> <sha256 of the IDX content>" lines
    lines = "".join(f"{s} {sha(known[s])}\n" for s in STEMS)
    assert ds.fingerprint == sha(lines.encode())


def test_recompressed_gz_passes_by_its_content(tmp_path, known):
    d = tmp_path / "d"
    write(d, known)
    for stem, content in known.items():  # another compression level: other .gz bytes
        (d / f"{stem}.gz").write_bytes(gzip.compress(content, compresslevel=1, mtime=123))
    assert sha((d / f"{STEMS[0]}.gz").read_bytes()) != known_gz_sum(STEMS[0])
    assert load(d).fingerprint == load(write(tmp_path / "plain", known, gz=False)).fingerprint


def known_gz_sum(stem):
    return sources.IDX_SOURCES["fashion-mnist"].sha256[stem]


@pytest.mark.parametrize("gz", [True, False])
def test_a_changed_pixel_is_refused_naming_the_file(tmp_path, known, gz):
    files = dict(known)
    changed = bytearray(files["t10k-images-idx3-ubyte"])
    changed[-1] ^= 1  # still a valid IDX file, one pixel off
    files["t10k-images-idx3-ubyte"] = bytes(changed)
    d = write(tmp_path / "d", files, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    with pytest.raises(DataError, match=rf"{name}: not fashion-mnist's t10k-images-idx3-ubyte: "
                                        rf"sha256 {sha(bytes(changed))}"):
        load(d)


def test_another_datasets_files_are_refused(tmp_path, known):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: not fashion-mnist's"):
        load(write(tmp_path / "d", tiny_files(marker=9)))


def test_gz_files_are_verified_by_the_distributed_sum_when_content_sums_are_unknown(
        tmp_path, known, monkeypatch):
    """MNIST: only the .gz sums are known. Matching .gz files load, plain files are refused
    (they cannot be verified), a .gz of other bytes is refused."""
    gz_sums = {s: sha(gzip.compress(b, mtime=0)) for s, b in known.items()}
    monkeypatch.setitem(sources.IDX_SOURCES, "mnist",
                        sources.IDX_SOURCES["mnist"]._replace(sha256=gz_sums))
    assert sources.IDX_SOURCES["mnist"].content_sha256 == {}
    assert load(write(tmp_path / "gz", known), "mnist").x_train.shape == (6, 28, 28, 1)
    with pytest.raises(DataError, match="cannot verify an uncompressed mnist file"):
        load(write(tmp_path / "plain", known, gz=False), "mnist")
    with pytest.raises(DataError, match="not mnist's train-images-idx3-ubyte"):
        load(write(tmp_path / "other", tiny_files(marker=9)), "mnist")


def test_fashion_mnist_knows_the_content_sums_of_all_four_files():
    source = sources.IDX_SOURCES["fashion-mnist"]
    assert set(source.content_sha256) == set(source.sha256) == set(STEMS)
    assert not set(source.content_sha256.values()) & set(source.sha256.values())


# --- shapes, counts, labels ----------------------------------------------------------------

def checked(tmp_path, monkeypatch, files):
    """``files`` made the known ones (so that only the consistency checks can fail), loaded."""
    fake = sources.IDX_SOURCES["fashion-mnist"]._replace(
        content_sha256={s: sha(b) for s, b in files.items()})
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist", fake)
    return load(write(tmp_path / "d", files))


def test_test_images_of_another_shape_are_refused(tmp_path, known, monkeypatch):
    with pytest.raises(DataError, match=r"test images are 28x27, training images 28x28"):
        checked(tmp_path, monkeypatch, tiny_files(test_shape=(28, 27)))


def test_an_empty_test_split_is_refused(tmp_path, known, monkeypatch):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: no images \(an empty t10k"):
        checked(tmp_path, monkeypatch, tiny_files(n_test=0))


def test_an_empty_training_split_is_refused(tmp_path, known, monkeypatch):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: no images"):
        checked(tmp_path, monkeypatch, tiny_files(n_train=0))


def test_a_label_outside_0_to_9_is_refused(tmp_path, known, monkeypatch):
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: label 10 outside 0..9"):
        checked(tmp_path, monkeypatch, tiny_files(labels_train=[0, 1, 2, 10, 4, 5]))


# --- an explicit data_dir is used or refused -----------------------------------------------

def test_explicit_data_dir_missing_a_file_is_refused_not_replaced(tmp_path, known, monkeypatch):
    system = write(tmp_path / "system", known)  # a complete, valid copy elsewhere
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist",
                        sources.IDX_SOURCES["fashion-mnist"]._replace(system_dirs=(str(system),)))
    assert data.load("fashion-mnist", download=False).source == str(system)
    partial = write(tmp_path / "partial", known)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"partial: data_dir lacks 1 of the 4 fashion-mnist IDX "
                                        r"files: t10k-labels-idx1-ubyte\[\.gz\]"):
        load(partial)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: data_dir lacks 4 of the 4"):
        load(empty)
    with pytest.raises(DataError, match="data_dir lacks 4 of the 4"):  # no download either
        data.load("fashion-mnist", data_dir=empty, download=True)
    assert sources.search_dirs("fashion-mnist", partial) == [partial]


def test_explicit_data_dir_with_a_corrupt_file_is_refused_not_replaced(tmp_path, known,
                                                                       monkeypatch):
    system = write(tmp_path / "system", known)
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist",
                        sources.IDX_SOURCES["fashion-mnist"]._replace(system_dirs=(str(system),)))
    corrupt = write(tmp_path / "corrupt", known)
    (corrupt / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="corrupt/train-labels-idx1-ubyte.gz: cannot read"):
        load(corrupt)


def test_a_corrupt_first_copy_is_an_error_not_a_reason_to_use_the_next(tmp_path, known,
                                                                      monkeypatch):
    env = write(tmp_path / "env" / "fashion-mnist", tiny_files(marker=9))
    system = write(tmp_path / "system", known)
    monkeypatch.setenv("JAXREG_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist",
                        sources.IDX_SOURCES["fashion-mnist"]._replace(system_dirs=(str(system),)))
    with pytest.raises(DataError, match=f"{env}/train-images-idx3-ubyte.gz: not fashion-mnist's"):
        data.load("fashion-mnist", download=False)


# --- fingerprints of the other datasets ----------------------------------------------------

def test_array_fingerprint_identifies_the_arrays():
    ridge = data.load("synthetic-ridge", seed=0)
    assert ridge.fingerprint == data.load("synthetic-ridge", seed=0).fingerprint
    assert ridge.fingerprint != data.load("synthetic-ridge", seed=1).fingerprint
    digest = hashlib.sha256()
    for a in (ridge.x_train, ridge.y_train, ridge.x_test, ridge.y_test):
        digest.update(f"{a.dtype.str} {a.shape}\n".encode() + a.tobytes())
    assert ridge.fingerprint == digest.hexdigest()
    same_bytes_other_shape = data.Dataset("r", ridge.x_train.reshape(-1, 10, 5), ridge.y_train,
                                          ridge.x_test, ridge.y_test, None, "test", "regression")
    assert same_bytes_other_shape.fingerprint != ridge.fingerprint
