// Run a sink under `node --test`, without a component build.
//
// `FakeHost` plays the runtime for one sink: it grants directories (real
// ones, through a wasi:filesystem stand-in), opens instances with a
// `Context`, packs records into the contract's batch encoding, makes the
// calls in contract order through the same glue a component uses (so errors
// come out as the runtime sees them), commits the snapshot each successful
// `flush` returns and hands it to the next `open`:
//
//     import test from 'node:test';
//     import assert from 'node:assert/strict';
//     import { FakeHost } from 'sinkbox-sdk/testing';
//
//     const { sink } = await import('../sink.js');
//
//     test('a restart rolls back', () => {
//       const host = new FakeHost(sink, { path: '/out/x.csv', columns: ['n'] }, { dirs: { '/out': null } });
//       host.open();
//       host.add([{ n: 0 }, { n: 1 }]);
//       host.flush();                 // commits the snapshot
//       host.add([{ n: 2 }]);
//       host.crash();                 // no close: as if the process died
//       host.open();                  // gets the committed snapshot
//       host.replay();                // the records after the last commit
//       host.flush();
//       host.close();
//       assert.equal(host.readText('/out/x.csv'), 'n\n0\n1\n2\n');
//       host.dispose();
//     });
//
// Step methods throw what the runtime would get: the SDK's `Backpressure`,
// `Retryable` or `Fatal` (any other exception of the sink arrives as `Fatal`
// with its stack). Rejected records are returned and collected in
// `deadLetters`. `run` drives a whole input and reacts to errors as the
// runtime does. A call the runtime never makes (`add` before `open`, a
// `flush` on a probe) or a probe that touches a file throws
// `ContractViolation`; what would trap a QuickJS build (a thrown value that is
// not a `sink-error`, a BigInt where WIT has a u64, a write of more than
// 4096 bytes to a WASI stream) throws `GuestTrap`.
//
// Importing this module registers Node module hooks that resolve
// `sinkbox:sink/host@0.2.0` and `wasi:filesystem/*` to the stand-ins; import
// the SDK and sinks after it (with `await import(...)`, or through the `sdk`
// export), or run `node --import sinkbox-sdk/testing/register --test` to
// import them statically.

import './testing/register.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Descriptor, GuestTrap, setCurrentHost } from './testing/fake-host.js';

export { GuestTrap };

/** The SDK module (`sinkbox-sdk.js`), loaded through the stand-ins. */
export const sdk = await import('../sinkbox-sdk.js');

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];
const NO_KEY = 0xffffffff;
const NO_TIMESTAMP = -(2n ** 63n);
const FRESH = Symbol.for('sinkbox-sdk.instance');

/**
 * A call the runtime never makes, or an answer it would refuse (a rejection
 * naming a record the call did not carry, a probe touching a file).
 */
export class ContractViolation extends Error {
  constructor(message) {
    super(message);
    this.name = 'ContractViolation';
  }
}

function bytesOf(value) {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return new Uint8Array(Buffer.from(value, 'utf8'));
  return new Uint8Array(Buffer.from(JSON.stringify(value), 'utf8'));
}

/**
 * A record to feed; the host gives it its offset. `value` and `key` are
 * bytes, text (UTF-8), or anything else (JSON); `headers` are `[name, value]`
 * pairs or an object; `timestamp` is milliseconds since the epoch.
 */
export class Message {
  constructor(value, { key = null, headers = [], timestamp = null } = {}) {
    this.value = bytesOf(value);
    this.key = key === null || key === undefined ? null : bytesOf(key);
    this.headers = (Array.isArray(headers) ? headers : Object.entries(headers)).map(([n, v]) => [String(n), bytesOf(v)]);
    this.timestamp = timestamp;
  }
}

/** What `add` accepts per record: a `Message`, a Uint8Array, a string (UTF-8), or anything else (JSON). */
function messageOf(value) {
  return value instanceof Message ? value : new Message(value);
}

/**
 * Packs `[offset, message]` pairs (offset a BigInt or Number, message a
 * `Message` or a value) in the contract's batch encoding.
 * Returns `{data, count}`.
 */
