"""Write Sinkbox sinks in Python (contract ``sinkbox:sink@0.2.0``).

A sink that writes to a destination usually subclasses :class:`BatchingSink`
and writes two methods::

    import sinkbox_sdk

    class Upper(sinkbox_sdk.BatchingSink):
        def open(self, config, context):
            self.out = sinkbox_sdk.OutputFile(config["path"], context)

        def write(self, batch):
            self.out.append(b"".join(r.value.upper() + b"\\n" for r in batch))

        def snapshot(self):
            return self.out.snapshot()

        def abort(self):
            super().abort()
            self.out.rollback()

    Sink = sinkbox_sdk.export(Upper)

and builds with ``componentize-py`` (see ``guest-sdk/python/README.md``).

The calls, in contract order: ``open(config, context)`` once, then ``add``
(``add_batch``), ``flush`` (followed by ``snapshot`` and ``status``) and
``abort`` in any order, then ``close``.

Errors: raise :class:`Backpressure`, :class:`Retryable`, :class:`Rejected`
(names a record: from ``add`` it is the record at hand, from ``flush`` pass
``offset=``), :class:`RejectedRecords` or :class:`Fatal`. Any other exception
is reported as ``fatal`` with its traceback rather than trapping: the
runtime replaces the instance and replays the checkpoint.

This one file is everything a component needs (``sinkbox new`` copies it
into a project); :mod:`sinkbox_sdk.testing` runs a sink under plain pytest.
The generated bindings (``wit_world``) exist only inside a componentize-py
build, so they are imported lazily and the module imports anywhere.

State lives on your sink object; the SDK keeps that object at module level,
because componentize-py does not keep state on the exported object between
calls.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

__all__ = [
    "TOMBSTONE_HEADER",
    "Backpressure",
    "Batch",
    "BatchingSink",
    "Context",
    "Fatal",
    "OutputFile",
    "Record",
    "Rejected",
    "RejectedRecords",
    "Rejection",
    "Retryable",
    "Sink",
    "SinkBatch",
    "SinkError",
    "Status",
    "decode",
    "export",
    "log",
]

#: The largest snapshot the contract allows, in bytes.
MAX_SNAPSHOT = 64 * 1024

NO_KEY = 0xFFFFFFFF
NO_TIMESTAMP = -(1 << 63)
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_FIXED = struct.Struct("<QqIII")
_LEN = struct.Struct("<I")

Level = Literal["trace", "debug", "info", "warn", "error"]
T = TypeVar("T")


# ---------------------------------------------------------------- errors


class SinkError(Exception):
    """Base of the errors a sink raises to tell the runtime what to do next."""


class Backpressure(SinkError):
    """The destination is overloaded: the runtime calls ``abort``, waits
    ``retry_after_ms`` and replays the checkpoint on the same instance."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"backpressure, retry after {retry_after_ms} ms")
        self.retry_after_ms = int(retry_after_ms)


class Retryable(SinkError):
    """A transient failure: the runtime drops the instance, waits with
    backoff, opens a fresh one (its ``open`` gets the last committed
    snapshot) and replays the checkpoint."""


class Fatal(SinkError):
    """The instance is broken: the runtime drops it, opens a fresh one and
    replays the checkpoint, as after a trap."""


class Rejection(NamedTuple):
    """One record a sink refused: it goes to the dead-letter queue."""

    offset: int
    reason: str


class Rejected(SinkError):
    """This record can never be written; it goes to the dead-letter queue
    and the rest of the call counts as accepted.

    Raised from ``add`` (or :meth:`BatchingSink.prepare`) the record at hand
    is meant and ``offset`` may be left out; anywhere else (``add_batch``,
    ``flush``, :meth:`BatchingSink.write`) pass the record's ``offset``.
    """

    def __init__(self, reason: str, offset: int | None = None) -> None:
        super().__init__(reason)
        self.reason = str(reason)
        self.offset = None if offset is None else int(offset)


