"""The glue between the contract and a Sink: calls in order, errors mapped
as the runtime gets them, snapshots and status."""

import json
import re

import pytest

import sinkbox_sdk
from sinkbox_sdk import (
    Backpressure,
    Context,
    Fatal,
    Rejected,
    RejectedRecords,
    Rejection,
    Retryable,
    Sink,
    Status,
)
from sinkbox_sdk.testing import ContractViolation, FakeHost, InvalidConfig


class Recorder(Sink):
    """Remembers every call; ``plan`` (class level, set by a test) says
    what to raise or return per call."""

    plan: dict = {}
    calls: list = []

    def open(self, config, context):
        Recorder.calls.append(("open", config, context))
        self._do("open")

    def add(self, record):
        Recorder.calls.append(("add", record.topic, record.partition, record.offset, record.value))
        self._do("add", record)

    def flush(self):
        Recorder.calls.append(("flush",))
        return self._do("flush")

    def snapshot(self):
        return self.plan.get("snapshot", b"snap")

    def status(self):
        return self._do("status")

    def abort(self):
        Recorder.calls.append(("abort",))
        self._do("abort")

    def close(self):
        Recorder.calls.append(("close",))
        self._do("close")

    def _do(self, call, record=None):
        action = self.plan.get(call)
        if callable(action):
            return action(record)
        if isinstance(action, BaseException):
            raise action
        return action


@pytest.fixture(autouse=True)
def fresh_recorder():
    Recorder.plan = {}
    Recorder.calls = []


def host(**kwargs):
    return FakeHost(Recorder, {"a": 1}, topic="orders", partition=2, **kwargs)


def test_importing_outside_a_component_works_and_logs_go_to_the_fallback():
    assert sinkbox_sdk._bindings() is None
    h = host()
    Recorder.plan["add"] = lambda record: sinkbox_sdk.log("warn", "odd record", offset=record.offset)
    h.open()
    h.add([b"x"])
    assert h.logs == [("warn", "odd record", [("offset", "0")])]


def test_open_gets_the_parsed_config_and_a_typed_context():
    h = host(lane=1, lanes=2, pipeline="p", sink_name="s", worker_index=3, worker_count=4)
    h.open()
    _, config, context = Recorder.calls[0]
    assert config == {"a": 1}
    assert context == Context(
        pipeline="p",
        sink="s",
        topic="orders",
        partition=2,
        lane=1,
        lanes=2,
        worker_index=3,
        worker_count=4,
        snapshot=None,
        probe=False,
    )


def test_a_first_open_is_followed_by_an_empty_flush_whose_snapshot_is_committed():
    h = host()
    h.open()
    assert [c[0] for c in Recorder.calls] == ["open", "flush"]
    assert h.snapshot == b"snap"


def test_the_snapshot_of_the_last_committed_flush_reaches_the_next_open():
    h = host()
    h.open()
    h.add([b"a", b"b"])
    Recorder.plan["snapshot"] = b"after b"
    h.flush()
    h.add([b"c"])
    Recorder.plan["snapshot"] = b"after c"
    h.flush(commit=False)
    h.restart()
    assert Recorder.calls[-2][2].snapshot == b"after b"
    # The replay starts after the committed checkpoint.
    assert Recorder.calls[-1] == ("add", "orders", 2, 2, b"c")


def test_records_carry_topic_partition_and_increasing_offsets():
    h = host()
    h.open()
    h.add([b"a", b"b"])
    h.add(["c", {"d": 1}])
    adds = [c for c in Recorder.calls if c[0] == "add"]
    assert adds == [
        ("add", "orders", 2, 0, b"a"),
        ("add", "orders", 2, 1, b"b"),
        ("add", "orders", 2, 2, b"c"),
        ("add", "orders", 2, 3, b'{"d":1}'),
    ]


# What a sink raises in add, and what the runtime gets.
ADD_ERRORS = [
    (Backpressure(250), Backpressure, "retry after 250 ms"),
    (Retryable("connection lost"), Retryable, "connection lost"),
    (Fatal("disk gone"), Fatal, "disk gone"),
    (ValueError("bad"), Fatal, "uncaught ValueError in add: bad\nTraceback"),
    (KeyError("k"), Fatal, "uncaught KeyError in add"),
    (RejectedRecords([(5, "x")]), ContractViolation, "rejected offset 5, which it was not given"),
]


@pytest.mark.parametrize("raised, expected, message", ADD_ERRORS)
def test_errors_from_add_reach_the_runtime_as_its_variants(raised, expected, message):
    h = host()
    h.open()
    Recorder.plan["add"] = raised
    with pytest.raises(expected) as caught:
        h.add([b"a"])
    assert message in str(caught.value)


def test_backpressure_keeps_the_instance_retryable_and_fatal_drop_it():
    for raised, still_open in [(Backpressure(1), True), (Retryable("x"), False), (Fatal("x"), False)]:
        h = host()
        h.open()
        Recorder.plan["add"] = raised
        with pytest.raises(type(raised)):
            h.add([b"a"])
        assert h.is_open == still_open
        Recorder.plan = {}


def test_rejected_in_add_names_the_record_at_hand_and_the_rest_is_accepted():
    h = host()
    h.open()
    Recorder.plan["add"] = lambda r: (_ for _ in ()).throw(Rejected("odd")) if r.value == b"b" else None
    assert h.add([b"a", b"b", b"c"]) == [Rejection(1, "odd")]
    assert h.dead_letters == [(1, "odd")]
    assert h.is_open