export function encode(records) {
  const parts = [];
  let count = 0;
  for (const [offset, value] of records) {
    const m = messageOf(value);
    const head = Buffer.alloc(28);
    head.writeBigUInt64LE(BigInt(offset), 0);
    head.writeBigInt64LE(m.timestamp === null || m.timestamp === undefined ? NO_TIMESTAMP : BigInt(m.timestamp), 8);
    head.writeUInt32LE(m.key === null ? NO_KEY : m.key.length, 16);
    head.writeUInt32LE(m.value.length, 20);
    head.writeUInt32LE(m.headers.length, 24);
    parts.push(head);
    if (m.key !== null) parts.push(m.key);
    parts.push(m.value);
    for (const [name, v] of m.headers) {
      const raw = Buffer.from(name, 'utf8');
      const lengths = Buffer.alloc(8);
      lengths.writeUInt32LE(raw.length, 0);
      lengths.writeUInt32LE(v.length, 4);
      parts.push(lengths.subarray(0, 4), raw, lengths.subarray(4), v);
    }
    count++;
  }
  return { data: new Uint8Array(Buffer.concat(parts)), count };
}

/** A decoded `Batch` of `values` (offsets from `firstOffset`), as `addBatch` gets it. */
export function makeBatch(values, { topic = 'topic', partition = 0, firstOffset = 0n } = {}) {
  const { data, count } = encode(values.map((v, i) => [BigInt(firstOffset) + BigInt(i), v]));
  return sdk.decodeBatch(topic, partition, count, data);
}

/** A `Context` with test defaults (pipeline "test", sink "sink", partition 0, one lane, no snapshot). */
export function makeContext(fields = {}) {
  return new sdk.Context({ ...contextDefaults(), ...fields });
}

function contextDefaults() {
  return { pipeline: 'test', sink: 'sink', topic: 'topic', partition: 0, lane: 0, lanes: 1, workerIndex: 0, workerCount: 1, snapshot: undefined, probe: false };
}

// --- What a QuickJS guest may hand back (anything else traps it). ---

const isU32 = (n) => typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
const isU64 = (n) => typeof n === 'number' && Number.isInteger(n) && n >= 0;
const isBytes = (v) => v instanceof Uint8Array || (Array.isArray(v) && v.every((b) => Number.isInteger(b) && b >= 0 && b <= 255));
const show = (v) => {
  try {
    return JSON.stringify(v, (k, x) => (typeof x === 'bigint' ? `${x}n` : x));
  } catch {
    return String(v);
  }
};

function sinkErrorProblem(e) {
  if (e === null || typeof e !== 'object' || Object.getPrototypeOf(e) !== Object.prototype) {
    return `threw ${e instanceof Error ? `${e.name}: ${e.message}` : show(e)}, not a sink-error variant ({tag, val})`;
  }
  const keys = Object.keys(e).sort().join(',');
  if (keys !== 'tag,val') return `threw an object with keys ${keys}; a sink-error has exactly tag and val`;
  switch (e.tag) {
    case 'backpressure':
      return isU32(e.val) ? null : `threw backpressure carrying ${show(e.val)}, not a u32 Number`;
    case 'retryable':
    case 'fatal':
      return typeof e.val === 'string' ? null : `threw ${e.tag} carrying ${show(e.val)}, not a string`;
    case 'rejected':
      if (!Array.isArray(e.val)) return `threw rejected carrying ${show(e.val)}, not a list`;
      for (const r of e.val) {
        if (r === null || typeof r !== 'object' || !isU64(r.offset) || typeof r.reason !== 'string') {
          return `threw rejected holding ${show(r)}; a rejection is {offset: a Number, reason: a string}`;
        }
      }
      return null;
    default:
      return `threw a variant tagged ${show(e.tag)}; sink-error has backpressure, retryable, rejected, fatal`;
  }
}

function statusProblem(s) {
  if (s === null || s === undefined) return null;
  if (typeof s !== 'object') return `returned ${show(s)}`;
  for (const field of ['written', 'warnings', 'filtered', 'failures']) {
    if (!isU64(s[field])) return `returned ${field} = ${show(s[field])}, not a u64 Number`;
  }
  if (!Array.isArray(s.custom)) return `returned custom = ${show(s.custom)}, not a list`;
  for (const pair of s.custom) {
    if (!Array.isArray(pair) || typeof pair[0] !== 'string' || !isU64(pair[1])) return `returned a custom counter ${show(pair)}`;
  }
  return null;
}

