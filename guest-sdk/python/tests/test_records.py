"""The packed batch encoding: what the runtime sends, decoded into records."""

import pytest

from sinkbox_sdk import Fatal, decode
from sinkbox_sdk.testing import Message, encode

MESSAGES = [
    Message(b'{"n":0}', key=b"k", headers=(("h", b"v"), ("empty", b"")), timestamp=1),
    Message(b"", key=None, headers=(), timestamp=None),
    Message(b"\x00\xff binary", key=b"", headers=(("\u00e9", b"x"),), timestamp=-5),
]


def test_decode_gives_back_every_field_with_topic_and_partition():
    data, count = encode(enumerate(MESSAGES, start=7))
    records = decode(data, count, "orders", 3)
    assert [r.offset for r in records] == [7, 8, 9]
    for record, message in zip(records, MESSAGES):
        assert (record.key, record.value, record.timestamp) == (message.key, message.value, message.timestamp)
        assert record.headers == list(message.headers)
        assert (record.topic, record.partition) == ("orders", 3)


def test_json_and_text_read_the_value():
    (record,) = decode(*encode([(0, MESSAGES[0])]))
    assert record.json() == {"n": 0}
    assert record.text() == '{"n":0}'


def test_a_buffer_cut_anywhere_is_fatal_not_a_crash():
    data, count = encode(enumerate(MESSAGES))
    for cut in range(len(data)):
        with pytest.raises(Fatal, match="malformed record batch"):
            decode(data[:cut], count)


def test_bytes_left_over_are_fatal():
    data, count = encode(enumerate(MESSAGES))
    with pytest.raises(Fatal, match="1 bytes left after 3 records"):
        decode(data + b"x", count)


def test_a_tombstone_is_flagged_by_its_header():
    from sinkbox_sdk import TOMBSTONE_HEADER

    data, count = encode([(0, Message(b"", key=b"gone", headers=((TOMBSTONE_HEADER, b""),))), (1, MESSAGES[0])])
    gone, kept = decode(data, count)
    assert (gone.tombstone, gone.value, gone.key) == (True, b"", b"gone")
    assert kept.tombstone is False