def test_rejected_in_flush_must_name_its_offset():
    h = host()
    h.open()
    h.add([b"a", b"b"])
    Recorder.plan["flush"] = Rejected("refused by the server", offset=1)
    assert h.flush() == [Rejection(1, "refused by the server")]
    h.add([b"c"])
    Recorder.plan["flush"] = Rejected("no offset")
    with pytest.raises(Fatal, match="Rejected raised in flush without naming a record"):
        h.flush()


def test_rejected_in_open_or_close_is_fatal():
    Recorder.plan["open"] = Rejected("no")
    with pytest.raises(Fatal, match="Rejected raised in open"):
        host().open()
    Recorder.plan = {"close": Rejected("no")}
    h = host()
    h.open()
    with pytest.raises(Fatal, match="Rejected raised in close"):
        h.close()
    assert not h.is_open


def test_a_config_that_is_not_json_is_fatal():
    with pytest.raises(Fatal, match="config is not JSON"):
        FakeHost(Recorder, "not json").open()


def test_a_config_against_the_schema_is_refused_before_open():
    class Strict(Recorder):
        config_schema = {"type": "object", "required": ["path"]}

    with pytest.raises(InvalidConfig, match="'path' is a required property"):
        FakeHost(Strict, {}).open()
    assert FakeHost(Strict, {}).config_schema() == {"type": "object", "required": ["path"]}
    assert Recorder.calls == []


@pytest.mark.parametrize(
    "snapshot, message",
    [
        ("text", "snapshot() returned str; return bytes or None"),
        (b"x" * (64 * 1024 + 1), "snapshot is 65,537 bytes; the contract allows at most 65,536"),
    ],
)
def test_a_bad_snapshot_is_fatal(snapshot, message):
    Recorder.plan["snapshot"] = snapshot
    with pytest.raises(Fatal, match=re.escape(message)):
        host().open()


def test_a_snapshot_of_64_kib_and_none_are_fine():
    Recorder.plan["snapshot"] = b"x" * (64 * 1024)
    h = host()
    h.open()
    assert len(h.snapshot) == 64 * 1024
    Recorder.plan["snapshot"] = None
    h.flush()
    assert h.snapshot is None


def test_flush_returning_a_value_is_fatal():
    Recorder.plan["flush"] = b"meant as a snapshot"
    with pytest.raises(Fatal, match=r"flush returned bytes; return the snapshot from snapshot\(\)"):
        host().open()


def test_status_is_summed_and_a_failing_status_is_logged_not_raised():
    h = host()
    Recorder.plan["status"] = Status(written=2, filtered=1, custom={"retries": 3})
    h.open()
    h.flush()
    assert h.status == Status(written=4, filtered=2, custom={"retries": 6})
    Recorder.plan["status"] = RuntimeError("oops")
    h.flush()
    assert h.status.written == 4
    assert h.logs[-1][:2] == ("error", "status failed: RuntimeError: oops")


def test_a_failed_abort_makes_the_next_call_fatal():
    h = host()
    h.open()
    Recorder.plan["abort"] = OSError("cannot truncate")
    h.abort()
    assert h.logs[-1][0] == "error"
    with pytest.raises(Fatal, match="add after a failed abort: OSError: cannot truncate"):
        h.add([b"a"])


def test_calls_the_runtime_never_makes_are_refused():
    h = host()
    with pytest.raises(ContractViolation):
        h.add([b"a"])
    with pytest.raises(ContractViolation):
        h.flush()
    h.open()
    with pytest.raises(ContractViolation):
        h.open()
    h.close()
    with pytest.raises(ContractViolation):
        h.close()


def test_the_instance_fails_calls_before_open_as_the_component_would():
    instance = sinkbox_sdk._Instance(Recorder)
    with pytest.raises(Fatal, match="add called before a successful open"):
        instance.add("t", 0, 0, b"")
    with pytest.raises(Fatal, match="flush called before a successful open"):
        instance.flush()
    assert instance.status() is None
    instance.abort()
    instance.close()


def test_export_names_the_class_sink_and_the_host_takes_either_class():
    exported = sinkbox_sdk.export(Recorder)
    assert exported.__name__ == "Sink"
    assert exported.sink_class is Recorder
    assert json.loads(exported().config_schema() or "null") is None
    h = FakeHost(exported, {})
    h.open()
    assert h.sink_class is Recorder
    with pytest.raises(TypeError):
        FakeHost(dict, {})


def test_a_probe_gets_add_abort_close_and_the_committed_snapshot():
    h = host()
    h.open()
    h.add([b"a", b"b"])
    Recorder.calls.clear()
    assert h.probe() is None
    names = [c[0] for c in Recorder.calls]
    assert names == ["open", "add", "add", "abort", "close"]
    context = Recorder.calls[0][2]
    assert context.probe and context.snapshot == b"snap"
    assert h.is_open  # the live instance is untouched
    Recorder.plan["add"] = ValueError("boom")
    assert isinstance(h.probe(), Fatal)


def test_run_replays_after_backpressure_and_replaces_the_instance_after_fatal():
    failures = {"backpressure": 1, "fatal": 1}

    def add(record):
        if record.offset == 3 and failures["backpressure"]:
            failures["backpressure"] -= 1
            raise Backpressure(1)
        if record.offset == 5 and failures["fatal"]:
            failures["fatal"] -= 1
            raise Fatal("broken")

    Recorder.plan["add"] = add
    h = host()
    h.run([b"x"] * 8, batch_size=2)
    names = [c[0] for c in Recorder.calls if c[0] != "add"]
    assert names.count("abort") == 1
    assert h.opened == 2
    assert names[-1] == "close"
    assert h.uncommitted == []


def test_run_gives_up_after_its_attempts():
    Recorder.plan["add"] = Retryable("down")
    h = host()
    with pytest.raises(Retryable):
        h.run([b"x"], attempts=3)
    assert h.opened == 3