class RejectedRecords(SinkError):
    """Several records can never be written, given as ``(offset, reason)``
    pairs; every other record of the call counts as accepted."""

    def __init__(self, rejections: Iterable[tuple[int, str]]) -> None:
        self.rejections = [Rejection(int(o), str(r)) for o, r in rejections]
        super().__init__(f"{len(self.rejections)} records rejected")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Context:
    """What an instance serves, given to ``open`` (wit ``context``)."""

    #: The pipeline's name.
    pipeline: str = "pipeline"
    #: The sink's name in the pipeline.
    sink: str = "sink"
    #: The topic served; empty when not known yet (the first batch names it).
    topic: str = ""
    #: The partition served.
    partition: int = 0
    #: The lane within the partition, ``0 <= lane < lanes``.
    lane: int = 0
    #: How many lanes the partition is spread over.
    lanes: int = 1
    #: This instance's index among the sink's instances in this process.
    worker_index: int = 0
    #: How many instances of the sink run in this process.
    worker_count: int = 1
    #: What this sink's ``snapshot()`` returned at the last committed
    #: checkpoint for this partition and lane; None on a first run.
    snapshot: bytes | None = None
    #: A probe instance: it only gets ``add``, then ``abort`` and ``close``,
    #: and must write nothing, roll nothing back and take no resource the
    #: live instance holds.
    probe: bool = False


@dataclass
class Status:
    """Counts since the previous ``status`` call (wit ``sink-status``); the
    runtime adds them up per sink."""

    #: Records written to the destination.
    written: int = 0
    #: Records written with a problem.
    warnings: int = 0
    #: Records deliberately skipped.
    filtered: int = 0
    #: Failures the sink handled itself.
    failures: int = 0
    #: The sink's own counters (at most 32 names of at most 64 bytes kept).
    custom: dict[str, int] = field(default_factory=dict)


#: The header a source sets on a record whose value was null (a Kafka tombstone).
TOMBSTONE_HEADER = "sinkbox.tombstone"


