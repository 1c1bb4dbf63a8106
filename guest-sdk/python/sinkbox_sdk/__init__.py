"""Write Sinkbox sinks in Python.

Subclass :class:`Sink`, then export it from your app module::

    import sinkbox_sdk

    class Upper(sinkbox_sdk.Sink):
        def open(self, config):
            self.path = config["path"]
            self.lines = []

        def add(self, record):
            self.lines.append(record.value.decode().upper())

        def flush(self):
            with open(self.path, "a") as f:
                f.write("".join(line + "\\n" for line in self.lines))
            self.lines.clear()

        def abort(self):
            self.lines.clear()

    Sink = sinkbox_sdk.export(Upper)

and build it with ``componentize-py`` (see ``guest-sdk/python/README.md``).

Errors: raise :class:`Backpressure`, :class:`Retryable`, :class:`Rejected`
(from ``add``: that one record goes to the dead-letter queue) or
:class:`Fatal`. Any other exception is reported as ``fatal`` with its
traceback, rather than trapping: the runtime replaces the instance and
replays the checkpoint.

State lives on your ``Sink`` object; the SDK keeps that object at module
level, because componentize-py does not keep state on the exported object
between calls.
"""

import json
import struct
import traceback

from componentize_py_types import Err
from wit_world.imports import host, types

__all__ = [
    "Sink",
    "Record",
    "Backpressure",
    "Retryable",
    "Rejected",
    "RejectedRecords",
    "Fatal",
    "export",
    "log",
    "decode",
]

NO_KEY = 0xFFFFFFFF
NO_TIMESTAMP = -(1 << 63)
_FIXED = struct.Struct("<QqIII")


class Backpressure(Exception):
    """The destination is overloaded: the runtime aborts, waits, replays."""

    def __init__(self, retry_after_ms):
        super().__init__(f"backpressure, retry after {retry_after_ms} ms")
        self.retry_after_ms = int(retry_after_ms)


class Retryable(Exception):
    """A transient failure: the runtime aborts and retries with backoff."""


class Rejected(Exception):
    """Raised from ``add``: this record can never be written."""


class RejectedRecords(Exception):
    """Raised from ``add_batch``: these records, given as (offset, reason)
    pairs, can never be written; the rest of the batch counts as taken."""

    def __init__(self, rejections):
        super().__init__(f"{len(rejections)} records rejected")
        self.rejections = [(int(o), str(r)) for o, r in rejections]


class Fatal(Exception):
    """The instance is broken: the runtime replaces it and replays."""


class Record:
    """One record of a batch."""

    __slots__ = ("offset", "timestamp", "key", "value", "headers")

    def __init__(self, offset, timestamp, key, value, headers):
        self.offset = offset
        #: Milliseconds since the Unix epoch, or None.
        self.timestamp = timestamp
        #: bytes, or None.
        self.key = key
        #: bytes.
        self.value = value
        #: list of (name: str, value: bytes).
        self.headers = headers

    def json(self):
        """The value parsed as JSON."""
        return json.loads(self.value)

    def __repr__(self):
        return f"Record(offset={self.offset}, key={self.key!r}, value={self.value!r})"


def decode(data, count):
    """Decodes the packed batch encoding (see wit/types.wit) into records."""
    view = memoryview(data)
    records = []
    pos = 0
    unpack = _FIXED.unpack_from
    for _ in range(count):
        offset, timestamp, key_len, value_len, header_count = unpack(view, pos)
        pos += 28
        if key_len == NO_KEY:
            key = None
        else:
            key = bytes(view[pos : pos + key_len])
            pos += key_len
        value = bytes(view[pos : pos + value_len])
        pos += value_len
        headers = []
        for _ in range(header_count):
            (n,) = struct.unpack_from("<I", view, pos)
            name = bytes(view[pos + 4 : pos + 4 + n]).decode("utf-8", "replace")
            pos += 4 + n
            (n,) = struct.unpack_from("<I", view, pos)
            headers.append((name, bytes(view[pos + 4 : pos + 4 + n])))
            pos += 4 + n
        records.append(Record(offset, None if timestamp == NO_TIMESTAMP else timestamp, key, value, headers))
    if pos != len(data):
        raise Fatal(f"malformed record batch: {len(data) - pos} bytes left after {count} records")
    return records


