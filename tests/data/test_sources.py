"""Tests for jaxreg.data: IDX parsing, the search order, checksummed downloads, the datasets.

No network: downloads are served from a local directory through ``file://`` URLs. Small IDX
files are written by tests/helpers.py's own encoder (``write_idx``), independent of the parser.
"""

import gzip
import hashlib
import re
import struct
import urllib.request

import numpy as np
import pytest

import jaxreg.data as data
from jaxreg.data import DataError, sources
from tests.helpers import write_dataset, write_idx


def isolate(monkeypatch, cache_root):
    """No JAXREG_DATA_DIR and a cache under ``cache_root``: tests never see the user's files."""
    monkeypatch.delenv("JAXREG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path / "xdg-cache")


@pytest.fixture
def unverified(monkeypatch):
    """Files accepted whatever their sha256: for the tests of parsing and of the search order
    on tiny files that no known sum matches (tests/data/test_checks.py tests the sums)."""
    monkeypatch.setattr(sources, "verify", lambda name, stem, path, raw, content:
                        hashlib.sha256(content).hexdigest())


@pytest.fixture
def system_dir(tmp_path, monkeypatch, unverified):
    """Fashion-MNIST's system directory (Debian's ``/usr/share/datasets/fashion-mnist``) replaced
    by tiny files of the real format in ``tmp_path``: the suite never reads the real package,
    which ``.ci/check_debian_data.py`` checks instead."""
    system = write_dataset(tmp_path / "system", marker=4)
    fake = sources.IDX_SOURCES["fashion-mnist"]._replace(system_dirs=(str(system),))
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist", fake)
    return system


def test_fashion_mnist_system_directory_is_searched(system_dir):
    ds = data.load("fashion-mnist", download=False)
    assert ds.source == str(system_dir)
    assert (ds.name, ds.task, ds.num_classes) == ("fashion-mnist", "classification", 10)
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.x_train[0, 0, 0, 0] == np.float32(4 / 255) and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3, 4, 5])


def test_default_system_directory_is_debians():
    debian = "/usr/share/datasets/fashion-mnist"
    assert sources.IDX_SOURCES["fashion-mnist"].system_dirs == (debian,)


def test_search_order_data_dir_then_env_then_cache_then_system(tmp_path, monkeypatch,
                                                              system_dir):
    given = write_dataset(tmp_path / "given", marker=1)
    write_dataset(tmp_path / "env-root" / "fashion-mnist", marker=2)
    cache = write_dataset(tmp_path / "xdg-cache" / "jaxreg" / "fashion-mnist", marker=3)
    monkeypatch.setenv("JAXREG_DATA_DIR", str(tmp_path / "env-root"))

    def first_pixel(**kwargs):
        ds = data.load("fashion-mnist", download=False, **kwargs)
        assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
        return round(float(ds.x_train[0, 0, 0, 0]) * 255), ds.source

    assert first_pixel(data_dir=given) == (1, str(given))
    assert first_pixel() == (2, str(tmp_path / "env-root" / "fashion-mnist"))
    monkeypatch.delenv("JAXREG_DATA_DIR")
    assert first_pixel() == (3, str(cache))
    for f in cache.iterdir():
        f.unlink()
    assert sources.locate("fashion-mnist", download=False) == (system_dir, str(system_dir))


def test_incomplete_searched_directory_is_skipped(tmp_path, monkeypatch, system_dir):
    partial = write_dataset(tmp_path / "root" / "fashion-mnist", marker=7)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("JAXREG_DATA_DIR", str(tmp_path / "root"))
    assert sources.locate("fashion-mnist", download=False)[0] == system_dir


def test_uncompressed_idx_files_are_accepted(tmp_path, unverified):
    plain = write_dataset(tmp_path / "plain", marker=9, suffix="")
    ds = data.load("mnist", data_dir=plain, download=False)
    assert ds.x_train[0, 0, 0, 0] == np.float32(9 / 255)
    assert ds.x_train[-1, -1, -1, 0] == 1.0
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2, 3])


