// Types of sinkbox-sdk.js: write Sinkbox sinks in JavaScript
// (contract sinkbox:sink@0.2.0). See README.md.

/** Largest snapshot the runtime accepts from `flush` (64 KiB). */
export const MAX_SNAPSHOT: number;

// --- Errors: one class per `sink-error` case. ---

/** The destination is overloaded: the runtime aborts, waits, replays. */
export class Backpressure extends Error {
  constructor(retryAfterMs: number, message?: string);
  /** How long the runtime should wait (capped by the operator's max_wait). */
  retryAfterMs: number;
}

/** A transient failure: the runtime drops the instance, backs off, replays. */
export class Retryable extends Error {
  constructor(message: string);
}

/**
 * One record can never be written: it goes to the dead-letter queue with
 * `reason`. Name the record (or its offset) unless you throw from
 * `add(record)` or `prepare(record)`, where the SDK knows it.
 */
export class Rejected extends Error {
  constructor(reason: string, record?: Record | { offset: bigint | number } | bigint | number);
  /** The record's offset, or undefined when not named. */
  offset: bigint | undefined;
}

/** One rejected record. */
export interface Rejection {
  offset: bigint;
  reason: string;
}

/** Several records can never be written. */
export class RejectedRecords extends Error {
  constructor(rejections: Iterable<Rejected | [bigint | number, string] | { offset: bigint | number; reason: string }>);
  rejections: Rejection[];
}

/** The instance is broken: the runtime replaces it and replays. */
export class Fatal extends Error {
  constructor(message: string);
}

/** A wasi:filesystem call failed; `code` is the WASI error code ('no-entry', 'access', ...). */
export class FileError extends Error {
  constructor(action: string, path: string, code: string);
  path: string;
  code: string;
}

// --- UTF-8 (QuickJS has no TextEncoder/TextDecoder). ---

/** Decodes UTF-8; malformed input throws a TypeError naming the byte. */
export function utf8Decode(bytes: Uint8Array): string;
/** Encodes text as UTF-8; a lone surrogate becomes U+FFFD. */
export function utf8Encode(text: string): Uint8Array;

// --- Records and batches. ---

/** One record of a batch. */
/** The header a source sets on a record whose value was null (a Kafka tombstone). */
export const TOMBSTONE_HEADER: "sinkbox.tombstone";

export class Record {
  /** The topic the record comes from (for a file source, its path). */
  readonly topic: string;
  /** The partition within the topic. */
  readonly partition: number;
  /** Position of the record in its partition, exact over the whole u64 range. */
  readonly offset: bigint;
  /** Milliseconds since the Unix epoch, or null. */
  readonly timestamp: number | null;
  /** The key, or null when the record has none. */
  readonly key: Uint8Array | null;
  readonly value: Uint8Array;
  /** `[name, value]` pairs; a name that is not UTF-8 throws `Rejected`. */
  readonly headers: Array<[string, Uint8Array]>;
  /** The batch the record came in. */
  readonly batch: Batch;
  /** The value of the first header called `name`, or undefined. */
  header(name: string): Uint8Array | undefined;
  /** Whether the source record had no value (a Kafka tombstone): the value
   * is empty and the header `sinkbox.tombstone` is set. */
  readonly tombstone: boolean;
  /** The value as text; malformed UTF-8 throws `Rejected` for this record. */
  text(): string;
  /** The key as text, or null; malformed UTF-8 throws `Rejected`. */
  keyText(): string | null;
  /** The value parsed as JSON; a value that is not JSON throws `Rejected`. */
  json(): any;
}

/** Records of one topic partition, in offset order, as `add` received them. */
export class Batch implements Iterable<Record> {
  constructor(topic: string, partition: number, records: Record[]);
  readonly topic: string;
  readonly partition: number;
  readonly records: Record[];
  readonly length: number;
  readonly firstOffset: bigint | undefined;
  readonly lastOffset: bigint | undefined;
  [Symbol.iterator](): Iterator<Record>;
}