// The SDK error the runtime's answer stands for.
function lift(variant) {
  switch (variant.tag) {
    case 'backpressure':
      return new sdk.Backpressure(variant.val);
    case 'retryable':
      return new sdk.Retryable(variant.val);
    case 'rejected':
      return new sdk.RejectedRecords(variant.val.map((r) => ({ offset: BigInt(r.offset), reason: r.reason })));
    default:
      return new sdk.Fatal(variant.val);
  }
}

/** One component instance: the exported glue, called as the runtime calls it. */
class Instance {
  constructor(host, exported, probe) {
    this.host = host;
    this.exported = exported;
    this.probe = probe;
  }

  call(name, args, { fallible = true, check } = {}) {
    const host = this.host;
    setCurrentHost(host);
    host._caller = this;
    host._traps = [];
    host._violations = [];
    let result;
    let thrown;
    let threw = false;
    try {
      result = this.exported[name](...args);
    } catch (e) {
      thrown = e;
      threw = true;
    } finally {
      host._caller = null;
    }
    const call = name === 'configSchema' ? 'config-schema' : name;
    if (host._traps.length) throw new GuestTrap(`${call} trapped: ${host._traps[0]}`);
    if (host._violations.length) throw new ContractViolation(`${call}: ${host._violations.join('; ')}`);
    if (threw) {
      const problem = fallible ? sinkErrorProblem(thrown) : `threw ${thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : show(thrown)}`;
      if (problem) throw new GuestTrap(`${call} ${problem}; a QuickJS guest aborts here`);
      throw lift(thrown);
    }
    const problem = check ? check(result) : null;
    if (problem) throw new GuestTrap(`${call} ${problem}; a QuickJS guest traps here`);
    return result;
  }
}

/**
 * The runtime, for one sink serving one topic partition and lane.
 *
 * `sink` is the object a sink module exports (`exportSink(...)`) or a `Sink`
 * subclass; every `open` gets a fresh instance of its glue (module-level
 * state is shared, unlike in a component). `config` is a JSON value (or a
 * string, passed as is). Options fill the `Context` (`topic`, `partition`,
 * `lane`, `lanes`, `pipeline`, `sinkName`, `workerIndex`, `workerCount`),
 * `firstOffset` is the offset of the first record fed (default 0), and
 * `dirs` grants directories: it maps a guest path ('/out') to a host
 * directory, or to null for a fresh temporary one that `dispose` removes.
 */
export class FakeHost {
  constructor(sink, config, options = {}) {
    if (sink && typeof sink[FRESH] === 'function') this._fresh = sink[FRESH];
    else if (typeof sink === 'function') this._fresh = () => sdk.exportSink(sink);
    else throw new TypeError('FakeHost takes the exported sink object (exportSink(...)) or a Sink subclass');
    const {
      topic = 'topic',
      partition = 0,
      lane = 0,
      lanes = 1,
      pipeline = 'test',
      sinkName = 'sink',
      workerIndex = 0,
      workerCount = 1,
      dirs = {},
      firstOffset = 0n,
    } = options;
    this.config = config;
    this.topic = topic;
    this.partition = partition;
    this._context = { pipeline, sink: sinkName, topic, partition, lane, lanes, workerIndex, workerCount };
    /** The snapshot of the last committed checkpoint (a Uint8Array), or undefined. */
    this.snapshot = undefined;
    /** Every record rejected so far, as the dead-letter queue holds them: `{offset, reason}`. */
    this.deadLetters = [];
    /** The sum of the sink's status reports (`custom` an object). */
    this.status = { written: 0, warnings: 0, filtered: 0, failures: 0, custom: {} };
    /** Log lines: `{level, message, fields}`, fields an object. */
    this.logs = [];
    /** How many instances were opened successfully. */
    this.opened = 0;
    this._temp = [];
    this.dirs = Object.entries(dirs).map(([guest, hostPath]) => {
      if (hostPath === null || hostPath === undefined) {
        hostPath = fs.mkdtempSync(path.join(os.tmpdir(), 'sinkbox-test-'));
        this._temp.push(hostPath);
      }
      return [guest.replace(/\/+$/, '') || '/', path.resolve(hostPath)];
    });
    this._fds = new Set();
    this._caller = null;
    this._traps = [];
    this._violations = [];
    this._instance = null;
    // Fed and not committed; of those, delivered to the live instance since
    // its last flush or abort; and flushed but not committed.
    this._uncommitted = [];
    this._unflushed = [];
    this._flushed = new Set();
    this._nextOffset = BigInt(firstOffset);
    setCurrentHost(this);
  }