class Record:
    """One record of a batch."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(
        self,
        offset: int,
        timestamp: int | None,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        topic: str = "",
        partition: int = 0,
    ) -> None:
        #: Position of the record in its partition.
        self.offset = offset
        #: Milliseconds since the Unix epoch, or None.
        self.timestamp = timestamp
        #: The key, or None.
        self.key = key
        #: The value.
        self.value = value
        #: (name, value) pairs.
        self.headers = headers
        #: The stream the record comes from (for a file source, its path).
        self.topic = topic
        #: The partition within the topic.
        self.partition = partition

    @property
    def tombstone(self) -> bool:
        """Whether the source record had no value (a Kafka delete marker):
        the value is empty and the header ``sinkbox.tombstone`` is set."""
        return any(name == TOMBSTONE_HEADER for name, _ in self.headers)

    def json(self) -> Any:
        """The value parsed as JSON; raises ``ValueError`` if it is not."""
        return json.loads(self.value)

    def text(self) -> str:
        """The value decoded as UTF-8; raises ``ValueError`` if it is not."""
        return self.value.decode("utf-8")

    def __repr__(self) -> str:
        return (
            f"Record(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"key={self.key!r}, value={self.value!r})"
        )


class Batch:
    """The records of one ``add`` call: one topic partition, never empty,
    offsets strictly increasing."""

    __slots__ = ("partition", "records", "topic")

    def __init__(self, topic: str, partition: int, records: list[Record]) -> None:
        self.topic = topic
        self.partition = partition
        self.records = records

    @property
    def first_offset(self) -> int:
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        return self.records[-1].offset

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Batch(topic={self.topic!r}, partition={self.partition}, records={len(self.records)})"


def decode(data: bytes, count: int, topic: str = "", partition: int = 0) -> list[Record]:
    """Decodes the packed batch encoding (see wit/types.wit) into records;
    raises :class:`Fatal` on a malformed buffer."""
    view = memoryview(data)
    records = []
    pos = 0
    unpack = _FIXED.unpack_from
    try:
        for _ in range(count):
            offset, timestamp, key_len, value_len, header_count = unpack(view, pos)
            pos += 28
            key: bytes | None = None
            if key_len != NO_KEY:
                key = _take(view, pos, key_len)
                pos += key_len
            value = _take(view, pos, value_len)
            pos += value_len
            headers = []
            for _ in range(header_count):
                (n,) = _LEN.unpack_from(view, pos)
                name = _take(view, pos + 4, n).decode("utf-8", "replace")
                pos += 4 + n
                (n,) = _LEN.unpack_from(view, pos)
                headers.append((name, _take(view, pos + 4, n)))
                pos += 4 + n
            records.append(
                Record(offset, None if timestamp == NO_TIMESTAMP else timestamp, key, value, headers, topic, partition)
            )
    except (struct.error, IndexError) as e:
        raise Fatal(f"malformed record batch: record {len(records)} of {count} is cut short ({e})") from None
    if pos != len(data):
        raise Fatal(f"malformed record batch: {len(data) - pos} bytes left after {count} records")
    return records


def _take(view: memoryview, pos: int, n: int) -> bytes:
    if pos + n > len(view):
        raise IndexError(f"{n} bytes wanted at {pos}, {len(view)} in the buffer")
    return bytes(view[pos : pos + n])


# ---------------------------------------------------------------- sinks


class Sink:
    """Base class of a Python sink.

    Override ``open``, ``add`` (or ``add_batch``) and ``flush``; ``abort`` if
    you buffer; ``snapshot`` for exactly-once output; ``status`` to report
    counts. For a sink that writes at flush, :class:`BatchingSink` does the
    buffering.
    """

    #: JSON Schema (a dict) of the config, or None. The runtime checks
    #: configs against it before ``open`` and in ``sinkbox validate``.
    config_schema: ClassVar[dict[str, Any] | None] = None

    def open(self, config: Any, context: Context) -> None:
        """Called once, first, with the config (parsed JSON) and the
        :class:`Context`. Roll the destination back to
        ``context.snapshot`` here; on a probe (``context.probe``) touch
        nothing."""

    def add(self, record: Record) -> None:
        """Takes one :class:`Record`; raise :class:`Rejected` to dead-letter it."""
        raise NotImplementedError("override add, add_batch, or subclass BatchingSink")

    def add_batch(self, batch: Batch) -> None:
        """Takes a :class:`Batch`; the default calls ``add`` for each record
        and collects the rejections."""
        rejected = []
        add = self.add
        for record in batch.records:
            try:
                add(record)
            except Rejected as e:
                rejected.append(Rejection(record.offset if e.offset is None else e.offset, e.reason))
        if rejected:
            raise RejectedRecords(rejected)

    def flush(self) -> None:
        """Makes everything added since the last flush durable."""

    def snapshot(self) -> bytes | None:
        """Called after each successful ``flush``: the bytes (at most 64 KiB)
        the runtime commits with the checkpoint and hands back to a later
        ``open`` as ``context.snapshot``, or None."""
        return None

    def status(self) -> Status | None:
        """Called after each successful ``flush`` (and ``snapshot``): counts
        since the previous call, or None."""
        return None

    def abort(self) -> None:
        """Drops everything added since the last successful flush; a replay
        follows. Cannot fail: an exception here makes the next call fatal."""

    def close(self) -> None:
        """Releases resources; what was not flushed is discarded."""


class SinkBatch:
    """What :meth:`BatchingSink.write` gets: the records of one topic
    partition buffered since the last flush, never empty."""

    __slots__ = ("items", "offsets", "partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        #: What ``prepare`` returned for each record kept: the
        #: :class:`Record` objects unless ``prepare`` is overridden.
        self.items: list[Any] = []
        #: The offset of each item.
        self.offsets: list[int] = []

    @property
    def first_offset(self) -> int:
        return self.offsets[0]

    @property
    def last_offset(self) -> int:
        return self.offsets[-1]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"SinkBatch(topic={self.topic!r}, partition={self.partition}, items={len(self.items)})"


class BatchingSink(Sink):
    """A sink that buffers records per (topic, partition) and writes them at
    ``flush`` (Quix Streams' ``BatchingSink`` model).

    Override ``open`` and :meth:`write`; optionally :meth:`prepare` to turn
    each record into what is buffered (and reject or skip it at ``add``
    time). ``abort`` drops the buffers; ``status`` reports how many records
    were written and skipped. Override ``snapshot`` (and extend ``abort``)
    for exactly-once output, e.g. with :class:`OutputFile`.
    If you define ``__init__``, call ``super().__init__()``.
    """

    def __init__(self) -> None:
        self._batches: dict[tuple[str, int], SinkBatch] = {}
        self._skipped = 0
        self._counts = Status()

    def prepare(self, record: Record) -> Any:
        """Called at ``add`` for each record: returns what to buffer for it
        (the record itself by default), None to skip it (counted as
        filtered), or raises :class:`Rejected` to dead-letter it. Reject
        here rather than in ``write``: a rejection from ``flush`` returns
        no snapshot."""
        return record

    def write(self, batch: SinkBatch) -> None:
        """Writes one batch durably; called at ``flush`` for every topic
        partition with buffered records, oldest first. Raise
        :class:`Rejected` with ``offset=`` (or :class:`RejectedRecords`) for
        records the destination refused: the others count as written."""
        raise NotImplementedError("override write")

    def add_batch(self, batch: Batch) -> None:
        if type(self).add is not BatchingSink.add:
            # The author's add decides, per record (and may call super().add).
            Sink.add_batch(self, batch)
        else:
            self._buffer(batch.topic, batch.partition, batch.records)

    def add(self, record: Record) -> None:
        self._buffer(record.topic, record.partition, [record])

    def _buffer(self, topic: str, partition: int, records: list[Record]) -> None:
        key = (topic, partition)
        pending = self._batches.get(key)
        if pending is None:
            pending = self._batches[key] = SinkBatch(topic, partition)
        items, offsets, prepare = pending.items, pending.offsets, self.prepare
        rejected = []
        for record in records:
            try:
                item = prepare(record)
            except Rejected as e:
                rejected.append(Rejection(record.offset if e.offset is None else e.offset, e.reason))
                continue
            if item is None:
                self._skipped += 1
            else:
                items.append(item)
                offsets.append(record.offset)
        if not items:
            del self._batches[key]
        if rejected:
            raise RejectedRecords(rejected)

    def flush(self) -> None:
        rejected: list[Rejection] = []
        for key in list(self._batches):
            batch = self._batches[key]
            refused: list[Rejection] = []
            try:
                self.write(batch)
            except Rejected as e:
                if e.offset is None:
                    raise Fatal(f"write rejected a record without naming it ({e.reason}): pass offset=") from None
                refused = [Rejection(e.offset, e.reason)]
            except RejectedRecords as e:
                refused = e.rejections
            del self._batches[key]
            self._counts.written += len(batch) - len(refused)
            rejected.extend(refused)
        self._counts.filtered += self._skipped
        self._skipped = 0
        if rejected:
            raise RejectedRecords(rejected)

    def abort(self) -> None:
        self._batches.clear()
        self._skipped = 0

    def status(self) -> Status | None:
        counts, self._counts = self._counts, Status()
        return counts


# ---------------------------------------------------------------- files


class OutputFile:
    """An append-only output file kept exactly once with runtime snapshots.

    Opening it (from ``open``) applies the contract's rules: a probe touches
    nothing; with a snapshot the file is rolled back to the committed length
    (and must hold at least that much); on a first run the file must be
    missing or empty. ``{partition}`` and ``{lane}`` in the path name each
    instance's own file; a path without them is refused where instances
    would share it. Write at flush with :meth:`append`, return
    :meth:`snapshot` from the sink's ``snapshot`` and call :meth:`rollback`
    from its ``abort``. The file appears with the first bytes appended.
    """

    def __init__(self, path: str, context: Context) -> None:
        if context.lanes > 1 and "{lane}" not in path:
            raise Fatal(
                f"output path {path} has no {{lane}} placeholder but the sink runs {context.lanes} lanes, "
                "whose instances would write the same file"
            )
        if context.partition != 0 and "{partition}" not in path:
            raise Fatal(
                f"output path {path} has no {{partition}} placeholder but this instance serves partition "
                f"{context.partition}, so the partitions' instances would write the same file"
            )
        #: The file's path, placeholders filled in.
        self.path = path.replace("{partition}", str(context.partition)).replace("{lane}", str(context.lane))
        self.probe = context.probe
        committed = self._committed(context.snapshot)
        if self.probe:
            # Beside the live instance: no truncation, no check that could
            # race with its writes.
            length = committed or 0
        else:
            size = self._size()
            if committed is None:
                if size:
                    raise Fatal(
                        f"output {self.path} already holds {size:,} bytes this pipeline did not write; "
                        "remove it or choose another path"
                    )
                length = 0
            elif size is None:
                if committed:
                    raise Fatal(
                        f"output {self.path} is missing but {committed:,} bytes were committed: "
                        "it was deleted or moved outside sinkbox"
                    )
                length = 0
            elif size < committed:
                raise Fatal(
                    f"output {self.path} is {size:,} bytes but {committed:,} were committed: "
                    "it was truncated or replaced outside sinkbox"
                )
            else:
                if size > committed:
                    # Written by a flush whose checkpoint was not committed:
                    # those records are replayed.
                    self._truncate(committed)
                length = committed
        #: Bytes in the file as this sink wrote them (committed or not).
        self.length = length
        self._flushed = length

    def _committed(self, snapshot: bytes | None) -> int | None:
        """The length a snapshot names, or None when it names none for this
        path (no snapshot, or one taken for another path)."""
        if snapshot is None:
            return None
        try:
            state = json.loads(snapshot)
            length, path = state["len"], state["path"]
            if not isinstance(length, int) or length < 0 or not isinstance(path, str):
                raise ValueError(state)
        except (ValueError, KeyError, TypeError):
            raise Fatal(f"snapshot {bytes(snapshot[:100])!r} is not one an output file wrote") from None
        return length if path == self.path else None

    def _size(self) -> int | None:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return None

    def _truncate(self, length: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(length)
            f.flush()
            os.fsync(f.fileno())

    def append(self, data: bytes) -> None:
        """Appends ``data`` durably (written and synced), after checking the
        file still holds exactly what this sink wrote."""
        if self.probe:
            raise Fatal(f"a probe instance must not write its output {self.path}")
        if not data:
            return
        size = self._size()
        if size is None and self.length:
            raise Fatal(
                f"output {self.path} is missing but the sink had written {self.length:,} bytes to it: "
                "it was deleted or moved outside sinkbox"
            )
        if size is not None and size != self.length:
            raise Fatal(
                f"output {self.path} is {size:,} bytes but the sink wrote {self.length:,}: "
                "it was changed outside sinkbox"
            )
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if size is None:
            _sync_dir(os.path.dirname(self.path) or ".")
        self.length += len(data)

    def snapshot(self) -> bytes:
        """The snapshot to return from the sink's ``snapshot``: the file's
        length and path. Marks that length as flushed for :meth:`rollback`."""
        self._flushed = self.length
        return json.dumps({"len": self.length, "path": self.path}, separators=(",", ":")).encode()

    def rollback(self) -> None:
        """Truncates what was appended since the last :meth:`snapshot` (a
        flush that failed half way); call it from ``abort``."""
        if not self.probe and self.length > self._flushed:
            self._truncate(self._flushed)
            self.length = self._flushed


def _sync_dir(path: str) -> None:
    """Makes a new file's directory entry durable, where the platform can."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- logging


def _stderr_log(level: str, message: str, fields: list[tuple[str, str]]) -> None:
    extra = "".join(f" {k}={v}" for k, v in fields)
    print(f"[{level}] {message}{extra}", file=sys.stderr)


#: Where ``log`` goes outside a component (sinkbox_sdk.testing captures it).
_log_fallback: Callable[[str, str, list[tuple[str, str]]], None] = _stderr_log


def log(level: Level, message: str, **fields: object) -> None:
    """Logs to the host, attributed to this sink. ``level`` is one of
    ``"trace"``, ``"debug"``, ``"info"``, ``"warn"``, ``"error"``."""
    if level not in ("trace", "debug", "info", "warn", "error"):
        raise ValueError(f"unknown log level {level!r}")
    pairs = [(k, str(v)) for k, v in fields.items()]
    wit = _bindings()
    if wit is None:
        _log_fallback(level, str(message), pairs)
    else:
        wit.host.log(wit.types.Level[level.upper()], str(message), pairs)


# ---------------------------------------------------------------- the glue


def _normalize(error: BaseException, call: str) -> SinkError:
    """Maps any exception from a sink to the error the runtime gets:
    Backpressure, Retryable, RejectedRecords or Fatal."""
    if isinstance(error, (Backpressure, Retryable, Fatal, RejectedRecords)):
        if isinstance(error, RejectedRecords) and call not in ("add", "flush"):
            return Fatal(f"records rejected in {call}, where there are none: {error.rejections}")
        return error
    if isinstance(error, Rejected):
        if call in ("add", "flush") and error.offset is not None:
            return RejectedRecords([(error.offset, error.reason)])
        return Fatal(f"Rejected raised in {call} without naming a record ({error.reason}): pass offset=")
    if isinstance(error, SinkError):
        return Fatal(f"{type(error).__name__} raised in {call}: {error}")
    detail = "".join(traceback.format_exception(type(error), error, error.__traceback__)).strip()
    return Fatal(f"uncaught {type(error).__name__} in {call}: {error}\n{detail}")


class _Instance:
    """One sink instance as the contract sees it. Every method raises only
    a normalized :class:`SinkError`; the component export and
    :mod:`sinkbox_sdk.testing` both drive this class."""

    def __init__(self, cls: type[Sink]) -> None:
        self.cls = cls
        self.sink: Sink | None = None
        #: Set when abort failed: the instance can no longer be trusted.
        self.broken: str | None = None

    def config_schema(self) -> str | None:
        schema = self.cls.config_schema
        return None if schema is None else json.dumps(schema)

    def _live(self, call: str) -> Sink:
        if self.broken is not None:
            raise Fatal(f"{call} after a failed abort: {self.broken}")
        if self.sink is None:
            raise Fatal(f"{call} called before a successful open")
        return self.sink

    def open(self, config: str, context: Context) -> None:
        try:
            parsed = json.loads(config)
        except ValueError as e:
            raise Fatal(f"config is not JSON: {e}") from None
        try:
            sink = self.cls()
            sink.open(parsed, context)
        except BaseException as e:  # noqa: BLE001 - every error becomes a variant
            raise _normalize(e, "open") from None
        self.sink = sink

    def add(self, topic: str, partition: int, count: int, data: bytes) -> None:
        sink = self._live("add")
        if count == 0:
            return
        batch = Batch(topic, partition, decode(data, count, topic, partition))
        try:
            sink.add_batch(batch)
        except BaseException as e:  # noqa: BLE001
            raise _normalize(e, "add") from None

    def flush(self) -> bytes | None:
        """Flushes, then asks for the snapshot."""
        sink = self._live("flush")
        try:
            flush: Callable[[], object] = sink.flush
            returned = flush()
            if returned is not None:
                raise Fatal(f"flush returned {type(returned).__name__}; return the snapshot from snapshot()")
            snapshot = sink.snapshot()
        except BaseException as e:  # noqa: BLE001
            raise _normalize(e, "flush") from None
        if snapshot is None:
            return None
        if not isinstance(snapshot, (bytes, bytearray, memoryview)):
            raise Fatal(f"snapshot() returned {type(snapshot).__name__}; return bytes or None")
        snapshot = bytes(snapshot)
        if len(snapshot) > MAX_SNAPSHOT:
            raise Fatal(f"snapshot is {len(snapshot):,} bytes; the contract allows at most {MAX_SNAPSHOT:,}")
        return snapshot

    def status(self) -> Status | None:
        """The sink's counts; never raises (the export cannot fail)."""
        if self.sink is None or self.broken is not None:
            return None
        try:
            status = self.sink.status()
            if status is None:
                return None
            if not isinstance(status, Status):
                raise TypeError(f"status() returned {type(status).__name__}; return a Status or None")
            return status
        except BaseException as e:  # noqa: BLE001
            log("error", f"status failed: {type(e).__name__}: {e}")
            return None

    def abort(self) -> None:
        """Never raises; a failed abort makes every later call fatal."""
        if self.sink is None:
            return
        try:
            self.sink.abort()
        except BaseException as e:  # noqa: BLE001
            self.broken = f"{type(e).__name__}: {e}"
            log("error", f"abort failed: {self.broken}")

    def close(self) -> None:
        sink, self.sink = self.sink, None
        if sink is None:
            return
        try:
            sink.close()
        except BaseException as e:  # noqa: BLE001
            raise _normalize(e, "close") from None


class _Wit:
    """The generated bindings, present only inside a componentize-py build."""

    def __init__(self) -> None:
        from componentize_py_types import Err
        from wit_world.imports import host, types

        self.Err = Err
        self.host = host
        self.types = types


_wit: _Wit | None = None
_wit_missing = False


def _bindings() -> _Wit | None:
    global _wit, _wit_missing
    if _wit is None and not _wit_missing:
        try:
            _wit = _Wit()
        except ImportError:
            _wit_missing = True
    return _wit


def _lower(error: SinkError) -> Exception:
    """The component-model error for a normalized SinkError."""
    wit = _bindings()
    assert wit is not None, "called only from the component export"
    t = wit.types
    if isinstance(error, Backpressure):
        value: Any = t.SinkError_Backpressure(min(max(error.retry_after_ms, 0), _U32))
    elif isinstance(error, Retryable):
        value = t.SinkError_Retryable(str(error))
    elif isinstance(error, RejectedRecords):
        value = t.SinkError_Rejected([t.Rejection(o & _U64, r) for o, r in error.rejections])
    else:
        value = t.SinkError_Fatal(str(error))
    err: Exception = wit.Err(value)
    return err


def _count(value: int) -> int:
    return min(max(int(value), 0), _U64)


# The live instance. Module level: componentize-py does not keep state on
# the exported object between calls.
_current: _Instance | None = None


def export(cls: type[Sink]) -> type:
    """Turns a :class:`Sink` subclass into the class componentize-py
    exports; assign the result to ``Sink`` in your app module."""
    _bindings()  # Loaded during componentize-py's pre-initialization.

    def call(f: Callable[[], T]) -> T:
        try:
            return f()
        except SinkError as e:
            raise _lower(e) from None

    def current() -> _Instance:
        if _current is None:
            return _Instance(cls)  # Its calls fail with "before a successful open".
        return _current

    class Exported:
        sink_class: ClassVar[type[Sink]] = cls

        def config_schema(self) -> str | None:
            return _Instance(cls).config_schema()

        def open(self, config: str, context: Any) -> None:
            global _current
            instance = _Instance(cls)
            ctx = Context(
                pipeline=context.pipeline,
                sink=context.sink,
                topic=context.topic,
                partition=context.partition,
                lane=context.lane,
                lanes=context.lanes,
                worker_index=context.worker_index,
                worker_count=context.worker_count,
                snapshot=None if context.snapshot is None else bytes(context.snapshot),
                probe=bool(context.probe),
            )
            call(lambda: instance.open(config, ctx))
            _current = instance

        def add(self, batch: Any) -> None:
            instance = current()
            call(lambda: instance.add(batch.topic, batch.partition, batch.count, batch.data))

        def flush(self) -> bytes | None:
            return call(current().flush)

        def status(self) -> Any:
            status = current().status()
            if status is None:
                return None
            wit = _bindings()
            assert wit is not None
            custom = [(str(k), _count(v)) for k, v in status.custom.items()]
            return wit.types.SinkStatus(
                _count(status.written),
                _count(status.warnings),
                _count(status.filtered),
                _count(status.failures),
                custom,
            )

        def abort(self) -> None:
            current().abort()

        def close(self) -> None:
            global _current
            instance, _current = current(), None
            call(instance.close)

    Exported.__name__ = Exported.__qualname__ = "Sink"
    return Exported