/** Decodes the packed batch encoding of wit/types.wit; a malformed buffer throws `Fatal`. */
export function decodeBatch(topic: string, partition: number, count: number, data: Uint8Array): Batch;

// --- What an instance serves. ---

/** The fields of the WIT `context` record, as `open` receives them. */
export interface ContextFields {
  pipeline?: string;
  sink?: string;
  topic?: string;
  partition?: number;
  lane?: number;
  lanes?: number;
  workerIndex?: number;
  workerCount?: number;
  snapshot?: Uint8Array | ArrayLike<number> | null;
  probe?: boolean;
}

/** What an instance serves, given to `open` (and kept at `sink.context`). */
export class Context {
  constructor(fields: ContextFields);
  /** The pipeline's name. */
  readonly pipeline: string;
  /** The sink's name in the pipeline. */
  readonly sink: string;
  /** The topic served, or '' when the first batch will name it. */
  readonly topic: string;
  /** The partition served. */
  readonly partition: number;
  /** The lane within the partition, 0 <= lane < lanes. */
  readonly lane: number;
  /** How many lanes the partition is spread over. */
  readonly lanes: number;
  /** This instance's index among the sink's instances in this process. */
  readonly workerIndex: number;
  /** How many instances of the sink this process runs. */
  readonly workerCount: number;
  /** The last committed snapshot, or undefined when nothing was committed. */
  readonly snapshot: Uint8Array | undefined;
  /** A probe instance: it only gets `add`, `abort`, `close`, and must touch nothing. */
  readonly probe: boolean;
  /** The snapshot parsed as JSON, or undefined; a snapshot that is not JSON throws `Fatal`. */
  snapshotJson(): any;
  /** Fills {partition}, {lane}, {pipeline} and {sink}; any other {name} throws `Fatal`. */
  expand(template: string): string;
}

/** Encodes a value as a JSON snapshot. */
export function jsonSnapshot(value: unknown): Uint8Array;

/** Logs to the host, attributed to this sink; field values become strings. */
export function log(level: 'trace' | 'debug' | 'info' | 'warn' | 'error', message: string, fields?: { [name: string]: unknown }): void;

// --- Sinks. ---

/** Counts since the previous `status` call; every field optional (0). */
export interface Status {
  written?: number | bigint;
  warnings?: number | bigint;
  filtered?: number | bigint;
  failures?: number | bigint;
  custom?: { [name: string]: number | bigint } | Array<[string, number | bigint]>;
}

/**
 * Base class of a sink. The calls, in contract order: `open` once, then
 * `addBatch`/`add`, `flush` (then `snapshot` when flush returned nothing,
 * then `status`) and `abort` in any order, then `close`. Throw the SDK's
 * errors; any other exception is reported as `fatal`.
 */
export class Sink {
  /** JSON Schema (draft 2020-12) of the config, or null. */
  static configSchema: object | null;
  /** The instance's context, set before `open`. */
  context: Context;
  /** Prepare to receive records; `config` is the parsed JSON config. */
  open(config: any, context: Context): void;
  /** Take one record; throw `Rejected` to dead-letter it. */
  add(record: Record): void;
  /** Take a batch: `add` per record by default, collecting `Rejected`. */
  addBatch(batch: Batch): void;
  /** Make everything taken since the last flush durable; may return the snapshot. */
  flush(): Uint8Array | null | undefined | void;
  /** The snapshot to commit, asked for when `flush` returned none. */
  snapshot(): Uint8Array | null | undefined | void;
  /** Counts since the previous call, or nothing. */
  status(): Status | null | undefined | void;
  /** Drop everything taken since the last flush; it will be replayed. Must not throw. */
  abort(): void;
  /** Release resources. */
  close(): void;
}

/** What `BatchingSink.write` gets: the items of one topic partition since the last flush, never empty. */
export class SinkBatch<T = Record> implements Iterable<T> {
  constructor(topic: string, partition: number);
  readonly topic: string;
  readonly partition: number;
  /** What `prepare` returned for each record kept (the records unless `prepare` is overridden). */
  readonly items: T[];
  /** The offset of each item. */
  readonly offsets: bigint[];
  readonly length: number;
  readonly firstOffset: bigint;
  readonly lastOffset: bigint;
  [Symbol.iterator](): Iterator<T>;
}

