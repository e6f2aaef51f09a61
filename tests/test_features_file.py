"""vssflow.data.features_file: the .npz / one-row Parquet body of ``POST /v1/generate/features``, read back exactly,
and every malformed file refused in one line that names the upload."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest_data import random_features

from vssflow.data.features_file import FeaturesFileError, features_to_npz, read_features_file
from vssflow.data.schema import build_schema, features_to_row, rows_to_table


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _parquet(rows: list[dict], sem_dim: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows, build_schema(sem_dim=sem_dim)), buf)
    return buf.getvalue()


def test_npz_round_trip_keeps_every_array():
    f = random_features(32, 1.6, "tts", seed=3)
    f.speech_span = (0.2, 1.0)
    f.phoneme_durations = np.linspace(1, 2, len(f.phonemes)).astype(np.float32)
    f.sync = np.arange(40 * 32 * 32, dtype=np.uint8).reshape(40, 32, 32)
    g = read_features_file(features_to_npz(f))
    assert (g.task, g.duration_s, g.speech_span) == ("tts", pytest.approx(1.6), pytest.approx((0.2, 1.0)))
    for k in ("sem", "lip", "sync", "phonemes", "speaker", "phoneme_durations"):
        np.testing.assert_array_equal(getattr(g, k), getattr(f, k), err_msg=k)
    v2s = read_features_file(features_to_npz(random_features(32, 2.0, "v2s")))
    assert v2s.lip is None and v2s.phonemes is None and v2s.speech_span is None


def test_one_row_parquet_is_read_without_its_target_mel():
    f = random_features(32, 2.0, "tts", seed=1)
    f.mel = np.zeros((200, 64), np.float32)
    f.meta = {"clip_id": "c0"}
    g = read_features_file(_parquet([features_to_row(f)], 32))
    assert g.task == "tts" and g.mel is None
    np.testing.assert_allclose(g.sem, f.sem.astype(np.float16))
    two = _parquet([features_to_row(f), features_to_row(f)], 32)
    with pytest.raises(FeaturesFileError, match=r"^features: the Parquet file has 2 rows; send exactly one$"):
        read_features_file(two)
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": [1]}), buf)
    with pytest.raises(FeaturesFileError, match=r"^features: not a vssflow shard row"):
        read_features_file(buf.getvalue())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not a zip", r"not a readable \.npz file"),
        (_npz(task=np.str_("v2s"), sem=np.zeros((20, 8))), r"\.npz lacks \['duration_s'\]"),
        (_npz(duration_s=2.0, task=np.str_("v2s"), sem=np.zeros((20, 8)), mel=np.ones(3)), r"unknown arrays \['mel'\]"),
        (_npz(duration_s=2.0, task=np.str_("song"), sem=np.zeros((20, 8))), r"task must be one of"),
        (_npz(duration_s=np.str_("two"), task=np.str_("v2s"), sem=np.zeros((20, 8))), r"duration_s must be a number"),
        (
            _npz(duration_s=2.0, task=np.str_("tts"), sem=np.zeros((20, 8)), speech_span=np.array([1.5, 0.5])),
            r"speech_span must be \(2,\) seconds",
        ),
    ],  # fmt: skip
)
def test_a_malformed_npz_is_one_line_naming_the_upload(body, message):
    with pytest.raises(FeaturesFileError, match=message) as e:
        read_features_file(body, source="upload.npz")
    assert str(e.value).startswith("upload.npz: ") and "\n" not in str(e.value)
    assert e.value.reason == "bad_features"


# ---- decompression bombs: declared sizes are checked before anything is unpacked ---------------------------------
def _npz_bomb(shape: tuple[int, ...], *, header_shape: tuple[int, ...] | None = None) -> bytes:
    """A deflated .npz whose ``sem`` is ``shape`` float32 zeros, streamed (never held whole here); ``header_shape``
    makes the .npy header declare another shape than the bytes that follow."""
    import zipfile

    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": header_shape or shape}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("duration_s.npy", _npy(np.float32(2.0)))
        zf.writestr("task.npy", _npy(np.str_("v2s")))
        with zf.open("sem.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            left, chunk = int(np.prod(shape)) * 4, b"\0" * (1 << 22)
            while left > 0:
                f.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_an_npz_bomb_is_refused_from_its_declared_sizes_before_unpacking():
    from vssflow.data.features_file import FeaturesTooLargeError

    bomb = _npz_bomb((100_000, 1000))  # 400 MB of zeros
    assert len(bomb) < 1_000_000  # what the client sends
    before = _peak_rss()
    with pytest.raises(FeaturesTooLargeError, match=r"^upload: unpacks to 400.0 MB; at most 16 MB"):
        read_features_file(bomb, source="upload", max_bytes=16_000_000)
    assert _peak_rss() - before < 50_000_000  # nothing was unpacked
    # a header that declares a huge shape over a few bytes (np.load allocates the declared shape first)
    liar = _npz_bomb((4,), header_shape=(10**9, 1000))
    with pytest.raises(FeaturesTooLargeError, match="unpacks to 4000000.0 MB"):
        read_features_file(liar, source="upload", max_bytes=16_000_000)
    # the same file is read as before under a limit it fits
    small = features_to_npz(random_features(32, 1.6, "v2s"))
    assert read_features_file(small, max_bytes=16_000_000).sem.shape[1] == 32


def test_a_parquet_bomb_is_refused_from_its_footer_before_decompressing():
    from vssflow.data.features_file import FeaturesTooLargeError

    f = random_features(32, 1.6, "v2s")
    f.mel = np.zeros((200, 64), np.float32)
    f.meta = {"clip_id": "c0"}
    row = features_to_row(f)
    row["sem"] = np.zeros((400_000, 32), np.float16)  # 25.6 MB of zeros
    buf = io.BytesIO()
    pq.write_table(rows_to_table([row], build_schema(sem_dim=32)), buf, compression="zstd")
    assert buf.tell() < 2_000_000
    with pytest.raises(FeaturesTooLargeError, match=r"^upload: unpacks to 2\d.\d MB; at most 4 MB"):
        read_features_file(buf.getvalue(), source="upload", max_bytes=4_000_000)
    two = _parquet([features_to_row(f), features_to_row(f)], 32)
    with pytest.raises(FeaturesFileError, match="has 2 rows; send exactly one"):  # refused from the footer too
        read_features_file(two, source="upload", max_bytes=4_000_000)
    assert read_features_file(_parquet([features_to_row(f)], 32), max_bytes=4_000_000).task == "v2s"


def test_non_finite_features_are_refused_in_one_line():
    f = random_features(32, 1.6, "tts", seed=3)
    f.sem[3, 4] = np.nan
    with pytest.raises(FeaturesFileError, match=r"^upload: sem has NaN or infinite values; send finite features$"):
        read_features_file(features_to_npz(f), source="upload")
    f = random_features(32, 2.0, "tts", seed=1)
    f.speaker[0] = np.inf
    f.mel = np.zeros((200, 64), np.float32)
    f.meta = {"clip_id": "c0"}
    with pytest.raises(FeaturesFileError, match=r"speaker has NaN or infinite values"):
        read_features_file(_parquet([features_to_row(f)], 32), source="upload")