  // --- what the runtime does ---

  /** Whether a live instance is open. */
  get isOpen() {
    return this._instance !== null;
  }

  /** The records fed since the last committed checkpoint, `[offset, Message]`: what a replay sends again. */
  get uncommitted() {
    return this._uncommitted.map((f) => [f.offset, f.message]);
  }

  /** The sink's config schema, as the runtime reads it (parsed), or undefined. */
  configSchema() {
    const text = new Instance(this, this._fresh(), false).call('configSchema', [], {
      fallible: false,
      check: (r) => (r === null || r === undefined || typeof r === 'string' ? null : `returned ${show(r)}, not an option<string>`),
    });
    return text === null || text === undefined ? undefined : JSON.parse(text);
  }

  /**
   * Opens a fresh instance with the committed snapshot. On a first run (no
   * snapshot) the runtime follows with an empty `flush` and commits its
   * snapshot, and so does this.
   */
  open(config = this.config) {
    if (this._instance !== null) throw new ContractViolation('an instance is open already: close or crash it first');
    const instance = new Instance(this, this._fresh(), false);
    instance.call('open', [configText(config), this._wireContext(false)]);
    this._instance = instance;
    this.opened++;
    if (this.snapshot === undefined) {
      // Commits an initial snapshot, not the records fed so far.
      this.snapshot = this._callLive('flush', [], { check: snapshotProblem }) ?? undefined;
      if (this.snapshot !== undefined) this.snapshot = Uint8Array.from(this.snapshot);
      this._sum(this._callLive('status', [], { fallible: false, check: statusProblem }));
    }
  }

  /** Feeds values (see `Message`; offsets continue from the last one fed) in one batch; returns the rejections. */
  add(values) {
    const fed = [...values].map((v) => ({ offset: this._nextOffset++, message: messageOf(v) }));
    this._uncommitted.push(...fed);
    return this._add(fed);
  }

  /** Sends the records not flushed since the last commit again, as the runtime does after `abort` or on a fresh instance. */
  replay() {
    return this._add(this._uncommitted.filter((f) => !this._flushed.has(f.offset)));
  }

  /**
   * Flushes; on success sums the sink's status and commits the checkpoint:
   * the records fed so far and the snapshot the flush returned.
   * `{commit: false}` leaves it uncommitted, as when another instance of the
   * pipeline failed or the process died before the commit. Returns the
   * records the flush rejected (the others count as flushed; no snapshot
   * comes with a rejection, so the previous one stays).
   */
  flush({ commit = true } = {}) {
    this._live('flush');
    const carried = new Set(this._unflushed.map((f) => f.offset));
    let snapshot;
    try {
      snapshot = this._callLive('flush', [], { check: snapshotProblem });
    } catch (e) {
      if (!(e instanceof sdk.RejectedRecords)) throw e;
      const rejected = this._checkRejections(e, carried, 'flush');
      for (const offset of carried) this._flushed.add(offset);
      this._unflushed = [];
      if (commit) this._commit(this.snapshot);
      return rejected;
    }
    for (const offset of carried) this._flushed.add(offset);
    this._unflushed = [];
    if (commit) this._commit(snapshot === null || snapshot === undefined ? undefined : Uint8Array.from(snapshot));
    this._sum(this._callLive('status', [], { fallible: false, check: statusProblem }));
    return [];
  }

  /** Calls `abort`; what it dropped is then sent again with `replay`. */
  abort() {
    this._callLive('abort', [], { fallible: false });
    this._unflushed = [];
  }

