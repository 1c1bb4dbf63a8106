// Types of sinkbox-sdk/testing.js: run a sink under `node --test` without a
// component build. See README.md.

import type * as Sdk from '../sinkbox-sdk.js';

/** The SDK module, loaded through the stand-ins. */
export const sdk: typeof Sdk;

/** What would trap the guest in a real runtime (the instance is dropped). */
export class GuestTrap extends Error {}

/** A call the runtime never makes, or an answer it would refuse. */
export class ContractViolation extends Error {}

/** A record to feed; the host gives it its offset. Bytes, text (UTF-8), or anything else (JSON). */
export class Message {
  constructor(
    value: unknown,
    options?: {
      key?: unknown;
      headers?: Array<[string, unknown]> | { [name: string]: unknown };
      timestamp?: number | bigint | null;
    },
  );
  readonly value: Uint8Array;
  readonly key: Uint8Array | null;
  readonly headers: Array<[string, Uint8Array]>;
  readonly timestamp: number | bigint | null;
}

/** A value `FakeHost.add` accepts per record: a `Message`, bytes, text, or anything else (JSON). */
export type Value = Message | Uint8Array | string | unknown;

/** Packs `[offset, message]` pairs in the contract's batch encoding. */
export function encode(records: Iterable<[bigint | number, Value]>): { data: Uint8Array; count: number };

/** A decoded `Batch` of `values` (offsets from `firstOffset`), as `addBatch` gets it. */
export function makeBatch(values: Value[], options?: { topic?: string; partition?: number; firstOffset?: bigint | number }): Sdk.Batch;

/** A `Context` with test defaults. */
export function makeContext(fields?: Sdk.ContextFields): Sdk.Context;

export interface FakeHostOptions {
  topic?: string;
  partition?: number;
  lane?: number;
  lanes?: number;
  pipeline?: string;
  sinkName?: string;
  workerIndex?: number;
  workerCount?: number;
  /** Offset of the first record fed (default 0). */
  firstOffset?: bigint | number;
  /** Granted directories: guest path to host directory, or null for a fresh temporary one. */
  dirs?: { [guestPath: string]: string | null };
}

/** The runtime, for one sink serving one topic partition and lane. */
export class FakeHost {
  /** `sink`: the exported object (`exportSink(...)`) or a `Sink` subclass; `config`: a JSON value or a string. */
  constructor(sink: Sdk.ExportedSink | (new () => Sdk.Sink), config?: unknown, options?: FakeHostOptions);
  config: unknown;
  readonly topic: string;
  readonly partition: number;
  /** The snapshot of the last committed checkpoint. */
  snapshot: Uint8Array | undefined;
  /** Every record rejected so far. */
  readonly deadLetters: Sdk.Rejection[];
  /** The sum of the sink's status reports. */
  readonly status: { written: number; warnings: number; filtered: number; failures: number; custom: { [name: string]: number } };
  /** Log lines. */
  readonly logs: Array<{ level: string; message: string; fields: { [name: string]: string } }>;
  /** How many instances were opened successfully. */
  readonly opened: number;
  /** Granted directories: [guest path, host path]. */
  readonly dirs: Array<[string, string]>;
  readonly isOpen: boolean;
  /** The records fed since the last commit: what a replay sends again. */
  readonly uncommitted: Array<[bigint, Message]>;

  configSchema(): object | undefined;
  /** Opens a fresh instance with the committed snapshot (a first open also flushes and commits an initial snapshot). */
  open(config?: unknown): void;
  /** Feeds values in one batch; returns the rejections. */
  add(values: Iterable<Value>): Sdk.Rejection[];
  /** Sends the records not flushed since the last commit again. */
  replay(): Sdk.Rejection[];
  /** Flushes and (unless `commit: false`) commits; returns the rejections. */
  flush(options?: { commit?: boolean }): Sdk.Rejection[];
  abort(): void;
  close(): void;
  /** Drops the instance without calling anything. */
  crash(): void;
  /** `crash`, `open`, `replay`. */
  restart(): Sdk.Rejection[];
  /** Runs a probe instance beside the live one; returns the error it met, or undefined. */
  probe(values?: Array<[bigint | number, Value]>): Sdk.Backpressure | Sdk.Retryable | Sdk.Fatal | undefined;
  /** Feeds values as the runtime runs a pipeline, recovering from errors as it does. */
  run(values: Iterable<Value>, options?: { batchSize?: number; batchesPerCheckpoint?: number; attempts?: number; close?: boolean }): void;
  /** The host path of a guest path inside a granted directory. */
  path(guestPath: string): string;
  /** The file at a guest path as text, or null if it does not exist. */
  readText(guestPath: string): string | null;
  /** Closes files left open and removes temporary directories. */
  dispose(): void;
}
