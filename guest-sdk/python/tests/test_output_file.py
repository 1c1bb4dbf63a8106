"""OutputFile: the contract's exactly-once rules for an append-only file."""

import json

import pytest

from sinkbox_sdk import Context, Fatal, OutputFile


def snapshot(path, length):
    return json.dumps({"len": length, "path": str(path)}).encode()


def test_a_first_run_starts_an_empty_file_and_creates_it_with_the_first_bytes(tmp_path):
    path = tmp_path / "out.csv"
    out = OutputFile(str(path), Context())
    assert out.length == 0 and not path.exists()
    out.append(b"")
    assert not path.exists()
    out.append(b"abc")
    assert path.read_bytes() == b"abc"
    assert json.loads(out.snapshot()) == {"len": 3, "path": str(path)}
    path.write_bytes(b"")
    assert OutputFile(str(path), Context()).length == 0  # empty is fine too


def test_a_first_run_refuses_an_output_that_holds_data(tmp_path):
    path = tmp_path / "out.csv"
    path.write_bytes(b"x" * 1200)
    with pytest.raises(Fatal, match="already holds 1,200 bytes this pipeline did not write; remove it"):
        OutputFile(str(path), Context())
    assert path.read_bytes() == b"x" * 1200


def test_open_cuts_off_what_an_uncommitted_flush_wrote(tmp_path):
    path = tmp_path / "out.csv"
    path.write_bytes(b"committed|not committed")
    out = OutputFile(str(path), Context(snapshot=snapshot(path, 10)))
    assert path.read_bytes() == b"committed|"
    out.append(b"again")
    assert path.read_bytes() == b"committed|again"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"short", "is 5 bytes but 4,000 were committed: it was truncated or replaced outside sinkbox"),
        (None, "is missing but 4,000 bytes were committed: it was deleted or moved outside sinkbox"),
    ],
)
def test_open_refuses_an_output_shorter_than_its_snapshot(tmp_path, content, message):
    path = tmp_path / "out.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(Fatal, match=message):
        OutputFile(str(path), Context(snapshot=snapshot(path, 4000)))
    assert path.read_bytes() if content is not None else not path.exists()


def test_a_snapshot_of_zero_bytes_and_no_file_is_a_start(tmp_path):
    path = tmp_path / "out.csv"
    assert OutputFile(str(path), Context(snapshot=snapshot(path, 0))).length == 0


def test_a_snapshot_taken_for_another_path_counts_as_a_first_run(tmp_path):
    path = tmp_path / "new.csv"
    path.write_bytes(b"someone else's")
    with pytest.raises(Fatal, match="already holds"):
        OutputFile(str(path), Context(snapshot=snapshot(tmp_path / "old.csv", 3)))
    assert path.read_bytes() == b"someone else's"


def test_a_snapshot_this_class_did_not_write_is_fatal(tmp_path):
    with pytest.raises(Fatal, match="is not one an output file wrote"):
        OutputFile(str(tmp_path / "x"), Context(snapshot=b"\x01\x02"))


def test_a_probe_touches_nothing_and_cannot_write(tmp_path):
    path = tmp_path / "out.csv"
    path.write_bytes(b"committed|being written by the live instance")
    out = OutputFile(str(path), Context(snapshot=snapshot(path, 10), probe=True))
    with pytest.raises(Fatal, match="a probe instance must not write"):
        out.append(b"x")
    out.rollback()
    assert path.read_bytes() == b"committed|being written by the live instance"
    fresh = tmp_path / "fresh.csv"
    OutputFile(str(fresh), Context(probe=True))
    assert not fresh.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.write_bytes(b"replaced"), "is 8 bytes but the sink wrote 3: it was changed outside sinkbox"),
        (lambda p: p.unlink(), "is missing but the sink had written 3 bytes to it"),
        (lambda p: p.write_bytes(b""), "is 0 bytes but the sink wrote 3"),
    ],
)
def test_append_fails_when_the_output_changed_under_the_sink(tmp_path, change, message):
    path = tmp_path / "out.csv"
    out = OutputFile(str(path), Context())
    out.append(b"abc")
    change(path)
    with pytest.raises(Fatal, match=message):
        out.append(b"def")


def test_rollback_cuts_back_to_the_last_snapshot(tmp_path):
    path = tmp_path / "out.csv"
    out = OutputFile(str(path), Context())
    out.append(b"one|")
    out.snapshot()
    out.append(b"half a flush")
    out.rollback()
    assert path.read_bytes() == b"one|" and out.length == 4
    out.append(b"two|")
    assert path.read_bytes() == b"one|two|"


def test_placeholders_name_each_instance_its_own_file(tmp_path):
    template = str(tmp_path / "out-{partition}-{lane}.csv")
    out = OutputFile(template, Context(partition=3, lane=1, lanes=2))
    assert out.path == str(tmp_path / "out-3-1.csv")


@pytest.mark.parametrize(
    "context, message",
    [
        (Context(lanes=2), "has no {lane} placeholder but the sink runs 2 lanes"),
        (Context(partition=1), "has no {partition} placeholder but this instance serves partition 1"),
    ],
)
def test_a_path_that_instances_would_share_is_refused(tmp_path, context, message):
    with pytest.raises(Fatal, match=message.replace("{", r"\{").replace("}", r"\}")):
        OutputFile(str(tmp_path / "out.csv"), context)
