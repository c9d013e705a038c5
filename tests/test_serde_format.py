"""The value file as kfmagic.serde writes and reads it: a pickle stream (protocol 2 to 5 read), then
each out-of-band buffer on a 64-byte boundary, then the table of buffers and the trailer; what loading
leaves as it was (the collector's state) and does not do (read the buffers into memory); each kind of
damage named in full; and which objects are live resources rather than values."""

import enum
import gc
import io
import json
import pickle
import struct
import threading

import numpy as np
import pytest
from conftest import traced_peak

from kfmagic import serde

TRAILER = struct.Struct("<Q8s")


def layout(path):
    """(end of the pickle stream's region, [(offset, size)] of the buffers) read from the file's trailer."""
    data = path.read_bytes()
    length, marker = TRAILER.unpack(data[-TRAILER.size:])
    assert marker == b"KFMOOB01"
    table_at = len(data) - TRAILER.size - length
    return table_at, [tuple(entry) for entry in json.loads(data[table_at:table_at + length])]


def with_table(path, table):
    """`path` with its table of buffers replaced by `table` (the stream and buffers kept)."""
    data = path.read_bytes()
    table_at, _ = layout(path)
    encoded = json.dumps(table).encode()
    path.write_bytes(data[:table_at] + encoded + TRAILER.pack(len(encoded), b"KFMOOB01"))


def damage_of(path):
    with pytest.raises(serde.DamagedValue) as caught:
        serde.load(path)
    return str(caught.value)


def test_buffers_start_on_64_byte_boundaries_after_zero_padding_and_load_aligned(tmp_path):
    path = tmp_path / "v.pkl"
    value = {"a": np.arange(1001, dtype=np.int8), "b": np.arange(333, dtype=np.float64)}
    serde.dump(value, path)
    table_at, table = layout(path)
    assert [size for _, size in table] == [1001, 333 * 8] and all(offset % 64 == 0 for offset, _ in table)
    data = path.read_bytes()
    assert data[table[0][0] + 1001:table[1][0]] == bytes(table[1][0] - table[0][0] - 1001)  # zeros between
    assert table[1][0] + 333 * 8 == table_at  # the table follows the last buffer
    loaded = serde.load(path)
    assert loaded["b"].ctypes.data % 64 == 0 and loaded["b"].flags.aligned
    assert np.array_equal(loaded["a"], value["a"]) and np.array_equal(loaded["b"], value["b"])


def test_an_empty_array_is_a_buffer_of_no_bytes_and_round_trips(tmp_path):
    path = tmp_path / "v.pkl"
    serde.dump({"empty": np.empty(0), "one": np.ones(3)}, path)
    assert [size for _, size in layout(path)[1]] == [0, 24]
    loaded = serde.load(path)
    assert loaded["empty"].shape == (0,) and list(loaded["one"]) == [1.0, 1.0, 1.0]


