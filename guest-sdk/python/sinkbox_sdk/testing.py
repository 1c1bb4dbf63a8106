"""Run a sink under plain pytest, without componentize-py.

:class:`FakeHost` plays the runtime for one sink: it opens instances with a
:class:`~sinkbox_sdk.Context`, packs records into the contract's batch
encoding, makes the calls in contract order through the same glue a
component uses (so errors come out as the runtime sees them), commits the
snapshot each successful ``flush`` returns and hands it to the next
``open``::

    from sinkbox_sdk.testing import FakeHost

    def test_restart_rolls_back(tmp_path):
        host = FakeHost(CsvSink, {"path": str(tmp_path / "out.csv"), "columns": ["n"]})
        host.open()
        host.add([{"n": 0}, {"n": 1}])
        host.flush()                 # commits the snapshot
        host.add([{"n": 2}])
        host.crash()                 # no close: as if the process died
        host.open()                  # gets the committed snapshot
        host.replay()                # the records after the last commit
        host.flush()
        host.close()

Step methods raise what the runtime would get: :class:`~sinkbox_sdk.Backpressure`,
:class:`~sinkbox_sdk.Retryable` or :class:`~sinkbox_sdk.Fatal` (any other
exception of the sink arrives as ``Fatal`` with its traceback). Rejected
records are returned and collected in :attr:`FakeHost.dead_letters`.
:meth:`FakeHost.run` drives a whole input and reacts to errors as the
runtime does. A call the runtime never makes (``add`` before ``open``, a
``flush`` on a probe) raises :class:`ContractViolation`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sinkbox_sdk
from sinkbox_sdk import (
    NO_KEY,
    NO_TIMESTAMP,
    Backpressure,
    Context,
    Fatal,
    RejectedRecords,
    Rejection,
    Retryable,
    Sink,
    SinkError,
    Status,
    _Instance,
)

__all__ = ["ContractViolation", "FakeHost", "InvalidConfig", "Message", "encode"]


class ContractViolation(AssertionError):
    """A call the runtime never makes, or an answer it would refuse (a
    rejection naming a record the call did not carry)."""


class InvalidConfig(ValueError):
    """The config does not match the sink's ``config_schema``: the runtime
    refuses it before ``open``."""


@dataclass(frozen=True)
class Message:
    """A record to feed; the host gives it its offset."""

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int | None = None


#: What :meth:`FakeHost.add` accepts per record: a :class:`Message`, bytes,
#: a str (UTF-8), or anything else (encoded as JSON).
Value = Any


@dataclass(frozen=True)
class _Fed:
    offset: int
    message: Message


def _message(value: Value) -> Message:
    if isinstance(value, Message):
        return value
    if isinstance(value, (bytes, bytearray)):
        return Message(bytes(value))
    if isinstance(value, str):
        return Message(value.encode())
    return Message(json.dumps(value, separators=(",", ":")).encode())


def encode(records: Iterable[tuple[int, Message]]) -> tuple[bytes, int]:
    """Packs ``(offset, message)`` pairs in the contract's batch encoding;
    returns the buffer and the record count."""
    out = bytearray()
    count = 0
    for offset, m in records:
        key_len = NO_KEY if m.key is None else len(m.key)
        timestamp = NO_TIMESTAMP if m.timestamp is None else m.timestamp
        out += struct.pack("<QqIII", offset, timestamp, key_len, len(m.value), len(m.headers))
        if m.key is not None:
            out += m.key
        out += m.value
        for name, value in m.headers:
            raw = name.encode()
            out += struct.pack("<I", len(raw)) + raw + struct.pack("<I", len(value)) + value
        count += 1
    return bytes(out), count


class FakeHost:
    """The runtime, for one sink serving one topic partition and lane.

    ``sink`` is the :class:`~sinkbox_sdk.Sink` subclass or the class
    ``sinkbox_sdk.export`` returned; ``config`` is a JSON value (or a str,
    passed as is). The other arguments fill the :class:`~sinkbox_sdk.Context`.
    """

    def __init__(
        self,
        sink: type,
        config: Any = None,
        *,
        topic: str = "topic",
        partition: int = 0,
        lane: int = 0,
        lanes: int = 1,
        pipeline: str = "test",
        sink_name: str = "sink",
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> None:
        self.sink_class: type[Sink] = getattr(sink, "sink_class", sink)
        if not (isinstance(self.sink_class, type) and issubclass(self.sink_class, Sink)):
            raise TypeError(f"{sink!r} is neither a sinkbox_sdk.Sink subclass nor an exported one")
        self.config = config
        self.topic = topic
        self.partition = partition
        self.context = Context(
            pipeline=pipeline,
            sink=sink_name,
            topic=topic,
            partition=partition,
            lane=lane,
            lanes=lanes,
            worker_index=worker_index,
            worker_count=worker_count,
        )
        #: The snapshot of the last committed checkpoint.
        self.snapshot: bytes | None = None
        #: Every record rejected so far, as the dead-letter queue holds them.
        self.dead_letters: list[Rejection] = []
        #: The sum of the sink's status reports.
        self.status = Status()
        #: Log lines: (level, message, fields).
        self.logs: list[tuple[str, str, list[tuple[str, str]]]] = []
        #: How many instances were opened successfully.
        self.opened = 0
        self._instance: _Instance | None = None
        # Fed and not committed; of those, delivered to the live instance
        # since its last flush or abort; and flushed but not committed.
        self._uncommitted: list[_Fed] = []
        self._unflushed: list[_Fed] = []
        self._flushed: set[int] = set()
        self._next_offset = 0

    # -- what the runtime does -------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether a live instance is open."""
        return self._instance is not None

    @property
    def uncommitted(self) -> list[tuple[int, Message]]:
        """The records fed since the last committed checkpoint: what a
        replay sends again."""
        return [(f.offset, f.message) for f in self._uncommitted]

    def config_schema(self) -> Any | None:
        """The sink's schema, as the runtime reads it (parsed)."""
        text = _Instance(self.sink_class).config_schema()
        return None if text is None else json.loads(text)

    def open(self, config: Any = None) -> None:
        """Opens a fresh instance with the committed snapshot. On a first
        run (no snapshot) the runtime follows with an empty ``flush`` and
        commits its snapshot, and so does this."""
        if self._instance is not None:
            raise ContractViolation("an instance is open already: close or crash it first")
        config = self.config if config is None else config
        text = self._config_text(config)
        instance = _Instance(self.sink_class)
        self._call(instance.open, text, self._context(probe=False))
        self._instance = instance
        self.opened += 1
        if self.snapshot is None:
            # Commits an initial snapshot, not the records fed so far.
            self.snapshot = self._call(instance.flush)
            status = self._call(instance.status)
            if status is not None:
                self._sum(status)

    def add(self, values: Iterable[Value]) -> list[Rejection]:
        """Feeds records (offsets continue from the last one fed) in one
        batch; returns the rejected ones."""
        fed = [_Fed(self._next_offset + i, _message(v)) for i, v in enumerate(values)]
        if fed:
            self._next_offset = fed[-1].offset + 1
        self._uncommitted.extend(fed)
        return self._add(fed)

    def replay(self) -> list[Rejection]:
        """Sends the records that were not flushed since the last commit
        again, as the runtime does after ``abort`` or on a fresh instance."""
        return self._add([f for f in self._uncommitted if f.offset not in self._flushed])

    def flush(self, commit: bool = True) -> list[Rejection]:
        """Flushes; on success sums the sink's status and commits the
        checkpoint: the records fed so far and the snapshot the flush
        returned. ``commit=False`` leaves the checkpoint uncommitted, as when
        another instance of the pipeline failed or the process died before
        the commit. Returns the records the flush rejected (the others count
        as flushed; no snapshot comes with a rejection, so the previous one
        stays)."""
        instance = self._live("flush")
        carried = {f.offset for f in self._unflushed}
        try:
            snapshot = self._call(instance.flush)
        except RejectedRecords as e:
            rejected = self._check_rejections(e, carried, "flush")
            self._flushed.update(carried)
            self._unflushed = []
            if commit:
                self._commit(self.snapshot)
            return rejected
        self._flushed.update(carried)
        self._unflushed = []
        if commit:
            self._commit(snapshot)
        status = self._call(instance.status)
        if status is not None:
            self._sum(status)
        return []

    def abort(self) -> None:
        """Calls ``abort``; what it dropped is then sent again with :meth:`replay`."""
        instance = self._live("abort")
        self._call(instance.abort)
        self._unflushed = []

    def close(self) -> None:
        """Closes the instance; it is dropped even if ``close`` fails."""
        instance = self._live("close")
        self._drop()
        self._call(instance.close)

    def crash(self) -> None:
        """Drops the instance without calling anything (a killed process,
        a trap, a deadline)."""
        self._drop()

    def restart(self) -> None:
        """A fresh instance after a crash: :meth:`crash`, :meth:`open`, :meth:`replay`."""
        self.crash()
        self.open()
        self.replay()

    def probe(self, values: Sequence[tuple[int, Message]] | None = None) -> SinkError | None:
        """Runs a probe instance beside the live one, as the runtime's
        bisection does: ``open`` (with ``probe = true`` and the committed
        snapshot), ``add``, ``abort``, ``close``. ``values`` are
        ``(offset, message)`` pairs, by default the uncommitted records.
        Returns the error the probe met, or None."""
        records = self.uncommitted if values is None else list(values)
        instance = _Instance(self.sink_class)
        try:
            self._call(instance.open, self._config_text(self.config), self._context(probe=True))
        except SinkError as e:
            return e
        try:
            data, count = encode(records)
            self._call(instance.add, self.topic, self.partition, count, data)
        except RejectedRecords:
            pass
        except SinkError as e:
            return e
        self._call(instance.abort)
        try:
            self._call(instance.close)
        except SinkError as e:
            return e
        return None

    def run(
        self,
        values: Iterable[Value],
        *,
        batch_size: int = 100,
        batches_per_checkpoint: int = 1,
        attempts: int = 3,
        close: bool = True,
    ) -> None:
        """Feeds ``values`` as the runtime runs a pipeline: opens if needed,
        adds batches of ``batch_size``, flushes every
        ``batches_per_checkpoint`` batches and at the end, then closes.
        Backpressure aborts and replays on the same instance; ``retryable``
        and ``fatal`` replace the instance (a fresh ``open`` gets the
        committed snapshot) and replay. After ``attempts`` failures in a row
        (or 1000 backpressures) the error is raised."""
        pending = [_message(v) for v in values]
        failures = backpressures = since_flush = 0
        replay = False
        while True:
            try:
                if self._instance is None:
                    self.open()
                    replay = bool(self._uncommitted)
                if replay:
                    replay = False
                    self.replay()
                    since_flush = 1
                elif pending and since_flush < batches_per_checkpoint:
                    chunk, pending = pending[:batch_size], pending[batch_size:]
                    self.add(chunk)
                    since_flush += 1
                elif since_flush or self._uncommitted:
                    self.flush()
                    since_flush = failures = 0
                else:
                    break
            except Backpressure:
                backpressures += 1
                if backpressures >= 1000:
                    raise
                self.abort()
                replay = True
            except (Retryable, Fatal):
                failures += 1
                if failures >= attempts:
                    raise
                self.crash()
        if close:
            self.close()

    # -- inside ----------------------------------------------------------

    def _context(self, probe: bool) -> Context:
        ctx = self.context
        return Context(
            pipeline=ctx.pipeline,
            sink=ctx.sink,
            topic=ctx.topic,
            partition=ctx.partition,
            lane=ctx.lane,
            lanes=ctx.lanes,
            worker_index=ctx.worker_index,
            worker_count=ctx.worker_count,
            snapshot=self.snapshot,
            probe=probe,
        )

    def _config_text(self, config: Any) -> str:
        if isinstance(config, str):
            return config
        schema = self.sink_class.config_schema
        if schema is not None:
            try:
                import jsonschema
            except ImportError:  # Optional: the runtime's check is what counts.
                jsonschema = None
            if jsonschema is not None:
                try:
                    jsonschema.validate(config, schema)
                except jsonschema.ValidationError as e:
                    raise InvalidConfig(f"config does not match the sink's schema: {e.message}") from None
        return json.dumps(config)

    def _live(self, call: str) -> _Instance:
        if self._instance is None:
            raise ContractViolation(f"{call} without an open instance")
        return self._instance

    def _add(self, fed: list[_Fed]) -> list[Rejection]:
        instance = self._live("add")
        if not fed:
            return []
        data, count = encode((f.offset, f.message) for f in fed)
        self._unflushed.extend(fed)
        try:
            self._call(instance.add, self.topic, self.partition, count, data)
        except RejectedRecords as e:
            return self._check_rejections(e, {f.offset for f in fed}, "add")
        return []

    def _check_rejections(self, error: RejectedRecords, carried: set[int], call: str) -> list[Rejection]:
        for r in error.rejections:
            if r.offset not in carried:
                raise ContractViolation(f"{call} rejected offset {r.offset}, which it was not given")
        self.dead_letters.extend(error.rejections)
        return list(error.rejections)

    def _commit(self, snapshot: bytes | None) -> None:
        self.snapshot = snapshot
        self._uncommitted = [f for f in self._uncommitted if f.offset not in self._flushed]
        self._flushed = set()

    def _drop(self) -> None:
        self._instance = None
        self._unflushed = []
        self._flushed = set()

    def _sum(self, status: Status) -> None:
        total = self.status
        total.written += status.written
        total.warnings += status.warnings
        total.filtered += status.filtered
        total.failures += status.failures
        for name, n in status.custom.items():
            total.custom[name] = total.custom.get(name, 0) + n

    def _call(self, f: Any, *args: Any) -> Any:
        """Calls into the instance with the host's log attached; a fatal or
        retryable error drops the instance, as the runtime does."""
        previous = sinkbox_sdk._log_fallback
        sinkbox_sdk._log_fallback = lambda level, message, fields: self.logs.append((level, message, fields))
        try:
            return f(*args)
        except (Retryable, Fatal):
            if self._instance is not None and getattr(f, "__self__", None) is self._instance:
                self._drop()
            raise
        finally:
            sinkbox_sdk._log_fallback = previous
