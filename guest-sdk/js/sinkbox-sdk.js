// Write Sinkbox sinks in JavaScript.
//
// Subclass `Sink`, then export it from your entry module:
//
//     import { Sink, Rejected, exportSink } from './sinkbox-sdk.js';
//
//     class Upper extends Sink {
//       open(config) { this.lines = []; }
//       add(record) { this.lines.push(record.text().toUpperCase()); }
//       flush() { files.append('/out/upper.txt', this.lines.join('\n') + '\n'); this.lines = []; }
//       abort() { this.lines = []; }
//     }
//
//     export const sink = exportSink(Upper);
//
// Build with jco's QuickJS backend against the `sinkbox:sink/sink-world-files`
// world (see README.md); that backend passes WIT 64-bit integers as Numbers. Errors: throw `Backpressure`, `Retryable`,
// `Rejected` (from `add`: that record is dead-lettered) or `Fatal`; any other
// exception is reported as `fatal` with its message and stack, never as a
// trap.

import { log as hostLog } from 'sinkbox:sink/host@0.1.0';
import preopens from 'wasi:filesystem/preopens@0.2.12';

const NO_KEY = 0xffffffff;

/** The destination is overloaded: the runtime aborts, waits, replays. */
export class Backpressure extends Error {
  constructor(retryAfterMs) {
    super(`backpressure, retry after ${retryAfterMs} ms`);
    this.retryAfterMs = retryAfterMs;
  }
}

/** A transient failure: the runtime aborts and retries with backoff. */
export class Retryable extends Error {}

/** Thrown from `add`: this record can never be written. */
export class Rejected extends Error {}

/** Thrown from `addBatch`: these records ([offset, reason] pairs) can never be written. */
export class RejectedRecords extends Error {
  constructor(rejections) {
    super(`${rejections.length} records rejected`);
    this.rejections = rejections;
  }
}

/** The instance is broken: the runtime replaces it and replays. */
export class Fatal extends Error {}

// UTF-8 by hand: QuickJS has no TextEncoder/TextDecoder. ASCII, the common
// case for JSON, takes a fast path through String.fromCharCode.
export function utf8Decode(bytes) {
  let ascii = true;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] > 0x7f) {
      ascii = false;
      break;
    }
  }
  if (ascii) {
    let text = '';
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    return text;
  }
  let out = '';
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i++];
    let cp;
    if (b < 0x80) cp = b;
    else if (b < 0xe0) cp = ((b & 0x1f) << 6) | (bytes[i++] & 0x3f);
    else if (b < 0xf0) cp = ((b & 0x0f) << 12) | ((bytes[i++] & 0x3f) << 6) | (bytes[i++] & 0x3f);
    else cp = ((b & 0x07) << 18) | ((bytes[i++] & 0x3f) << 12) | ((bytes[i++] & 0x3f) << 6) | (bytes[i++] & 0x3f);
    out += String.fromCodePoint(cp);
  }
  return out;
}

export function utf8Encode(text) {
  const out = [];
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return new Uint8Array(out);
}

/** One record of a batch. */
export class Record {
  constructor(offset, timestamp, key, value, headers) {
    /** Position in its partition (a Number). */
    this.offset = offset;
    /** Milliseconds since the Unix epoch, or null. */
    this.timestamp = timestamp;
    /** Uint8Array, or null. */
    this.key = key;
    /** Uint8Array. */
    this.value = value;
    /** Array of [name: string, value: Uint8Array]. */
    this.headers = headers;
  }

  /** The value as text. */
  text() {
    return utf8Decode(this.value);
  }

  /** The value parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }
}

/** Decodes the packed batch encoding (wit/types.wit) into records. */
export function decode(data, count) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const records = [];
  let pos = 0;
  for (let n = 0; n < count; n++) {
    // 64-bit fields as two halves: BigInt arithmetic is slow in QuickJS.
    const offset = view.getUint32(pos, true) + view.getUint32(pos + 4, true) * 4294967296;
    const tsLow = view.getUint32(pos + 8, true);
    const tsHigh = view.getInt32(pos + 12, true);
    const noTimestamp = tsHigh === -2147483648 && tsLow === 0;
    const keyLen = view.getUint32(pos + 16, true);
    const valueLen = view.getUint32(pos + 20, true);
    const headerCount = view.getUint32(pos + 24, true);
    pos += 28;
    let key = null;
    if (keyLen !== NO_KEY) {
      key = data.subarray(pos, pos + keyLen);
      pos += keyLen;
    }
    const value = data.subarray(pos, pos + valueLen);
    pos += valueLen;
    const headers = [];
    for (let h = 0; h < headerCount; h++) {
      const nameLen = view.getUint32(pos, true);
      const name = utf8Decode(data.subarray(pos + 4, pos + 4 + nameLen));
      pos += 4 + nameLen;
      const len = view.getUint32(pos, true);
      headers.push([name, data.subarray(pos + 4, pos + 4 + len)]);
      pos += 4 + len;
    }
    records.push(new Record(offset, noTimestamp ? null : tsHigh * 4294967296 + tsLow, key, value, headers));
  }
  if (pos !== data.byteLength) throw new Fatal(`malformed record batch: ${data.byteLength - pos} bytes left over`);
  return records;
}

