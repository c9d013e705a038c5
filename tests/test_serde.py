"""Marshalling: values round-trip, big buffers go out of band, and failures leave nothing behind."""

import pickle

import numpy as np
import pandas as pd
import pytest

from kfmagic import serde


def roundtrip(value, tmp_path):
    path = tmp_path / "value.pkl"
    size = serde.dump(value, path)
    assert size == path.stat().st_size
    return serde.load(path), path


def test_arrays_travel_out_of_band_and_come_back_writable(tmp_path):
    array = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    loaded, path = roundtrip({"a": array, "t": array.T, "label": "x"}, tmp_path)
    assert np.array_equal(loaded["a"], array) and np.array_equal(loaded["t"], array.T)
    assert path.read_bytes().endswith(b"KFMOOB01")  # the buffer was written after the stream
    loaded["a"][0, 0] = -1  # a private, writable copy-on-write mapping
    assert serde.load(path)["a"][0, 0] == 0


def test_dataframes_and_plain_objects(tmp_path):
    frame = pd.DataFrame({"x": np.arange(10_000), "y": np.linspace(0, 1, 10_000), "s": ["a", "b"] * 5_000})
    loaded, _ = roundtrip(frame, tmp_path)
    pd.testing.assert_frame_equal(loaded, frame)
    loaded, path = roundtrip({"k": [1, 2.5, "three", None]}, tmp_path)
    assert loaded == {"k": [1, 2.5, "three", None]}
    assert pickle.loads(path.read_bytes()) == loaded  # no buffers: a plain pickle file


def test_what_cloudpickle_cannot_dill_can(tmp_path):
    import threading

    import cloudpickle

    lock = threading.Lock()
    with pytest.raises(TypeError):
        cloudpickle.dumps(lock)
    loaded, _ = roundtrip({"lock": lock}, tmp_path)
    assert loaded["lock"].acquire(blocking=False)


def test_unpicklable_value_raises_and_leaves_no_file(tmp_path):
    path = tmp_path / "gen.pkl"
    with pytest.raises(serde.SerializationError, match="cloudpickle: TypeError: cannot pickle 'generator' object"):
        serde.dump((n for n in range(3)), path)
    assert not path.exists()


def test_rewriting_a_file_keeps_what_a_reader_mapped(tmp_path):
    path = tmp_path / "a.pkl"
    serde.dump(np.full(100_000, 7.0), path)
    first = serde.load(path)
    serde.dump(np.full(100_000, 9.0), path)
    assert first.sum() == 700_000.0 and serde.load(path)[0] == 9.0
    assert not (tmp_path / "a.pkl.partial").exists()
