// Write Sinkbox sinks in JavaScript (contract sinkbox:sink@0.2.0).
//
// Subclass `BatchingSink` (or `Sink`), then export it from your entry module:
//
//     import { BatchingSink, OutputFile, exportSink } from './sinkbox-sdk.js';
//
//     class Upper extends BatchingSink {
//       open(config, context) {
//         this.out = new OutputFile(config.path, context);
//       }
//       prepare(record) {
//         // At add time: a value that is not UTF-8 is dead-lettered at once.
//         return record.text().toUpperCase() + '\n';
//       }
//       write(batch) {
//         this.out.append(batch.items.join(''));
//       }
//       snapshot() {
//         return this.out.snapshot();
//       }
//       abort() {
//         super.abort();
//         this.out.rollback();
//       }
//     }
//
//     export const sink = exportSink(Upper);
//
// Build with jco's QuickJS backend against the `sinkbox:sink/sink-world-files`
// world (see README.md). Errors: throw `Backpressure`, `Retryable`,
// `Rejected` (naming the record), `RejectedRecords` or `Fatal`; any other
// exception is reported as `fatal` with its message and stack, never as a
// trap.
//
// The QuickJS backend passes WIT 64-bit integers as Numbers and traps on a
// BigInt, so everything this file hands the host is a Number; offsets read
// from a batch are BigInts, exact over the whole u64 range.

import { log as hostLog } from 'sinkbox:sink/host@0.2.0';
import preopens from 'wasi:filesystem/preopens@0.2.12';

const NO_KEY = 0xffffffff;
const RECORD_HEADER = 28;

/** Largest snapshot the runtime accepts from `flush` (64 KiB). */
export const MAX_SNAPSHOT = 64 * 1024;

// ---------------------------------------------------------------------------
// Errors: one class per `sink-error` case.

/** The destination is overloaded: the runtime aborts, waits, replays. */
export class Backpressure extends Error {
  /** @param {number} retryAfterMs how long the runtime should wait */
  constructor(retryAfterMs, message) {
    super(message ?? `backpressure, retry after ${retryAfterMs} ms`);
    this.name = 'Backpressure';
    this.retryAfterMs = retryAfterMs;
  }
}

/** A transient failure: the runtime drops the instance, backs off, replays. */
export class Retryable extends Error {
  constructor(message) {
    super(message);
    this.name = 'Retryable';
  }
}

/**
 * One record can never be written: it goes to the dead-letter queue with
 * `reason`. Name the record (or its offset) unless you throw from `add(record)`,
 * where the SDK knows it.
 */
export class Rejected extends Error {
  constructor(reason, record) {
    super(reason);
    this.name = 'Rejected';
    /** The record's offset (a BigInt), or undefined when not named. */
    this.offset = offsetOf(record);
  }
}

/**
 * Several records can never be written. `rejections` holds `Rejected` errors
 * that name their record, `[offset, reason]` pairs or `{offset, reason}`
 * objects.
 */
export class RejectedRecords extends Error {
  constructor(rejections) {
    const list = Array.from(rejections, toRejection);
    super(`${list.length} records rejected`);
    this.name = 'RejectedRecords';
    /** `{offset: bigint, reason: string}` per record. */
    this.rejections = list;
  }
}

/** The instance is broken: the runtime replaces it and replays. */
export class Fatal extends Error {
  constructor(message) {
    super(message);
    this.name = 'Fatal';
  }
}

function offsetOf(record) {
  if (record === undefined || record === null) return undefined;
  if (typeof record === 'bigint') return record;
  if (typeof record === 'number') return BigInt(record);
  if (typeof record === 'object' && 'offset' in record) return BigInt(record.offset);
  throw new TypeError('Rejected names a record by the record or its offset');
}

function toRejection(item) {
  if (item instanceof Rejected) {
    if (item.offset === undefined) throw new TypeError(`a rejection in RejectedRecords names no record: ${item.message}`);
    return { offset: item.offset, reason: item.message };
  }
  if (Array.isArray(item)) return { offset: BigInt(item[0]), reason: String(item[1]) };
  return { offset: BigInt(item.offset), reason: String(item.reason) };
}

// ---------------------------------------------------------------------------
// UTF-8 by hand: QuickJS has no TextEncoder/TextDecoder.

function fromCodes(codes) {
  let text = '';
  for (let i = 0; i < codes.length; i += 8192) text += String.fromCharCode.apply(null, codes.slice(i, i + 8192));
  return text;
}

/**
 * Decodes UTF-8, refusing malformed input (overlong forms, surrogates, code
 * points past U+10FFFF, cut sequences) with a TypeError naming the byte.
 */