def log(level, message, **fields):
    """Logs to the host, attributed to this sink. ``level`` is one of
    ``"trace"``, ``"debug"``, ``"info"``, ``"warn"``, ``"error"``."""
    host.log(types.Level[level.upper()], str(message), [(k, str(v)) for k, v in fields.items()])


class Sink:
    """Base class of a Python sink. Override ``open``, ``add`` (or
    ``add_batch``), ``flush``, and ``abort`` if you buffer."""

    #: JSON Schema (a dict) of the config, or None. The runtime checks
    #: configs against it before ``open`` and in ``sinkbox validate``.
    config_schema = None

    def open(self, config):
        """Called once with the config, a dict."""

    def add(self, record):
        """Takes one :class:`Record`; raise :class:`Rejected` to dead-letter it."""
        raise NotImplementedError("override add or add_batch")

    def add_batch(self, records):
        """Takes a list of records; the default calls ``add`` for each and
        collects rejections."""
        rejected = []
        for record in records:
            try:
                self.add(record)
            except Rejected as e:
                rejected.append((record.offset, str(e)))
        if rejected:
            raise RejectedRecords(rejected)

    def flush(self):
        """Makes everything added since the last flush durable."""

    def abort(self):
        """Drops everything added since the last flush; a replay follows."""

    def close(self):
        """Releases resources."""


def _lower(error):
    """Maps a Python exception to the contract's error variant."""
    if isinstance(error, Err):
        return error
    if isinstance(error, Backpressure):
        return Err(types.SinkError_Backpressure(min(max(error.retry_after_ms, 0), 0xFFFFFFFF)))
    if isinstance(error, Retryable):
        return Err(types.SinkError_Retryable(str(error)))
    if isinstance(error, RejectedRecords):
        return Err(types.SinkError_Rejected([types.Rejection(o, r) for o, r in error.rejections]))
    if isinstance(error, Rejected):
        return Err(types.SinkError_Fatal(f"record rejected outside add: {error}"))
    if isinstance(error, Fatal):
        return Err(types.SinkError_Fatal(str(error)))
    detail = "".join(traceback.format_exception(type(error), error, error.__traceback__)).strip()
    return Err(types.SinkError_Fatal(f"uncaught {type(error).__name__}: {error}\n{detail}"))


# The user's sink object. Module level: componentize-py does not keep state
# on the exported object between calls.
_instance = None


def export(cls):
    """Turns a :class:`Sink` subclass into the class componentize-py
    exports; assign the result to ``Sink`` in your app module."""

    def call(method, *args):
        try:
            return method(*args)
        except BaseException as e:  # noqa: BLE001 - every error becomes a variant
            raise _lower(e) from None

    def current():
        if _instance is None:
            raise Err(types.SinkError_Fatal("sink called before a successful open"))
        return _instance

    class Exported:
        def config_schema(self):
            schema = cls.config_schema
            return None if schema is None else json.dumps(schema)

        def open(self, config):
            global _instance
            sink = cls()

            def opened():
                sink.open(json.loads(config))

            call(opened)
            _instance = sink

        def add(self, batch):
            sink = current()
            call(lambda: sink.add_batch(decode(batch.data, batch.count)))

        def flush(self):
            call(current().flush)

        def abort(self):
            if _instance is not None:
                try:
                    _instance.abort()
                except BaseException as e:  # noqa: BLE001
                    log("error", f"abort failed: {e}")

        def close(self):
            global _instance
            sink, _instance = _instance, None
            if sink is not None:
                call(sink.close)

    Exported.__name__ = "Sink"
    return Exported