  /** Closes the instance; it is dropped even if `close` fails. */
  close() {
    const instance = this._live('close');
    this._drop();
    instance.call('close', []);
  }

  /** Drops the instance without calling anything (a killed process, a trap, a deadline). */
  crash() {
    this._drop();
  }

  /** A fresh instance after a crash: `crash`, `open`, `replay`. */
  restart() {
    this.crash();
    this.open();
    return this.replay();
  }

  /**
   * Runs a probe instance beside the live one, as the runtime's bisection
   * does: `open` (with `probe = true` and the committed snapshot), `add`,
   * `abort`, `close`. `values` are `[offset, message]` pairs, by default the
   * uncommitted records. Returns the error the probe met, or undefined; a
   * probe that touches a file throws `ContractViolation`.
   */
  probe(values = this.uncommitted) {
    const instance = new Instance(this, this._fresh(), true);
    try {
      instance.call('open', [configText(this.config), this._wireContext(true)]);
    } catch (e) {
      if (isSinkError(e)) return e;
      throw e;
    }
    try {
      const { data, count } = encode(values);
      instance.call('add', [{ topic: this.topic, partition: this.partition, count, data }]);
    } catch (e) {
      if (!(e instanceof sdk.RejectedRecords)) {
        if (isSinkError(e)) return e;
        throw e;
      }
    }
    instance.call('abort', [], { fallible: false });
    try {
      instance.call('close', []);
    } catch (e) {
      if (isSinkError(e)) return e;
      throw e;
    }
    return undefined;
  }

  /**
   * Feeds `values` as the runtime runs a pipeline: opens if needed, adds
   * batches of `batchSize`, flushes every `batchesPerCheckpoint` batches and
   * at the end, then closes. Backpressure aborts and replays on the same
   * instance; `retryable`, `fatal` and traps replace the instance (a fresh
   * `open` gets the committed snapshot) and replay. After `attempts`
   * failures in a row (or 1000 backpressures) the error is thrown.
   */
  run(values, { batchSize = 100, batchesPerCheckpoint = 1, attempts = 3, close = true } = {}) {
    let pending = [...values].map(messageOf);
    let failures = 0;
    let backpressures = 0;
    let sinceFlush = 0;
    let replay = false;
    for (;;) {
      try {
        if (this._instance === null) {
          this.open();
          replay = this._uncommitted.length > 0;
        }
        if (replay) {
          replay = false;
          this.replay();
          sinceFlush = 1;
        } else if (pending.length && sinceFlush < batchesPerCheckpoint) {
          this.add(pending.slice(0, batchSize));
          pending = pending.slice(batchSize);
          sinceFlush++;
        } else if (sinceFlush || this._uncommitted.length) {
          this.flush();
          sinceFlush = 0;
          failures = 0;
        } else {
          break;
        }
      } catch (e) {
        if (e instanceof sdk.Backpressure) {
          if (++backpressures >= 1000) throw e;
          this.abort();
          replay = true;
        } else if (e instanceof sdk.Retryable || e instanceof sdk.Fatal || e instanceof GuestTrap) {
          if (++failures >= attempts) throw e;
          this.crash();
        } else {
          throw e;
        }
      }
    }
    if (close) this.close();
  }

  // --- files ---

  /** The host path of a guest path inside a granted directory. */
  path(guestPath) {
    let best = null;
    for (const [guest, hostPath] of this.dirs) {
      if (guestPath === guest) return hostPath;
      const prefix = guest.endsWith('/') ? guest : guest + '/';
      if (guestPath.startsWith(prefix) && (best === null || prefix.length > best[0].length)) best = [prefix, hostPath];
    }
    if (best === null) throw new Error(`${guestPath} is not inside a granted directory`);
    return path.join(best[1], guestPath.slice(best[0].length));
  }

  /** The file at a guest path as UTF-8 text, or null if it does not exist. */
  readText(guestPath) {
    try {
      return fs.readFileSync(this.path(guestPath), 'utf8');
    } catch (e) {
      if (e.code === 'ENOENT') return null;
      throw e;
    }
  }