export function utf8Decode(bytes) {
  const n = bytes.length;
  let i = 0;
  while (i < n && bytes[i] < 0x80) i++;
  if (i === n) return fromCodes(bytes);
  let text = i > 0 ? fromCodes(bytes.subarray(0, i)) : '';
  let units = [];
  while (i < n) {
    const b = bytes[i];
    if (b < 0x80) {
      units.push(b);
      i += 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
      const c1 = bytes[i + 1];
      if ((c1 & 0xc0) !== 0x80) break;
      units.push(((b & 0x1f) << 6) | (c1 & 0x3f));
      i += 2;
    } else if (b >= 0xe0 && b <= 0xef) {
      const c1 = bytes[i + 1];
      const c2 = bytes[i + 2];
      // E0 needs A0..BF (no overlong form), ED needs 80..9F (no surrogate).
      if (!(c1 >= (b === 0xe0 ? 0xa0 : 0x80) && c1 <= (b === 0xed ? 0x9f : 0xbf))) break;
      if ((c2 & 0xc0) !== 0x80) break;
      units.push(((b & 0x0f) << 12) | ((c1 & 0x3f) << 6) | (c2 & 0x3f));
      i += 3;
    } else if (b >= 0xf0 && b <= 0xf4) {
      const c1 = bytes[i + 1];
      const c2 = bytes[i + 2];
      const c3 = bytes[i + 3];
      // F0 needs 90..BF (no overlong form), F4 needs 80..8F (at most U+10FFFF).
      if (!(c1 >= (b === 0xf0 ? 0x90 : 0x80) && c1 <= (b === 0xf4 ? 0x8f : 0xbf))) break;
      if ((c2 & 0xc0) !== 0x80 || (c3 & 0xc0) !== 0x80) break;
      const cp = (((b & 0x07) << 18) | ((c1 & 0x3f) << 12) | ((c2 & 0x3f) << 6) | (c3 & 0x3f)) - 0x10000;
      units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      i += 4;
    } else {
      break;
    }
    if (units.length >= 8192) {
      text += String.fromCharCode.apply(null, units);
      units = [];
    }
  }
  if (i < n) throw new TypeError(`invalid UTF-8 at byte ${i}`);
  return text + fromCodes(units);
}