def test_digits_split_is_stratified_and_deterministic():
    ds = data.load("digits")
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert (ds.num_classes, ds.task) == (10, "classification")
    overall = np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    assert np.all(np.abs(np.bincount(ds.y_test) - overall * 360 / 1797) <= 1)
    again = data.load("digits")
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    np.testing.assert_array_equal(ds.y_train, again.y_train)


def test_synthetic_ridge_is_deterministic_and_linear():
    ds = data.load("synthetic-ridge", seed=3)
    assert (ds.task, ds.num_classes) == ("regression", None)
    assert ds.x_train.shape == (200, 50) and ds.y_train.shape == (200,)
    assert ds.x_test.shape == (1000, 50) and ds.y_test.dtype == np.float32
    again = data.load("synthetic-ridge", seed=3)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    assert not np.array_equal(ds.y_train, data.load("synthetic-ridge", seed=4).y_train)
    *_, w_true = data.make_ridge(seed=3)
    residual = ds.y_test - ds.x_test @ w_true
    assert 0.9 < residual.std() < 1.1  # the noise, std 1


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match=r"name='cifar'.*fashion-mnist, mnist, digits") as e:
        data.load("cifar")
    assert not isinstance(e.value, DataError)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t.gz"
    name = re.escape(str(path))
    blob = write_idx(path, np.zeros((5, 28, 28)))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=rf"{name}.*EOFError"):
        data.read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"{name}.*BadGzipFile"):
        data.read_idx(path)


def test_wrong_magic_and_dtype_name_the_file(tmp_path):
    path = tmp_path / "m"
    name = re.escape(str(path))
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=rf"{name}: not an IDX file: magic number 0x12340801"):
        data.read_idx(path)
    write_idx(path, np.zeros(3), dtype_code=0x07)
    with pytest.raises(DataError, match=rf"{name}: unknown IDX dtype code 0x07"):
        data.read_idx(path)


def test_payload_size_mismatch_names_the_file(tmp_path):
    path = tmp_path / "s.gz"
    name = re.escape(str(path))
    raw = struct.pack(">BBBBIII", 0, 0, 8, 3, 2, 28, 28) + bytes(784)  # claims 2 images, has 1
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=rf"{name}: IDX payload is 784 bytes .* need 1568"):
        data.read_idx(path)
    path.write_bytes(gzip.compress(raw[:10]))
    with pytest.raises(DataError, match=rf"{name}: truncated IDX header"):
        data.read_idx(path)


def test_parse_idx_reads_big_endian_types():
    raw = struct.pack(">BBBBII", 0, 0, 0x0B, 2, 2, 2) + struct.pack(">4h", 1, -2, 300, 4)
    parsed = data.idx.parse_idx(raw)
    np.testing.assert_array_equal(parsed, [[1, -2], [300, 4]])
    assert parsed.dtype == np.int16 and parsed.dtype.isnative


def test_label_count_mismatch_names_the_labels_file(tmp_path, unverified):
    d = write_dataset(tmp_path / "d", marker=1)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(3))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: 3 labels for the 4 images"):
        data.load("fashion-mnist", data_dir=d)


def test_images_file_with_labels_layout_names_the_file(tmp_path, unverified):
    d = write_dataset(tmp_path / "d", marker=1)
    write_idx(d / "train-images-idx3-ubyte.gz", np.arange(6))  # magic 0x00000801
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: expected 3-d"):
        data.load("fashion-mnist", data_dir=d)


def serve_mnist(tmp_path, monkeypatch, corrupt=None):
    """Fake MNIST mirror: tiny files under a file:// URL, with their true sha256 registered."""
    mirror = write_dataset(tmp_path / "mirror", marker=5)
    sums = {s: hashlib.sha256((mirror / f"{s}.gz").read_bytes()).hexdigest()
            for s in sources.IDX_FILES}
    if corrupt:
        sums[corrupt] = "0" * 64
    fake = sources.IdxSource(base_url=mirror.as_uri() + "/", sha256=sums)
    monkeypatch.setitem(sources.IDX_SOURCES, "mnist", fake)
    return mirror


