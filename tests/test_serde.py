"""Marshalling: values round-trip, big buffers go out of band, and failures leave nothing behind."""

import gc
import hashlib
import mmap
import pickle

import numpy as np
import pandas as pd
import psutil
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


def memory_owner(array):
    """The object that holds an array's memory: follow .base, and a memoryview's .obj."""
    owner = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    while isinstance(owner, memoryview):
        owner = owner.obj
    return owner


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_loaded_array_is_a_private_mapping_of_its_file(tmp_path):
    size = 64 * 2**20
    path = tmp_path / "big.pkl"
    serde.dump(np.arange(size // 8, dtype=np.float64), path)
    written = digest(path)
    gc.collect()
    process = psutil.Process()
    resident = process.memory_info().rss
    loaded = serde.load(path)
    assert process.memory_info().rss - resident < size // 8  # mapped, not read: a copy would add 64 MiB
    assert not loaded.flags.owndata and isinstance(memory_owner(loaded), mmap.mmap)
    assert loaded.flags.writeable
    loaded[:1000] = -1.0  # copy-on-write: the change stays in this process
    assert loaded[999] == -1.0 and loaded[1000] == 1000.0
    del loaded
    assert digest(path) == written and serde.load(path)[0] == 0.0


def test_a_loaded_dataframes_numeric_columns_are_mapped_from_its_file(tmp_path):
    frame = pd.DataFrame({"x": np.arange(200_000), "y": np.linspace(0, 1, 200_000), "s": ["a", "b"] * 100_000})
    path = tmp_path / "frame.pkl"
    serde.dump(frame, path)
    loaded = serde.load(path)
    assert isinstance(memory_owner(loaded["x"].to_numpy()), mmap.mmap)
    assert isinstance(memory_owner(loaded["y"].to_numpy()), mmap.mmap)
    written = digest(path)
    loaded.loc[0, "x"] = -5
    assert loaded.loc[0, "x"] == -5 and digest(path) == written and serde.load(path).loc[0, "x"] == 0


def test_dataframes_and_plain_objects(tmp_path):
    frame = pd.DataFrame({"x": np.arange(10_000), "y": np.linspace(0, 1, 10_000), "s": ["a", "b"] * 5_000})
    loaded, _ = roundtrip(frame, tmp_path)
    pd.testing.assert_frame_equal(loaded, frame)
    loaded, path = roundtrip({"k": [1, 2.5, "three", None]}, tmp_path)
    assert loaded == {"k": [1, 2.5, "three", None]}
    assert pickle.loads(path.read_bytes()) == loaded  # no buffers: a plain pickle file


def test_what_cloudpickle_cannot_dill_can(tmp_path):
    import weakref

    import cloudpickle

    class Node:
        pass

    node = Node()
    value = {"node": node, "ref": weakref.ref(node)}
    with pytest.raises(TypeError):
        cloudpickle.dumps(value)
    loaded, _ = roundtrip(value, tmp_path)
    assert loaded["ref"]() is loaded["node"]


def test_an_xgboost_dmatrix_is_rebuilt_with_its_data_and_info(tmp_path):
    xgb = pytest.importorskip("xgboost", reason="xgboost is not installed (the test extra has xgboost-cpu)")
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[x > 1.2] = np.nan  # missing values stay missing, zeros stay zeros
    x[0, 0] = 0.0
    matrix = xgb.DMatrix(x, label=np.arange(40) % 2, weight=np.linspace(1, 2, 40), feature_names=["a", "b", "c"])
    loaded, path = roundtrip({"train": matrix}, tmp_path)
    copy = loaded["train"]
    assert (copy.num_row(), copy.num_col(), copy.feature_names) == (40, 3, ["a", "b", "c"])
    assert np.array_equal(copy.get_label(), matrix.get_label()) and np.array_equal(copy.get_weight(), matrix.get_weight())
    booster = xgb.train({"max_depth": 2}, matrix, 5)
    assert np.array_equal(xgb.train({"max_depth": 2}, copy, 5).predict(matrix), booster.predict(matrix))
    assert b"kfmagic" not in path.read_bytes()  # built by xgboost's own constructor: loads without kfmagic


class Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle 'Unpicklable' object")


def test_unpicklable_value_raises_and_leaves_no_file(tmp_path):
    path = tmp_path / "gen.pkl"
    with pytest.raises(serde.SerializationError, match="cloudpickle: TypeError: cannot pickle 'Unpicklable' object"):
        serde.dump(Unpicklable(), path)
    assert not path.exists()


def test_rewriting_a_file_keeps_what_a_reader_mapped(tmp_path):
    path = tmp_path / "a.pkl"
    serde.dump(np.full(100_000, 7.0), path)
    first = serde.load(path)
    serde.dump(np.full(100_000, 9.0), path)
    assert first.sum() == 700_000.0 and serde.load(path)[0] == 9.0
    assert not (tmp_path / "a.pkl.partial").exists()


@pytest.mark.parametrize("make, kind", [
    (lambda tmp: open(tmp / "data.txt", "a"), "an open file"),
    (lambda tmp: open(tmp / "data.txt", "rb"), "an open file"),
    (lambda tmp: __import__("socket").socket(), "a network socket"),
    (lambda tmp: __import__("threading").Lock(), "a lock"),
    (lambda tmp: __import__("threading").RLock(), "a lock"),
    (lambda tmp: __import__("threading").Thread(target=print), "a thread"),
    (lambda tmp: (n for n in range(3)), "a generator"),
    (lambda tmp: __import__("sqlite3").connect(":memory:"), "a database connection"),
    (lambda tmp: {"deep": [1, {"inside": __import__("threading").Event()}]}, "a lock"),
])
def test_live_resources_are_refused_by_every_pickler_and_nothing_is_touched(tmp_path, make, kind):
    (tmp_path / "data.txt").write_text("precious")
    value = make(tmp_path)
    with pytest.raises(serde.LiveResource, match=kind):
        serde.dump(value, tmp_path / "value.pkl")
    with pytest.raises(serde.LiveResource, match=kind):  # dill, tried directly, refuses it too
        serde._dump_with_dill(value, tmp_path / "dill.pkl", [])
    assert (tmp_path / "data.txt").read_text() == "precious" and not (tmp_path / "value.pkl").exists()


def test_in_memory_files_and_the_standard_streams_are_values(tmp_path, capsys):
    import io
    import sys

    with capsys.disabled():  # the process's own stdout, as in a step
        loaded, _ = roundtrip({"buffer": io.BytesIO(b"abc"), "text": io.StringIO("t"), "out": sys.stdout}, tmp_path)
        assert loaded["out"] is sys.stdout
    assert loaded["buffer"].read() == b"abc" and loaded["text"].read() == "t"


def test_value_files_are_private(tmp_path):
    serde.dump(np.arange(10), tmp_path / "a.pkl")
    serde.dump({"k": 1}, tmp_path / "b.pkl")
    assert {oct((tmp_path / name).stat().st_mode & 0o777) for name in ("a.pkl", "b.pkl")} == {"0o600"}


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(bytes(range(256)) * 4)
    elif how == "table":  # keep the marker, break the table of buffers
        path.write_bytes(data[:-40] + b"[[999999999, 5]]" + data[-24:])
    elif how == "missing":
        path.unlink()


_DAMAGES = ["truncated", "empty", "random", "missing"]


@pytest.mark.parametrize("value, how", [
    *(({"plain": [1, 2, 3]}, how) for how in _DAMAGES),  # a plain pickle file has no table of buffers
    *((np.arange(100_000), how) for how in [*_DAMAGES, "table"]),
])
def test_a_damaged_file_is_one_error_that_says_how(tmp_path, value, how):
    path = tmp_path / "value.pkl"
    serde.dump(value, path)
    _damage(path, how)
    with pytest.raises(serde.DamagedValue) as caught:
        serde.load(path)
    expected = {"truncated": "truncated", "empty": "empty", "random": "does not start as a pickle",
                "table": "table of buffers", "missing": "missing"}[how]
    assert expected in str(caught.value)


def test_a_missing_library_is_not_called_damage(tmp_path):
    path = tmp_path / "value.pkl"
    path.write_bytes(pickle.dumps(np.arange(3)).replace(b"numpy", b"nompy"))
    with pytest.raises(ImportError):
        serde.load(path)


def test_functions_and_classes_of_the_notebook_bind_to_the_namespace_they_load_into(tmp_path):
    """A function defined in __main__ reads its globals where it runs; a class is found there by name."""
    import subprocess
    import sys

    maker = (
        "import sys; from kfmagic import serde\n"
        "x = 5\n"
        "def show():\n    return x\n"
        "class Foo:\n    def get(self):\n        return x\n"
        "serde.dump({'show': show, 'obj': Foo(), 'fn': lambda: x}, sys.argv[1])\n"
    )
    path = tmp_path / "value.pkl"
    subprocess.run([sys.executable, "-c", maker, str(path)], check=True)
    namespace = {"__name__": "__main__", "x": 6}
    value = serde.load(path, namespace)
    assert (value["show"](), value["obj"].get(), value["fn"]()) == (6, 6, 6)
    assert namespace["Foo"] is type(value["obj"])
    del namespace["x"]
    assert serde.load(path, {"__name__": "__main__"})["show"]() == 5  # what it was pickled with fills the gap
    assert serde.load(path)["show"]() == 5  # no namespace: as pickled


class _NativeMatrix:
    """Stands for xgboost's DMatrix (native memory, no pickle support): what serde asks of one."""

    feature_names = ["a", "b"]

    def __init__(self, types=("q", "c"), group_bounds=(0, 1, 3)):
        self.feature_types, self.group_bounds = list(types) if types else None, group_bounds

    def get_float_info(self, name):
        return {"label": np.array([1.0, 0.0, 1.0]), "weight": np.array([2.0, 1.0, 1.0])}.get(name, np.array([]))

    def get_uint_info(self, name):
        assert name == "group_ptr"
        return np.array(self.group_bounds, dtype=np.uint32)

    def get_data(self):
        return "the matrix's data"


def test_a_dmatrix_is_reduced_to_its_own_constructor_with_its_data_and_the_info_it_holds():
    dmatrix = type("DMatrix", (_NativeMatrix,), {"__module__": "xgboost.core"})  # as xgboost names it
    build, args = serde._reduce_native(dmatrix())
    assert build.func is dmatrix and args == ("the matrix's data",)
    given = {name: value.tolist() if hasattr(value, "tolist") else value for name, value in build.keywords.items()}
    assert given == {"feature_names": ["a", "b"], "feature_types": ["q", "c"], "enable_categorical": True,
                     "label": [1.0, 0.0, 1.0], "weight": [2.0, 1.0, 1.0], "group": [1, 2]}
    plain, _ = serde._reduce_native(dmatrix(types=None, group_bounds=(0,)))
    assert plain.keywords["enable_categorical"] is False and "group" not in plain.keywords
    assert serde._reduce_native(_NativeMatrix()) is NotImplemented  # any other class: pickled as it is