/** Encodes text as UTF-8; a lone surrogate becomes U+FFFD, as TextEncoder does. */
export function utf8Encode(text) {
  text = String(text);
  const n = text.length;
  let size = 0;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) size += 1;
    else if (c < 0x800) size += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < n && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      size += 4;
      i++;
    } else size += 3;
  }
  const out = new Uint8Array(size);
  if (size === n) {
    for (let i = 0; i < n; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  let at = 0;
  for (let i = 0; i < n; i++) {
    let c = text.charCodeAt(i);
    if (c < 0x80) {
      out[at++] = c;
    } else if (c < 0x800) {
      out[at++] = 0xc0 | (c >> 6);
      out[at++] = 0x80 | (c & 0x3f);
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < n && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      c = 0x10000 + ((c - 0xd800) << 10) + (text.charCodeAt(++i) - 0xdc00);
      out[at++] = 0xf0 | (c >> 18);
      out[at++] = 0x80 | ((c >> 12) & 0x3f);
      out[at++] = 0x80 | ((c >> 6) & 0x3f);
      out[at++] = 0x80 | (c & 0x3f);
    } else {
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      out[at++] = 0xe0 | (c >> 12);
      out[at++] = 0x80 | ((c >> 6) & 0x3f);
      out[at++] = 0x80 | (c & 0x3f);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Records and batches.

/** One record of a batch. */
/** The header a source sets on a record whose value was null (a Kafka tombstone). */
export const TOMBSTONE_HEADER = "sinkbox.tombstone";

export class Record {
  constructor(batch, offsetLow, offsetHigh, timestamp, key, value, data, headersAt, headerCount) {
    this.batch = batch;
    this._low = offsetLow;
    this._high = offsetHigh;
    this._offset = undefined;
    /** Milliseconds since the Unix epoch, or null. */
    this.timestamp = timestamp;
    /** Uint8Array, or null when the record has no key. */
    this.key = key;
    /** Uint8Array. */
    this.value = value;
    this._data = data;
    this._headersAt = headersAt;
    this._headerCount = headerCount;
    this._headers = undefined;
  }

  /** The topic the record comes from. */
  get topic() {
    return this.batch.topic;
  }

  /** The partition within the topic. */
  get partition() {
    return this.batch.partition;
  }

  /** Position of the record in its partition, a BigInt. */
  get offset() {
    if (this._offset === undefined) {
      this._offset = this._high === 0 ? BigInt(this._low) : (BigInt(this._high) << 32n) | BigInt(this._low);
    }
    return this._offset;
  }

  /**
   * `[name, value]` pairs, value a Uint8Array. A name that is not UTF-8
   * rejects the record.
   */
  get headers() {
    if (this._headers === undefined) {
      const data = this._data;
      const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
      const headers = [];
      let pos = this._headersAt;
      for (let h = 0; h < this._headerCount; h++) {
        const nameLen = view.getUint32(pos, true);
        const nameBytes = data.subarray(pos + 4, pos + 4 + nameLen);
        pos += 4 + nameLen;
        const len = view.getUint32(pos, true);
        let name;
        try {
          name = utf8Decode(nameBytes);
        } catch (e) {
          throw new Rejected(`header name is not UTF-8: ${e.message}`, this);
        }
        headers.push([name, data.subarray(pos + 4, pos + 4 + len)]);
        pos += 4 + len;
      }
      this._headers = headers;
    }
    return this._headers;
  }

  /** The value of the first header called `name`, or undefined. */
  header(name) {
    for (const [n, v] of this.headers) if (n === name) return v;
    return undefined;
  }

  /** Whether the source record had no value (a Kafka delete marker): the
   * value is empty and the header `sinkbox.tombstone` is set. */
  get tombstone() {
    return this.header(TOMBSTONE_HEADER) !== undefined;
  }

  /** The value as text; malformed UTF-8 rejects the record. */
  text() {
    try {
      return utf8Decode(this.value);
    } catch (e) {
      throw new Rejected(`value is not UTF-8: ${e.message}`, this);
    }
  }

  /** The key as text, or null; malformed UTF-8 rejects the record. */
  keyText() {
    if (this.key === null) return null;
    try {
      return utf8Decode(this.key);
    } catch (e) {
      throw new Rejected(`key is not UTF-8: ${e.message}`, this);
    }
  }

  /** The value parsed as JSON; a value that is not JSON rejects the record. */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Rejected(`value is not JSON: ${e.message}`, this);
    }
  }
}

/** Records of one topic partition, in offset order. */
export class Batch {
  constructor(topic, partition, records) {
    /** The topic the records come from (for a file source, its path). */
    this.topic = topic;
    /** The partition within the topic. */
    this.partition = partition;
    /** The records, an Array of `Record`. */
    this.records = records;
  }

  /** How many records the batch holds. */
  get length() {
    return this.records.length;
  }

  /** Offset of the first record (a BigInt), or undefined when empty. */
  get firstOffset() {
    return this.records.length ? this.records[0].offset : undefined;
  }

  /** Offset of the last record (a BigInt), or undefined when empty. */
  get lastOffset() {
    return this.records.length ? this.records[this.records.length - 1].offset : undefined;
  }

  [Symbol.iterator]() {
    return this.records[Symbol.iterator]();
  }
}

/**
 * Decodes the packed batch encoding (wit/types.wit `batch`) into a `Batch`.
 * A buffer that does not hold exactly `count` records throws `Fatal`.
 */
export function decodeBatch(topic, partition, count, data) {
  if (!(data instanceof Uint8Array)) data = Uint8Array.from(data);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const end = data.byteLength;
  const batch = new Batch(topic, partition, []);
  const records = batch.records;
  const malformed = (n, what) => new Fatal(`malformed record batch from ${topic}[${partition}]: record ${n} ${what}`);
  let pos = 0;
  for (let n = 0; n < count; n++) {
    if (pos + RECORD_HEADER > end) throw malformed(n, 'is cut short');
    // 64-bit fields as two halves: BigInt arithmetic is slow in QuickJS, so
    // the offset becomes a BigInt only when asked for.
    const low = view.getUint32(pos, true);
    const high = view.getUint32(pos + 4, true);
    const tsLow = view.getUint32(pos + 8, true);
    const tsHigh = view.getInt32(pos + 12, true);
    const noTimestamp = tsHigh === -2147483648 && tsLow === 0;
    const keyLen = view.getUint32(pos + 16, true);
    const valueLen = view.getUint32(pos + 20, true);
    const headerCount = view.getUint32(pos + 24, true);
    pos += RECORD_HEADER;
    let key = null;
    if (keyLen !== NO_KEY) {
      if (pos + keyLen > end) throw malformed(n, 'has a key past the end');
      key = data.subarray(pos, pos + keyLen);
      pos += keyLen;
    }
    if (pos + valueLen > end) throw malformed(n, 'has a value past the end');
    const value = data.subarray(pos, pos + valueLen);
    pos += valueLen;
    const headersAt = pos;
    for (let h = 0; h < headerCount; h++) {
      if (pos + 4 > end) throw malformed(n, 'has a header past the end');
      pos += 4 + view.getUint32(pos, true);
      if (pos + 4 > end) throw malformed(n, 'has a header past the end');
      pos += 4 + view.getUint32(pos, true);
      if (pos > end) throw malformed(n, 'has a header past the end');
    }
    const timestamp = noTimestamp ? null : tsHigh * 4294967296 + tsLow;
    records.push(new Record(batch, low, high, timestamp, key, value, data, headersAt, headerCount));
  }
  if (pos !== end) throw new Fatal(`malformed record batch from ${topic}[${partition}]: ${end - pos} bytes left over`);
  return batch;
}

// ---------------------------------------------------------------------------
// What an instance serves.

/** Encodes `value` as a JSON snapshot (a Uint8Array). */
export function jsonSnapshot(value) {
  return utf8Encode(JSON.stringify(value));
}

/** What an instance serves, given to `open`. */
export class Context {
  constructor(fields) {
    /** The pipeline's name. */
    this.pipeline = String(fields.pipeline ?? '');
    /** The sink's name in the pipeline. */
    this.sink = String(fields.sink ?? '');
    /** The topic served, or '' when the first batch will name it. */
    this.topic = String(fields.topic ?? '');
    /** The partition served. */
    this.partition = fields.partition ?? 0;
    /** The lane within the partition, 0 <= lane < lanes. */
    this.lane = fields.lane ?? 0;
    /** How many lanes the partition is spread over. */
    this.lanes = fields.lanes ?? 1;
    /** This instance's index among the sink's instances in this process. */
    this.workerIndex = fields.workerIndex ?? 0;
    /** How many instances of the sink this process runs. */
    this.workerCount = fields.workerCount ?? 1;
    /** The last committed snapshot (a Uint8Array), or undefined. */
    this.snapshot = fields.snapshot == null ? undefined : Uint8Array.from(fields.snapshot);
    /** A probe instance: make nothing durable or visible, touch nothing. */
    this.probe = Boolean(fields.probe);
  }

  /** The snapshot parsed as JSON, or undefined when there is none. */
  snapshotJson() {
    if (this.snapshot === undefined) return undefined;
    try {
      return JSON.parse(utf8Decode(this.snapshot));
    } catch (e) {
      throw new Fatal(`the committed snapshot of sink "${this.sink}" is not JSON: ${e.message}`);
    }
  }

  /**
   * Fills `{partition}`, `{lane}`, `{pipeline}` and `{sink}` in `template`
   * (an output path, say). Any other `{name}` throws `Fatal`.
   */
  expand(template) {
    return String(template).replace(/\{([^{}]*)\}/g, (whole, name) => {
      switch (name) {
        case 'partition':
          return String(this.partition);
        case 'lane':
          return String(this.lane);
        case 'pipeline':
          return this.pipeline;
        case 'sink':
          return this.sink;
        default:
          throw new Fatal(`unknown placeholder ${whole} in "${template}" (known: {partition}, {lane}, {pipeline}, {sink})`);
      }
    });
  }
}

// ---------------------------------------------------------------------------
// Logging.

/** Logs to the host: level is 'trace', 'debug', 'info', 'warn' or 'error'. */
export function log(level, message, fields = {}) {
  hostLog(level, String(message), Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

// ---------------------------------------------------------------------------
// Sinks.

/**
 * Base class of a JavaScript sink. Override `open` and `add` (or `addBatch`),
 * and `flush`, `snapshot`, `status`, `abort`, `close` as needed.
 *
 * The calls, in contract order: `open(config, context)` once, then `add`
 * (through `addBatch`), `flush` (then `snapshot` when flush returned nothing,
 * then `status`) and `abort` in any order, then `close`.
 */
export class Sink {
  /** JSON Schema (an object) of the config, or null. */
  static configSchema = null;

  /**
   * Prepare to receive records. `config` is the parsed JSON config,
   * `context` a `Context` (also at `this.context`).
   */
  open(config, context) {}

  /** Take one record. Throw `Rejected` to dead-letter it. */
  add(record) {
    throw new Fatal(`${this.constructor.name} overrides neither add(record) nor addBatch(batch); or subclass BatchingSink`);
  }

  /**
   * Take a batch: calls `add` per record and dead-letters the records whose
   * `add` threw `Rejected`; any other error stops the batch.
   */
  addBatch(batch) {
    let rejected = null;
    for (const record of batch.records) {
      try {
        this.add(record);
      } catch (e) {
        if (!(e instanceof Rejected)) throw e;
        (rejected ??= []).push({ offset: e.offset ?? record.offset, reason: e.message });
      }
    }
    if (rejected !== null) throw new RejectedRecords(rejected);
  }

  /**
   * Make everything taken since the last flush durable. May return the
   * snapshot (a Uint8Array of at most 64 KiB) to hand a later `open`;
   * returning nothing asks `snapshot()` for it.
   */
  flush() {}

  /** The snapshot to commit with this flush, or nothing; called after a `flush` that returned none. */
  snapshot() {}

  /**
   * Counts since the previous call: `{written, warnings, filtered, failures,
   * custom}` (each optional; `custom` an object or [name, count] pairs), or
   * nothing. Called after each successful flush.
   */
  status() {}

  /** Drop everything taken since the last flush; it will be replayed. */
  abort() {}

  /** Release resources. */
  close() {}
}

/**
 * What `BatchingSink.write` gets: what was buffered for one topic partition
 * since the last flush, never empty.
 */
export class SinkBatch {
  constructor(topic, partition) {
    /** The topic the records come from. */
    this.topic = topic;
    /** The partition within the topic. */
    this.partition = partition;
    /** What `prepare` returned for each record kept: the `Record`s unless `prepare` is overridden. */
    this.items = [];
    /** The offset (a BigInt) of each item. */
    this.offsets = [];
  }

  /** How many items the batch holds. */
  get length() {
    return this.items.length;
  }

  /** Offset of the first item, a BigInt. */
  get firstOffset() {
    return this.offsets[0];
  }

  /** Offset of the last item, a BigInt. */
  get lastOffset() {
    return this.offsets[this.offsets.length - 1];
  }

  [Symbol.iterator]() {
    return this.items[Symbol.iterator]();
  }
}

/**
 * A sink that buffers records per (topic, partition) and writes them at
 * `flush`, Quix Streams' BatchingSink model: a destination sink overrides
 * `open` and `write`. Optionally `prepare` turns each record into what is
 * buffered (and rejects or skips it at `add` time). `abort` drops the
 * buffers; `status` reports how many records were written and skipped.
 * Override `snapshot` (and extend `abort`) for exactly-once output, e.g.
 * with `OutputFile`.
 */
export class BatchingSink extends Sink {
  constructor() {
    super();
    this._batches = new Map();
    this._skipped = 0;
    this._written = 0;
    this._filtered = 0;
  }

  /**
   * Called at `add` for each record: returns what to buffer for it (the
   * record itself by default), undefined or null to skip it (counted as
   * filtered), or throws `Rejected` to dead-letter it. Reject here rather
   * than in `write`: a rejection from `flush` returns no snapshot.
   */
  prepare(record) {
    return record;
  }

  /**
   * Writes one batch (a `SinkBatch`) durably; called at `flush` for every
   * topic partition with buffered records, oldest first. Throw `Rejected`
   * naming a record (or `RejectedRecords`) for records the destination
   * refused: the others count as written.
   */
  write(batch) {
    throw new Fatal(`${this.constructor.name} does not override write(batch)`);
  }

  addBatch(batch) {
    if (this.add !== BatchingSink.prototype.add) {
      // The author's add decides, per record (and may call super.add).
      super.addBatch(batch);
      return;
    }
    this._buffer(batch.topic, batch.partition, batch.records);
  }

  add(record) {
    this._buffer(record.topic, record.partition, [record]);
  }

  _buffer(topic, partition, records) {
    const key = `${partition}\u0000${topic}`;
    let pending = this._batches.get(key);
    if (pending === undefined) {
      pending = new SinkBatch(topic, partition);
      this._batches.set(key, pending);
    }
    let rejected = null;
    for (const record of records) {
      let item;
      try {
        item = this.prepare(record);
      } catch (e) {
        if (!(e instanceof Rejected)) throw e;
        (rejected ??= []).push({ offset: e.offset ?? record.offset, reason: e.message });
        continue;
      }
      if (item === undefined || item === null) {
        this._skipped++;
      } else {
        pending.items.push(item);
        pending.offsets.push(record.offset);
      }
    }
    if (pending.items.length === 0) this._batches.delete(key);
    if (rejected !== null) throw new RejectedRecords(rejected);
  }

  /** How many items are buffered. */
  get buffered() {
    let n = 0;
    for (const batch of this._batches.values()) n += batch.items.length;
    return n;
  }

  flush() {
    let rejected = null;
    for (const [key, batch] of [...this._batches]) {
      let refused = [];
      try {
        this.write(batch);
      } catch (e) {
        if (e instanceof RejectedRecords) refused = e.rejections;
        else if (e instanceof Rejected && e.offset !== undefined) refused = [{ offset: e.offset, reason: e.message }];
        else if (e instanceof Rejected) throw new Fatal(`write rejected a record without naming it (new Rejected(reason, record)): ${e.message}`);
        else throw e;
      }
      this._batches.delete(key);
      this._written += batch.items.length - refused.length;
      if (refused.length) (rejected ??= []).push(...refused);
    }
    this._filtered += this._skipped;
    this._skipped = 0;
    if (rejected !== null) throw new RejectedRecords(rejected);
  }

  abort() {
    this._batches.clear();
    this._skipped = 0;
    // Counts of a flush that failed half way: its records are replayed.
    this._written = 0;
  }

  status() {
    const status = { written: this._written, filtered: this._filtered };
    this._written = 0;
    this._filtered = 0;
    return status;
  }
}

// ---------------------------------------------------------------------------
// The export glue: maps the WIT functions onto a Sink and thrown errors onto
// `sink-error`. A thrown value must match the variant shape exactly or the
// QuickJS guest aborts, so every error goes through `lowerError`.

const MAX_EXACT_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);
const u32 = (n) => Math.max(0, Math.min(0xffffffff, Math.trunc(Number(n)) || 0));
const u64 = (n) => Math.max(0, Math.trunc(Number(n)) || 0);

function describe(e) {
  if (e instanceof Error) {
    const stack = e.stack ? `\n${e.stack}` : '';
    return `uncaught ${e.name || e.constructor.name}: ${e.message}${stack}`.trim();
  }
  return `uncaught ${typeof e}: ${String(e)}`;
}

/** Maps a thrown value to the contract's `sink-error`, shaped as jco expects. */
export function lowerError(e, call) {
  if (e instanceof Backpressure) return { tag: 'backpressure', val: u32(e.retryAfterMs) };
  if (e instanceof Retryable) return { tag: 'retryable', val: String(e.message) };
  if (e instanceof RejectedRecords || (e instanceof Rejected && e.offset !== undefined)) {
    const list = e instanceof Rejected ? [{ offset: e.offset, reason: e.message }] : e.rejections;
    if (call === 'open' || call === 'close') return { tag: 'fatal', val: `records rejected in ${call}: ${e.message}` };
    if (list.length === 0) return { tag: 'fatal', val: `RejectedRecords with no records thrown from ${call}` };
    // The QuickJS backend carries a u64 as a Number, exact up to 2^53: past
    // that a rejection would name another record.
    const inexact = list.find((r) => BigInt(r.offset) > MAX_EXACT_OFFSET);
    if (inexact !== undefined) {
      return { tag: 'fatal', val: `cannot reject the record at offset ${inexact.offset}: the QuickJS backend passes offsets past 2^53 inexactly (${inexact.reason})` };
    }
    return { tag: 'rejected', val: list.map((r) => ({ offset: Number(r.offset), reason: String(r.reason) })) };
  }
  if (e instanceof Rejected) {
    return { tag: 'fatal', val: `Rejected thrown from ${call} without naming its record (new Rejected(reason, record)): ${e.message}` };
  }
  if (e instanceof Fatal) return { tag: 'fatal', val: String(e.message) };
  return { tag: 'fatal', val: describe(e) };
}

function lowerSnapshot(snapshot) {
  if (snapshot === undefined || snapshot === null) return null;
  if (!(snapshot instanceof Uint8Array)) {
    throw new Fatal(`flush returned ${Object.prototype.toString.call(snapshot)}; a snapshot is a Uint8Array (see jsonSnapshot) or nothing`);
  }
  if (snapshot.length > MAX_SNAPSHOT) throw new Fatal(`flush returned a snapshot of ${snapshot.length} bytes; the limit is ${MAX_SNAPSHOT}`);
  return snapshot;
}

function lowerStatus(status) {
  if (status === undefined || status === null) return null;
  let custom = status.custom ?? [];
  if (!Array.isArray(custom)) custom = Object.entries(custom);
  return {
    written: u64(status.written),
    warnings: u64(status.warnings),
    filtered: u64(status.filtered),
    failures: u64(status.failures),
    custom: custom.map(([name, n]) => [String(name), u64(n)]),
  };
}

/**
 * Turns a `Sink` subclass into the object to export as `sink`. The object
 * also carries the class (`sinkClass`) and, for sinkbox-sdk/testing, a way to
 * make the glue of a fresh instance.
 */
export function exportSink(SinkClass) {
  const exported = glue(SinkClass);
  Object.defineProperty(exported, 'sinkClass', { value: SinkClass });
  Object.defineProperty(exported, Symbol.for('sinkbox-sdk.instance'), { value: () => glue(SinkClass) });
  return exported;
}

function glue(SinkClass) {
  let instance = null;
  const current = () => {
    if (instance === null) throw new Fatal('sink called before a successful open');
    return instance;
  };
  const guarded = (call, f) => {
    try {
      return f();
    } catch (e) {
      throw lowerError(e, call);
    }
  };
  return {
    configSchema() {
      return SinkClass.configSchema == null ? null : JSON.stringify(SinkClass.configSchema);
    },
    open(config, context) {
      guarded('open', () => {
        let parsed;
        try {
          parsed = JSON.parse(config);
        } catch (e) {
          throw new Fatal(`config is not JSON: ${e.message}`);
        }
        const ctx = new Context(context ?? {});
        const sink = new SinkClass();
        sink.context = ctx;
        sink.open(parsed, ctx);
        instance = sink;
      });
    },
    add(batch) {
      guarded('add', () => current().addBatch(decodeBatch(batch.topic, batch.partition, batch.count, batch.data)));
    },
    flush() {
      return guarded('flush', () => {
        const sink = current();
        const returned = sink.flush();
        return lowerSnapshot(returned === undefined || returned === null ? sink.snapshot() : returned);
      });
    },
    status() {
      // `status` cannot fail: a sink whose counters throw reports none.
      try {
        return lowerStatus(current().status());
      } catch (e) {
        log('error', `status failed: ${e && e.message}`);
        return null;
      }
    },
    abort() {
      try {
        if (instance !== null) instance.abort();
      } catch (e) {
        log('error', `abort failed: ${e && e.message}`);
      }
    },
    close() {
      const sink = instance;
      instance = null;
      if (sink !== null) guarded('close', () => sink.close());
    },
  };
}

// ---------------------------------------------------------------------------
// Files in the directories the pipeline grants, through wasi:filesystem.

const NOFOLLOW = { symlinkFollow: false };

/** A wasi:filesystem call failed; `code` is the WASI error code ('no-entry', ...). */
export class FileError extends Error {
  constructor(action, path, code) {
    super(`cannot ${action} ${path}: ${code}`);
    this.name = 'FileError';
    this.path = path;
    this.code = code;
  }
}

// The QuickJS backend throws an Error whose `payload` is the error-code name.
function errorCode(e) {
  if (e && typeof e === 'object') {
    if (typeof e.payload === 'string') return e.payload;
    if (e.payload && typeof e.payload.tag === 'string') return e.payload.tag;
    if (typeof e.tag === 'string') return e.tag;
    if (typeof e.message === 'string') return e.message;
  }
  return String(e);
}

function wasi(action, path, f) {
  try {
    return f();
  } catch (e) {
    throw new FileError(action, path, errorCode(e));
  }
}

export const files = {
  /** The preopened directory holding `path` and the path relative to it. */
  resolve(path) {
    let best = null;
    for (const [dir, guest] of preopens.getDirectories()) {
      const prefix = guest.endsWith('/') ? guest : guest + '/';
      if (path.startsWith(prefix) && (best === null || prefix.length > best[1].length)) best = [dir, prefix];
    }
    if (best === null) throw new Fatal(`${path} is not inside a granted directory`);
    return [best[0], path.slice(best[1].length)];
  },

  /** Opens `path` for reading and writing; `create` makes it if missing. */
  open(path, create = false) {
    const [dir, rel] = files.resolve(path);
    return wasi('open', path, () => dir.openAt(NOFOLLOW, rel, { create }, { read: true, write: true }));
  },

  /** `{size, type}` of `path` (not following a symlink), or null if it does not exist. */
  stat(path) {
    const [dir, rel] = files.resolve(path);
    let stat;
    try {
      stat = dir.statAt(NOFOLLOW, rel);
    } catch (e) {
      if (errorCode(e) === 'no-entry') return null;
      throw new FileError('stat', path, errorCode(e));
    }
    return { size: Number(stat.size), type: stat.type };
  },

  /**
   * Whether `path` names the file `descriptor` (from `files.open`) holds,
   * rather than one put in its place. Compares wasi:filesystem metadata
   * hashes taken together, which match for one object (wasmtime hashes its
   * device and inode).
   */
  holds(path, descriptor) {
    const [dir, rel] = files.resolve(path);
    let atPath;
    try {
      atPath = dir.metadataHashAt(NOFOLLOW, rel);
    } catch (e) {
      if (errorCode(e) === 'no-entry') return false;
      throw new FileError('stat', path, errorCode(e));
    }
    const held = wasi('stat', path, () => descriptor.metadataHash());
    return atPath.lower === held.lower && atPath.upper === held.upper;
  },

  /** The size of `path` in bytes; throws `FileError` when it cannot tell (a missing file included). */
  size(path) {
    const stat = files.stat(path);
    if (stat === null) throw new FileError('stat', path, 'no-entry');
    return stat.size;
  },

  /** The whole file (a Uint8Array), or null if it does not exist. */
  read(path) {
    const [dir, rel] = files.resolve(path);
    let file;
    try {
      file = dir.openAt(NOFOLLOW, rel, {}, { read: true });
    } catch (e) {
      if (errorCode(e) === 'no-entry') return null;
      throw new FileError('open', path, errorCode(e));
    }
    const size = wasi('stat', path, () => Number(file.stat().size));
    const stream = wasi('read', path, () => file.readViaStream(0));
    const out = new Uint8Array(size);
    let at = 0;
    while (at < size) {
      let chunk;
      try {
        chunk = stream.blockingRead(size - at);
      } catch (e) {
        if (errorCode(e) === 'closed') break;
        throw new FileError('read', path, errorCode(e));
      }
      if (chunk.length === 0) break;
      out.set(chunk, at);
      at += chunk.length;
    }
    return out.subarray(0, at);
  },

  /** Writes `bytes` (or text) at `offset` (a Number), then syncs the data. */
  writeAt(path, offset, bytes) {
    writeAll(files.open(path, true), path, offset, bytes);
  },

  /** Cuts or extends the file to `size` bytes. */
  truncate(path, size) {
    const file = files.open(path, true);
    wasi('truncate', path, () => file.setSize(Number(size)));
  },

  /** Replaces the file's contents: write a temporary file, rename it over. */
  replace(path, bytes) {
    const tmp = path + '.tmp';
    files.truncate(tmp, 0);
    files.writeAt(tmp, 0, bytes);
    const [dir, rel] = files.resolve(path);
    const [, relTmp] = files.resolve(tmp);
    wasi('rename', tmp, () => dir.renameAt(relTmp, dir, rel));
  },
};

function writeAll(file, path, offset, bytes) {
  if (typeof bytes === 'string') bytes = utf8Encode(bytes);
  const stream = wasi('write', path, () => file.writeViaStream(Number(offset)));
  // blocking-write-and-flush takes at most 4096 bytes a call.
  for (let at = 0; at < bytes.length; at += 4096) {
    const chunk = bytes.subarray(at, Math.min(at + 4096, bytes.length));
    wasi('write', path, () => stream.blockingWriteAndFlush(chunk));
  }
  wasi('sync', path, () => file.syncData());
}

const grouped = (n) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');

/**
 * An append-only output file kept exactly once with runtime snapshots.
 *
 * Create it in `open` with `new OutputFile(path, context)`; it applies the
 * contract's rules: a probe touches nothing; with a snapshot the file is cut
 * back to the committed length (and must hold at least that much); on a
 * first run the file must be missing or empty. `{partition}` and `{lane}` in
 * the path name each instance's own file; a path without them is refused
 * where instances would share it. Write at flush with `append`, return
 * `snapshot()` from the sink's `snapshot` (or `flush`) and call `rollback()`
 * from its `abort`. The file appears with the first bytes appended.
 *
 * The snapshot is JSON `{"len": N, "path": P}`; one taken for another path
 * (the config changed) counts as none.
 */
export class OutputFile {
  constructor(path, context) {
    path = String(path);
    if (context.lanes > 1 && !path.includes('{lane}')) {
      throw new Fatal(`output path ${path} has no {lane} placeholder but the sink runs ${context.lanes} lanes, whose instances would write the same file`);
    }
    if (context.partition !== 0 && !path.includes('{partition}')) {
      throw new Fatal(
        `output path ${path} has no {partition} placeholder but this instance serves partition ${context.partition}, so the partitions' instances would write the same file`,
      );
    }
    /** The file's path, placeholders filled in. */
    this.path = context.expand(path);
    /** Whether this belongs to a probe instance, which must not touch the file. */
    this.probe = context.probe;
    this._file = null;
    const committed = this._committed(context.snapshot);
    let length = committed ?? 0;
    if (!this.probe) {
      // A probe runs beside the live instance: no truncation, no check that
      // could race with its writes.
      const stat = files.stat(this.path);
      if (committed === undefined) {
        if (stat !== null && stat.size > 0) {
          throw new Fatal(`output ${this.path} already holds ${grouped(stat.size)} bytes this pipeline did not write; remove it or choose another path`);
        }
      } else if (stat === null) {
        if (committed > 0) {
          throw new Fatal(`output ${this.path} is missing but ${grouped(committed)} bytes were committed: it was deleted or moved outside sinkbox`);
        }
      } else if (stat.size < committed) {
        throw new Fatal(`output ${this.path} is ${grouped(stat.size)} bytes but ${grouped(committed)} were committed: it was truncated or replaced outside sinkbox`);
      }
      if (stat !== null) {
        this._file = files.open(this.path, false);
        // Written by a flush whose checkpoint was not committed: those
        // records are replayed.
        if (stat.size > length) this._truncate(length);
      }
    }
    /** Bytes in the file as this sink wrote them (committed or not). */
    this.length = length;
    this._flushed = length;
  }

  // The length a snapshot names, or undefined when it names none for this path.
  _committed(snapshot) {
    if (snapshot === undefined) return undefined;
    let state;
    try {
      state = JSON.parse(utf8Decode(snapshot));
    } catch (e) {
      state = null;
    }
    if (state === null || typeof state !== 'object' || !Number.isSafeInteger(state.len) || state.len < 0 || typeof state.path !== 'string') {
      throw new Fatal(`snapshot ${JSON.stringify(String.fromCharCode.apply(null, snapshot.subarray(0, 100)))} is not one an output file wrote`);
    }
    return state.path === this.path ? state.len : undefined;
  }

  _truncate(length) {
    wasi('truncate', this.path, () => this._file.setSize(length));
    wasi('sync', this.path, () => this._file.syncData());
  }

  /**
   * Throws `Fatal` unless the file at the path is the one this sink wrote,
   * `length` bytes long (or still missing when it wrote nothing).
   */
  check() {
    const stat = files.stat(this.path);
    if (stat === null) {
      if (this.length > 0 || this._file !== null) {
        throw new Fatal(`output ${this.path} is missing but the sink had written ${grouped(this.length)} bytes to it: it was deleted or moved outside sinkbox`);
      }
      return;
    }
    if (this._file !== null && !files.holds(this.path, this._file)) {
      throw new Fatal(`output ${this.path} was replaced by another file outside sinkbox`);
    }
    if (stat.size !== this.length) {
      throw new Fatal(`output ${this.path} is ${grouped(stat.size)} bytes but the sink wrote ${grouped(this.length)}: it was changed outside sinkbox`);
    }
  }

  /**
   * Appends `data` (text or a Uint8Array) durably, written and synced,
   * after checking that the file still holds exactly what this sink wrote.
   */
  append(data) {
    if (this.probe) throw new Fatal(`a probe instance must not write its output ${this.path}`);
    const bytes = typeof data === 'string' ? utf8Encode(data) : data;
    if (bytes.length === 0) return;
    this.check();
    if (this._file === null) {
      this._file = files.open(this.path, true);
      // Make the new directory entry durable where the host allows it.
      try {
        files.resolve(this.path)[0].sync();
      } catch (ignored) {}
    }
    try {
      writeAll(this._file, this.path, this.length, bytes);
    } catch (e) {
      // Leave no partial write behind.
      try {
        this._file.setSize(this.length);
      } catch (ignored) {}
      throw e;
    }
    this.length += bytes.length;
  }

  /**
   * The snapshot to return from the sink's `snapshot` (or `flush`): the
   * file's length and path. Marks that length as flushed for `rollback`.
   */
  snapshot() {
    this._flushed = this.length;
    return jsonSnapshot({ len: this.length, path: this.path });
  }

  /**
   * Cuts off what was appended since the last `snapshot` (a flush that
   * failed half way); call it from `abort`.
   */
  rollback() {
    if (!this.probe && this.length > this._flushed) {
      this._truncate(this._flushed);
      this.length = this._flushed;
    }
  }
}