def test_loading_maps_the_buffers_instead_of_reading_the_file_into_memory(tmp_path):
    path = tmp_path / "big.pkl"
    serde.dump(np.zeros(4 * 2**20 // 8), path)  # 4 MiB of buffer
    loaded, peak = traced_peak(lambda: serde.load(path))
    assert loaded.nbytes == 4 * 2**20 and peak < 2**20


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_plain_pickle_stream_of_any_protocol_from_2_is_a_value_file(tmp_path, protocol):
    path = tmp_path / "v.pkl"
    path.write_bytes(pickle.dumps({"k": [1, 2.5]}, protocol=protocol))
    assert serde.load(path) == {"k": [1, 2.5]}


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_leaves_the_collector_as_it_found_it(tmp_path, enabled):
    path = tmp_path / "v.pkl"
    serde.dump([1, 2], path)
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        serde.load(path)
        assert gc.isenabled() is enabled
        with pytest.raises(serde.DamagedValue):
            serde.load(tmp_path / "missing.pkl")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("content, said", [
    (None, "the file is missing"),
    (b"", "the file is empty"),
    (b"\x80", "it does not start as a pickle does"),
    (b"\x80\x09" + pickle.dumps(1)[2:], "it does not start as a pickle does"),  # no such protocol
    (b"\x80\x01" + pickle.dumps(1)[2:], "it does not start as a pickle does"),
    (b"]q\x00.", "it does not start as a pickle does"),  # protocol 1 has no header
    (b"\x81\x05" + pickle.dumps(1)[2:], "it does not start as a pickle does"),
])
def test_a_file_that_is_not_a_value_file_is_named_as_such(tmp_path, content, said):
    path = tmp_path / "v.pkl"
    if content is not None:
        path.write_bytes(content)
    assert damage_of(path) == said


@pytest.fixture
def two_buffers(tmp_path):
    path = tmp_path / "v.pkl"
    serde.dump([np.arange(100), np.arange(200)], path)
    return path


def test_a_table_past_the_start_of_the_file_is_broken(two_buffers):
    data = two_buffers.read_bytes()
    too_long = len(data) - TRAILER.size + 1
    two_buffers.write_bytes(data[:-TRAILER.size] + TRAILER.pack(too_long, b"KFMOOB01"))
    assert damage_of(two_buffers) == "its table of buffers is broken (longer than the file)"


@pytest.mark.parametrize("change", ["past the end", "negative start", "negative size", "out of order"])
def test_a_table_pointing_outside_the_stream_and_buffers_is_damage(two_buffers, change):
    table_at, table = layout(two_buffers)
    (first, first_size), (second, second_size) = table
    table = {
        "past the end": [[first, first_size], [second, second_size + 1]],  # one byte into the table
        "negative start": [[-1, 8], [second, second_size]],
        "negative size": [[first, -1], [second, second_size]],
        "out of order": [[second, second_size], [first, first_size]],
    }[change]
    with_table(two_buffers, table)
    assert damage_of(two_buffers) == "its table of buffers points outside the file"


def test_a_live_resource_is_named_with_its_type(tmp_path):
    with pytest.raises(serde.LiveResource) as caught:
        serde.dump({"guard": [threading.Lock()]}, tmp_path / "v.pkl")
    assert (caught.value.kind, caught.value.type_name) == ("a lock", "_thread.lock")
    assert str(caught.value) == "it holds a lock (_thread.lock)"


def test_a_file_open_for_reading_is_refused_not_copied(tmp_path):
    (tmp_path / "data.txt").write_text("precious")
    with open(tmp_path / "data.txt") as opened, pytest.raises(serde.LiveResource, match="an open file"):
        serde.dump({"handle": opened}, tmp_path / "v.pkl")  # cloudpickle alone would save its text


def test_subclasses_of_live_resources_are_live_and_of_in_memory_files_are_values(tmp_path):
    class Worker(threading.Thread):  # new classes: nothing known of them yet
        pass

    class Notes(io.StringIO):
        pass

    assert serde.live_kind(Worker()) == "a thread" and serde.live_kind(Notes("x")) is None
    assert serde.live_kind(Worker()) == "a thread"  # and the same when asked again
    serde.dump(Notes("kept"), tmp_path / "v.pkl")
    assert serde.load(tmp_path / "v.pkl").getvalue() == "kept"


def test_an_enum_of_the_notebook_is_found_by_its_name_where_it_is_loaded(tmp_path):
    notebook = {"__name__": "__main__"}
    exec("import enum\nclass Colour(enum.Enum):\n    RED = 1\n    BLUE = 2", notebook)
    path = tmp_path / "v.pkl"
    serde.dump([notebook["Colour"].BLUE], path)
    step = {"__name__": "__main__"}
    [loaded] = serde.load(path, step)
    assert isinstance(step["Colour"], enum.EnumMeta) and loaded is step["Colour"].BLUE


def test_a_file_that_is_only_a_trailer_has_a_broken_table(tmp_path):
    path = tmp_path / "v.pkl"
    path.write_bytes(pickle.dumps(1)[:8].ljust(8, b".") + b"KFMOOB01")  # 16 bytes: a header and the marker
    assert damage_of(path) == "its table of buffers is broken (longer than the file)"