/**
 * Buffers records per (topic, partition) and writes them at `flush`
 * (Quix Streams' BatchingSink model): override `open` and `write`.
 * `status` reports written and filtered counts.
 */
export class BatchingSink<T = Record> extends Sink {
  /** What to buffer for a record (the record by default); undefined/null skips it (filtered); throw `Rejected` to dead-letter it. */
  prepare(record: Record): T | null | undefined;
  /** Write one batch durably; throw `Rejected` naming a record, or `RejectedRecords`, for records the destination refused. */
  write(batch: SinkBatch<T>): void;
  /** How many items are buffered. */
  readonly buffered: number;
  flush(): void;
  status(): { written: number; filtered: number };
}

/** The object to export as `sink` from the entry module. */
export interface ExportedSink {
  configSchema(): string | null;
  open(config: string, context: ContextFields): void;
  add(batch: { topic: string; partition: number; count: number; data: Uint8Array }): void;
  flush(): Uint8Array | null;
  status(): { written: number; warnings: number; filtered: number; failures: number; custom: Array<[string, number]> } | null;
  abort(): void;
  close(): void;
  /** The class this object serves. */
  readonly sinkClass: typeof Sink;
}

/** Turns a `Sink` subclass into the object to export as `sink`. */
export function exportSink(SinkClass: new () => Sink): ExportedSink;

/** The WIT `sink-error` value a thrown error becomes in `call`. */
export function lowerError(
  error: unknown,
  call: 'open' | 'add' | 'flush' | 'close',
):
  | { tag: 'backpressure'; val: number }
  | { tag: 'retryable'; val: string }
  | { tag: 'rejected'; val: Array<{ offset: number; reason: string }> }
  | { tag: 'fatal'; val: string };

// --- Files in the granted directories. ---

/** A wasi:filesystem descriptor (opaque here). */
export type Descriptor = any;

export const files: {
  /** The preopened directory holding `path`, and the path relative to it; throws `Fatal` outside them. */
  resolve(path: string): [Descriptor, string];
  /** Opens `path` for reading and writing; `create` makes it if missing. */
  open(path: string, create?: boolean): Descriptor;
  /** Size and type of `path` (not following a symlink), or null if it does not exist. */
  stat(path: string): { size: number; type: string } | null;
  /** Whether `path` names the file `descriptor` holds, rather than one put in its place. */
  holds(path: string, descriptor: Descriptor): boolean;
  /** The size of `path` in bytes; throws `FileError` when it cannot tell (a missing file included). */
  size(path: string): number;
  /** The whole file, or null if it does not exist. */
  read(path: string): Uint8Array | null;
  /** Writes bytes (or text) at `offset`, then syncs the data. */
  writeAt(path: string, offset: number, bytes: Uint8Array | string): void;
  /** Cuts or extends the file to `size` bytes. */
  truncate(path: string, size: number): void;
  /** Replaces the file's contents through a temporary file and a rename. */
  replace(path: string, bytes: Uint8Array | string): void;
};

/**
 * An append-only output file kept exactly once with runtime snapshots
 * (`{"len": N, "path": P}`). Create it in `open`; `append` at flush; return
 * `snapshot()` from the sink's `snapshot` (or `flush`); `rollback()` from
 * `abort`. A probe touches nothing.
 */
export class OutputFile {
  constructor(path: string, context: Context);
  /** The path with its placeholders filled in. */
  readonly path: string;
  readonly probe: boolean;
  /** Bytes in the file as this sink wrote them (committed or not). */
  readonly length: number;
  /** Throws `Fatal` unless the file at the path is the one this sink wrote, `length` bytes long. */
  check(): void;
  /** Checks, then writes `data` at the end and syncs. */
  append(data: Uint8Array | string): void;
  /** The snapshot naming the current length; marks it as flushed for `rollback`. */
  snapshot(): Uint8Array;
  /** Cuts off what was appended since the last `snapshot`. */
  rollback(): void;
}
