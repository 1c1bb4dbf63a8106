"""BatchingSink: buffers per topic partition, writes at flush, drops on abort."""

import pytest

from sinkbox_sdk import BatchingSink, Fatal, Rejected, RejectedRecords, Rejection, Status, _Instance
from sinkbox_sdk.testing import FakeHost, Message, encode


class Collect(BatchingSink):
    """Writes into ``written``: (topic, partition, first, last, items)."""

    written: list = []

    def write(self, batch):
        Collect.written.append((batch.topic, batch.partition, batch.first_offset, batch.last_offset, list(batch)))


@pytest.fixture(autouse=True)
def clear():
    Collect.written = []


def add(instance, topic, partition, offsets):
    data, count = encode((o, Message(str(o).encode())) for o in offsets)
    instance.add(topic, partition, count, data)


def values(batch_items):
    return [r.value for r in batch_items]


def test_records_are_written_at_flush_one_batch_per_topic_partition_in_order():
    instance = _Instance(Collect)
    instance.open("{}", _context())
    add(instance, "a", 0, [0, 1])
    add(instance, "b", 1, [10])
    add(instance, "a", 0, [2])
    assert Collect.written == []
    instance.flush()
    assert [(t, p, first, last, values(items)) for t, p, first, last, items in Collect.written] == [
        ("a", 0, 0, 2, [b"0", b"1", b"2"]),
        ("b", 1, 10, 10, [b"10"]),
    ]
    assert all(r.topic == "a" and r.partition == 0 for r in Collect.written[0][4])
    assert instance.status() == Status(written=4)
    assert instance.status() == Status()  # counts since the previous call


def test_abort_drops_the_buffers():
    h = FakeHost(Collect, {})
    h.open()
    h.add([b"x", b"y"])
    h.abort()
    h.flush()
    assert Collect.written == []
    h.replay()
    h.flush()
    assert [values(w[4]) for w in Collect.written] == [[b"x", b"y"]]


def test_an_empty_flush_writes_nothing():
    h = FakeHost(Collect, {})
    h.open()
    h.flush()
    assert Collect.written == []


class Prepared(Collect):
    def prepare(self, record):
        n = int(record.value)
        if n % 3 == 0:
            return None
        if n == 4:
            raise Rejected("four")
        return n * 10


def test_prepare_converts_skips_and_rejects_at_add():
    h = FakeHost(Prepared, {})
    h.open()
    assert h.add([str(n).encode() for n in range(7)]) == [Rejection(4, "four")]
    h.flush()
    assert Collect.written == [("topic", 0, 1, 5, [10, 20, 50])]
    assert h.status == Status(written=3, filtered=3)


def test_skipped_records_count_only_once_flushed():
    h = FakeHost(Prepared, {})
    h.open()
    h.add([b"0", b"3"])
    h.abort()
    h.replay()
    h.flush()
    assert h.status.filtered == 2


class Refusing(Collect):
    def write(self, batch):
        super().write(batch)
        raise RejectedRecords([(o, "server said no") for o in batch.offsets if o % 2])


def test_write_may_reject_named_records_and_the_others_count_as_written():
    h = FakeHost(Refusing, {})
    h.open()
    h.add([b"a", b"b", b"c", b"d"])
    assert h.flush() == [Rejection(1, "server said no"), Rejection(3, "server said no")]
    h.add([b"e"])
    h.flush()
    assert h.status.written == 2 + 1


def test_write_rejecting_without_an_offset_is_fatal():
    class Vague(Collect):
        def write(self, batch):
            raise Rejected("something in there")

    h = FakeHost(Vague, {})
    h.open()
    h.add([b"a"])
    with pytest.raises(Fatal, match="write rejected a record without naming it"):
        h.flush()


def test_an_author_add_may_filter_and_call_super():
    class Picky(Collect):
        def add(self, record):
            if record.value != b"skip":
                super().add(record)

    h = FakeHost(Picky, {})
    h.open()
    h.add([b"a", b"skip", b"b"])
    h.flush()
    assert [values(w[4]) for w in Collect.written] == [[b"a", b"b"]]


def test_write_is_required():
    h = FakeHost(BatchingSink, {})
    h.open()
    h.add([b"a"])
    with pytest.raises(Fatal, match="NotImplementedError"):
        h.flush()


def _context():
    from sinkbox_sdk import Context

    return Context()