  /** Closes the files the sink left open and removes the temporary directories. */
  dispose() {
    for (const fd of this._fds) {
      try {
        fs.closeSync(fd);
      } catch {}
    }
    this._fds.clear();
    for (const dir of this._temp) fs.rmSync(dir, { recursive: true, force: true });
    this._temp = [];
  }

  // --- inside ---

  _wireContext(probe) {
    return { ...this._context, snapshot: this.snapshot === undefined ? null : this.snapshot, probe };
  }

  _live(call) {
    if (this._instance === null) throw new ContractViolation(`${call} without an open instance`);
    return this._instance;
  }

  // A fatal or retryable error or a trap drops the instance, as the runtime does.
  _callLive(name, args, options) {
    const instance = this._live(name);
    try {
      return instance.call(name, args, options);
    } catch (e) {
      if (e instanceof sdk.Retryable || e instanceof sdk.Fatal || e instanceof GuestTrap) {
        if (this._instance === instance) this._drop();
      }
      throw e;
    }
  }

  _add(fed) {
    this._live('add');
    if (fed.length === 0) return [];
    const { data, count } = encode(fed.map((f) => [f.offset, f.message]));
    this._unflushed.push(...fed);
    try {
      this._callLive('add', [{ topic: this.topic, partition: this.partition, count, data }]);
    } catch (e) {
      if (!(e instanceof sdk.RejectedRecords)) throw e;
      return this._checkRejections(e, new Set(fed.map((f) => f.offset)), 'add');
    }
    return [];
  }

  _checkRejections(error, carried, call) {
    for (const r of error.rejections) {
      if (!carried.has(r.offset)) throw new ContractViolation(`${call} rejected offset ${r.offset}, which it was not given`);
    }
    this.deadLetters.push(...error.rejections);
    return error.rejections;
  }

  _commit(snapshot) {
    this.snapshot = snapshot;
    this._uncommitted = this._uncommitted.filter((f) => !this._flushed.has(f.offset));
    this._flushed = new Set();
  }

  _drop() {
    this._instance = null;
    this._unflushed = [];
    this._flushed = new Set();
  }

  _sum(status) {
    if (status === null || status === undefined) return;
    const total = this.status;
    total.written += status.written;
    total.warnings += status.warnings;
    total.filtered += status.filtered;
    total.failures += status.failures;
    for (const [name, n] of status.custom) total.custom[name] = (total.custom[name] ?? 0) + n;
  }

  // --- called by the stand-ins ---

  getDirectories() {
    return this.dirs.map(([guest, hostPath]) => [new Descriptor(this, hostPath, null, { read: true, write: true }), guest]);
  }

  log(level, message, fields) {
    let problem = null;
    if (!LEVELS.includes(level)) problem = `host.log got level ${show(level)}`;
    else if (typeof message !== 'string') problem = `host.log got message ${show(message)}, not a string`;
    else if (!Array.isArray(fields) || !fields.every((f) => Array.isArray(f) && typeof f[0] === 'string' && typeof f[1] === 'string')) {
      problem = `host.log got fields ${show(fields)}, not a list<tuple<string, string>>`;
    }
    if (problem !== null) {
      this.trapped(problem);
      throw new GuestTrap(problem);
    }
    this.logs.push({ level, message, fields: Object.fromEntries(fields) });
  }

  track(fd) {
    this._fds.add(fd);
  }

  mutating(action, hostPath) {
    if (this._caller !== null && this._caller.probe) {
      this._violations.push(`a probe instance tried to ${action} ${hostPath}`);
      const e = new Error('not-permitted');
      e.payload = 'not-permitted';
      throw e;
    }
  }

  trapped(message) {
    this._traps.push(message);
  }
}

function configText(config) {
  return typeof config === 'string' ? config : JSON.stringify(config ?? null);
}

function snapshotProblem(s) {
  if (s === null || s === undefined) return null;
  if (!isBytes(s)) return `returned ${show(s)}, not an option<list<u8>>`;
  if (s.length > sdk.MAX_SNAPSHOT) return `returned a ${s.length}-byte snapshot; the runtime takes at most ${sdk.MAX_SNAPSHOT}`;
  return null;
}

function isSinkError(e) {
  return e instanceof sdk.Backpressure || e instanceof sdk.Retryable || e instanceof sdk.Fatal;
}