/** Logs to the host: level is 'trace', 'debug', 'info', 'warn' or 'error'. */
export function log(level, message, fields = {}) {
  hostLog(level, String(message), Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

/** Base class of a JavaScript sink. */
export class Sink {
  /** JSON Schema (an object) of the config, or null. */
  static configSchema = null;

  open(config) {}

  add(record) {
    throw new Error('override add or addBatch');
  }

  /** Calls `add` per record and collects `Rejected` errors. */
  addBatch(records) {
    const rejected = [];
    for (const record of records) {
      try {
        this.add(record);
      } catch (e) {
        if (!(e instanceof Rejected)) throw e;
        rejected.push([record.offset, e.message]);
      }
    }
    if (rejected.length) throw new RejectedRecords(rejected);
  }

  flush() {}
  abort() {}
  close() {}
}

/** Maps a thrown value to the contract's error variant, shaped as jco expects. */
function lower(e) {
  if (e instanceof Backpressure) return { tag: 'backpressure', val: Math.max(0, Math.min(0xffffffff, e.retryAfterMs | 0)) };
  if (e instanceof Retryable) return { tag: 'retryable', val: e.message };
  if (e instanceof RejectedRecords) {
    return { tag: 'rejected', val: e.rejections.map(([offset, reason]) => ({ offset: Number(offset), reason: String(reason) })) };
  }
  if (e instanceof Rejected) return { tag: 'fatal', val: `record rejected outside add: ${e.message}` };
  if (e instanceof Fatal) return { tag: 'fatal', val: e.message };
  const name = e && e.constructor ? e.constructor.name : 'error';
  return { tag: 'fatal', val: `uncaught ${name}: ${e && e.message}\n${(e && e.stack) || ''}`.trim() };
}

function guarded(f) {
  try {
    return f();
  } catch (e) {
    throw lower(e);
  }
}

/** Turns a `Sink` subclass into the object to export as `sink`. */
export function exportSink(SinkClass) {
  let instance = null;
  const current = () => {
    if (instance === null) throw new Fatal('sink called before a successful open');
    return instance;
  };
  return {
    configSchema() {
      return SinkClass.configSchema == null ? undefined : JSON.stringify(SinkClass.configSchema);
    },
    open(config) {
      guarded(() => {
        const sink = new SinkClass();
        sink.open(JSON.parse(config));
        instance = sink;
      });
    },
    add(batch) {
      guarded(() => current().addBatch(decode(batch.data, batch.count)));
    },
    flush() {
      guarded(() => current().flush());
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
      if (sink !== null) guarded(() => sink.close());
    },
  };
}

/** Files in the directories the pipeline grants, through wasi:filesystem. */
export const files = {
  /** The preopened directory holding `path`, and the path relative to it. */
  resolve(path) {
    let best = null;
    for (const [dir, guest] of preopens.getDirectories()) {
      const prefix = guest.endsWith('/') ? guest : guest + '/';
      if (path.startsWith(prefix) && (best === null || prefix.length > best[1].length)) best = [dir, prefix];
    }
    if (best === null) throw new Fatal(`${path} is not inside a granted directory`);
    return [best[0], path.slice(best[1].length)];
  },

  open(path, create) {
    const [dir, rel] = files.resolve(path);
    return dir.openAt({ symlinkFollow: false }, rel, { create }, { read: true, write: true });
  },

  /** The whole file, or null if it does not exist. */
  read(path) {
    let file;
    try {
      file = files.open(path, false);
    } catch (e) {
      if (e && e.payload === 'no-entry') return null;
      if (e === 'no-entry' || (e && e.tag === 'no-entry')) return null;
      throw e;
    }
    const size = Number(file.stat().size);
    const stream = file.readViaStream(0);
    const out = new Uint8Array(size);
    let at = 0;
    while (at < size) {
      const chunk = stream.blockingRead(size - at);
      if (chunk.length === 0) break;
      out.set(chunk, at);
      at += chunk.length;
    }
    return out.subarray(0, at);
  },

  /** Writes `bytes` at `offset` (a Number), then syncs the data. */
  writeAt(path, offset, bytes) {
    const file = files.open(path, true);
    const stream = file.writeViaStream(offset);
    for (let at = 0; at < bytes.length; at += 4096) {
      stream.blockingWriteAndFlush(bytes.subarray(at, Math.min(at + 4096, bytes.length)));
    }
    file.syncData();
  },

  /** Cuts or extends the file to `size` bytes. */
  truncate(path, size) {
    files.open(path, true).setSize(size);
  },

  size(path) {
    try {
      return Number(files.open(path, false).stat().size);
    } catch (e) {
      return 0;
    }
  },

  /** Replaces the file's contents: write a temporary file, rename it over. */
  replace(path, bytes) {
    const tmp = path + '.tmp';
    files.truncate(tmp, 0);
    files.writeAt(tmp, 0, bytes);
    const [dir, rel] = files.resolve(path);
    const [, relTmp] = files.resolve(tmp);
    dir.renameAt(relTmp, dir, rel);
  },
};
