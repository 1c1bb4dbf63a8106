"""The csv_sink example under the fake host: exactly-once output with
runtime snapshots and no state of its own."""

import pytest
from conftest import PYTHON_SDK, load_module

from sinkbox_sdk import Fatal
from sinkbox_sdk.testing import FakeHost

app = load_module("csv_sink_app", PYTHON_SDK / "examples/csv_sink/app.py")


def csv_lines(offsets):
    """What the compliance harness expects for values {"n": OFFSET}."""
    return "n\n" + "".join(f"{o}\n" for o in offsets)


def n(offsets):
    return [{"n": o} for o in offsets]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.csv"


def host(out, **kwargs):
    return FakeHost(app.Sink, {"path": str(out), "columns": ["n"]}, **kwargs)


def test_the_compliance_sequence_writes_exactly_the_flushed_records(out):
    h = host(out)
    h.open()
    h.add(n(range(10)))
    h.abort()
    h.replay()
    h.add(n(range(10, 25)))
    h.flush()
    h.add(n(range(25, 30)))
    h.abort()
    h.flush()
    h.close()
    assert out.read_text() == csv_lines(range(25))
    assert h.status.written == 25


def test_it_writes_csv_and_dead_letters_what_is_not_a_json_object(tmp_path):
    out = tmp_path / "out.csv"
    h = FakeHost(app.Sink, {"path": str(out), "columns": ["id", "name"]})
    h.run([{"id": 1, "name": "a, b"}, {"id": 2}, b"not json", [3], {"id": 4, "name": "d"}])
    assert out.read_text() == 'id,name\n1,"a, b"\n2,\n4,d\n'
    assert [d.offset for d in h.dead_letters] == [2, 3]
    assert h.dead_letters[0].reason.startswith("value is not a JSON object")
    assert h.status.written == 3


def test_cells_follow_the_rust_file_sink(tmp_path):
    out = tmp_path / "out.csv"
    h = FakeHost(app.Sink, {"path": str(out), "columns": ["a", "b", "c", "d"]})
    h.run([{"a": True, "b": None, "c": {"x": [1]}, "d": 1.5}])
    assert out.read_text() == 'a,b,c,d\ntrue,,"{""x"":[1]}",1.5\n'


def test_a_restart_after_an_uncommitted_flush_writes_each_record_once(out):
    h = host(out)
    h.open()
    h.add(n(range(5)))
    h.flush()
    h.add(n(range(5, 9)))
    h.flush(commit=False)  # written, but the checkpoint never committed
    assert out.read_text() == csv_lines(range(9))
    h.restart()  # open cuts the file back to the snapshot; 5..8 are replayed
    assert out.read_text() == csv_lines(range(5))
    h.flush()
    h.close()
    assert out.read_text() == csv_lines(range(9))


def test_a_crash_before_the_first_commit_starts_over_with_the_header(out):
    h = host(out)
    h.open()
    h.add(n(range(3)))
    h.flush(commit=False)
    h.restart()
    h.flush()
    assert out.read_text() == csv_lines(range(3))


def test_failures_while_running_leave_exactly_once_output(out):
    class Flaky(app.CsvSink):
        failures = {"write": 2}

        def write(self, batch):
            super().write(batch)
            if batch.first_offset == 40 and Flaky.failures["write"]:
                Flaky.failures["write"] -= 1
                raise OSError("disk hiccup after the write")

    h = FakeHost(Flaky, {"path": str(out), "columns": ["n"]})
    h.run(n(range(100)), batch_size=20, attempts=3)
    assert out.read_text() == csv_lines(range(100))
    assert h.opened == 3


def test_a_probe_beside_the_live_instance_touches_nothing(out):
    h = host(out)
    h.open()
    h.add(n(range(3)))
    h.flush()
    h.add(n(range(3, 6)))
    h.flush(commit=False)
    before = out.read_bytes()
    assert h.probe() is None
    assert out.read_bytes() == before


def test_a_first_run_refuses_an_output_it_did_not_write(out):
    out.write_text("id\n1\n")
    with pytest.raises(Fatal, match=r"already holds 5 bytes this pipeline did not write"):
        host(out).open()
    assert out.read_text() == "id\n1\n"


def test_an_output_truncated_outside_sinkbox_is_fatal_on_open_and_at_flush(out):
    h = host(out)
    h.open()
    h.add(n(range(10)))
    h.flush()
    out.write_text("n\n")
    h.add(n(range(10, 12)))
    with pytest.raises(Fatal, match="is 2 bytes but the sink wrote 22: it was changed outside sinkbox"):
        h.flush()
    assert not h.is_open
    with pytest.raises(Fatal, match="is 2 bytes but 22 were committed"):
        h.open()


def test_partitions_and_lanes_write_their_own_files(tmp_path):
    config = {"path": str(tmp_path / "out-{partition}-{lane}.csv"), "columns": ["n"]}
    for partition, lane in [(0, 0), (0, 1), (1, 0)]:
        FakeHost(app.Sink, config, partition=partition, lane=lane, lanes=2).run(n([partition, lane]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-0-0.csv", "out-0-1.csv", "out-1-0.csv"]
    assert (tmp_path / "out-1-0.csv").read_text() == "n\n1\n0\n"
    with pytest.raises(Fatal, match="no {lane} placeholder".replace("{", r"\{").replace("}", r"\}")):
        FakeHost(app.Sink, {"path": str(tmp_path / "x.csv"), "columns": ["n"]}, lanes=2).open()