def test_download_populates_cache_and_is_reused(tmp_path, monkeypatch):
    mirror = serve_mnist(tmp_path, monkeypatch)
    ds = data.load("mnist")
    cache = tmp_path / "xdg-cache" / "jaxreg" / "mnist"
    assert ds.source == f"{cache} (downloaded from {mirror.as_uri()}/)"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in sources.IDX_FILES)
    for s in sources.IDX_FILES:
        assert (cache / f"{s}.gz").read_bytes() == (mirror / f"{s}.gz").read_bytes()
    assert ds.x_train[0, 0, 0, 0] == np.float32(5 / 255)
    for f in mirror.iterdir():  # the mirror goes away: the cache alone must serve
        f.unlink()
    assert data.load("mnist").source == str(cache)


def test_checksum_mismatch_leaves_nothing_in_cache(tmp_path, monkeypatch):
    serve_mnist(tmp_path, monkeypatch, corrupt="train-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"searched .*sha256 mismatch.*JAXREG_DATA_DIR"):
        data.load("mnist")
    cache = tmp_path / "xdg-cache" / "jaxreg" / "mnist"
    assert list(cache.iterdir()) == []


def test_interrupted_download_leaves_nothing_in_cache(tmp_path, monkeypatch):
    serve_mnist(tmp_path, monkeypatch)
    real_urlopen = urllib.request.urlopen

    def dropping_urlopen(url, timeout):
        response = real_urlopen(url, timeout=timeout)
        response.read = lambda n: (_ for _ in ()).throw(ConnectionResetError("peer reset"))
        return response

    monkeypatch.setattr(urllib.request, "urlopen", dropping_urlopen)
    with pytest.raises(DataError, match="ConnectionResetError: peer reset"):
        data.load("mnist")
    assert list((tmp_path / "xdg-cache" / "jaxreg" / "mnist").iterdir()) == []


def test_nothing_found_lists_places_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREG_DATA_DIR", str(tmp_path / "root"))
    with pytest.raises(DataError) as e:
        data.load("mnist", download=False)
    message = str(e.value)
    searched = f"{tmp_path / 'root' / 'mnist'}, {tmp_path / 'xdg-cache' / 'jaxreg' / 'mnist'}."
    assert f"; searched {searched} Downloading is disabled (download=False). " in message
    assert "data_dir=" in message and "JAXREG_DATA_DIR" in message and "\n" not in message
    monkeypatch.setitem(sources.IDX_SOURCES, "mnist", sources.IdxSource(
        (tmp_path / "no-mirror").as_uri() + "/", sources.IDX_SOURCES["mnist"].sha256))
    with pytest.raises(DataError) as e:  # issue 25 item 21: one line, no "searched:;"
        data.load("mnist")
    message = str(e.value)
    assert "\n" not in message and f"; searched {searched} Downloading file://" in message
    assert re.search(r"failed \(URLError: .*\)\. Supply the files: ", message), message


@pytest.mark.parametrize("shape", [(7, 3, 5, 1), (1, 28, 28, 1), (0, 4), (2048,)])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_scaled_float32_equals_numpy_division_and_is_aligned(shape, threads):
    values = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    out = data._scale_to_float32(values, 255, threads=threads)
    reference = values.astype(np.float32)
    reference /= np.float32(255)  # what the loader computed before: float32 division
    assert out.dtype == np.float32 and out.shape == values.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference)
    assert out.size == 0 or out.ctypes.data % data._ALIGNMENT == 0


def test_loaded_images_are_aligned_float32_in_unit_interval(tmp_path, unverified):
    write_dataset(tmp_path, marker=51)
    ds = data.load("fashion-mnist", data_dir=tmp_path)
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.float32 and x.ctypes.data % data._ALIGNMENT == 0
        assert x.min() == 0.0 and x.max() == 1.0
    assert ds.x_train[0, 0, 0, 0] == np.float32(51) / np.float32(255)
