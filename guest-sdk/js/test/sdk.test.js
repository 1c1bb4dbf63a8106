// The SDK's core: UTF-8, the batch decoder, records, the context, and the
// glue that maps a Sink onto the WIT exports.

import test from 'node:test';
import assert from 'node:assert/strict';
import { FakeHost, encode, makeBatch, makeContext, Message as RecordMessage, sdk } from '../sinkbox-sdk/testing.js';

const { Backpressure, Fatal, Rejected, RejectedRecords, Retryable, Sink, TOMBSTONE_HEADER, decodeBatch, exportSink, lowerError, utf8Decode, utf8Encode } = sdk;

// Decodes with the reference decoder that refuses malformed input.
const reference = (bytes) => {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
};
const ours = (bytes) => {
  try {
    return utf8Decode(bytes);
  } catch (e) {
    assert.ok(e instanceof TypeError);
    assert.match(e.message, /^invalid UTF-8 at byte \d+$/);
    return undefined;
  }
};

test('utf8Decode agrees with a strict decoder on valid and malformed input', () => {
  const cases = [
    [],
    [0x41, 0x42],
    [0xc3, 0xa9], // é
    [0xe2, 0x82, 0xac], // €
    [0xf0, 0x9f, 0x98, 0x80], // 😀
    [0xf4, 0x8f, 0xbf, 0xbf], // U+10FFFF
    [0x80], // a lone continuation byte
    [0xc0, 0x80], // an overlong NUL
    [0xc1, 0xbf], // overlong
    [0xe0, 0x80, 0x80], // overlong
    [0xe0, 0x9f, 0xbf], // overlong
    [0xed, 0xa0, 0x80], // a surrogate, U+D800
    [0xed, 0xbf, 0xbf], // a surrogate, U+DFFF
    [0xf0, 0x80, 0x80, 0x80], // overlong
    [0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
    [0xf5, 0x80, 0x80, 0x80],
    [0xff],
    [0xc3], // cut short
    [0xe2, 0x82], // cut short
    [0xf0, 0x9f, 0x98], // cut short
    [0x61, 0xc3, 0x28], // bad continuation
  ];
  for (const bytes of cases) {
    const input = Uint8Array.from(bytes);
    assert.equal(ours(input), reference(input), `bytes ${bytes.map((b) => b.toString(16)).join(' ')}`);
  }
});

test('utf8Decode agrees with a strict decoder on random bytes', () => {
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  const alphabet = [0x41, 0x7f, 0x80, 0xbf, 0xc2, 0xc3, 0xdf, 0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xa0, 0x9f, 0x90, 0x8f];
  for (let n = 0; n < 20000; n++) {
    const input = Uint8Array.from({ length: random() % 8 }, () => alphabet[random() % alphabet.length]);
    assert.equal(ours(input), reference(input), `bytes ${[...input].map((b) => b.toString(16)).join(' ')}`);
  }
});

test('utf8Decode handles long text past its chunk size', () => {
  const text = 'aé€😀'.repeat(10000) + 'x'.repeat(20000);
  assert.equal(utf8Decode(new Uint8Array(Buffer.from(text))), text);
  const ascii = 'y'.repeat(50000);
  assert.equal(utf8Decode(new Uint8Array(Buffer.from(ascii))), ascii);
});

test('utf8Encode matches TextEncoder, lone surrogates included', () => {
  for (const text of ['', 'abc', 'é€😀', 'a\ud800b', '\udc00', 'x\ud83d', 'x'.repeat(5000) + '😀']) {
    assert.deepEqual(utf8Encode(text), new TextEncoder().encode(text), JSON.stringify(text));
  }
});

test('records carry topic, partition, BigInt offsets, keys, headers and timestamps', () => {
  const big = 2n ** 53n + 1n;
  const { data, count } = encode([
    [big, new RecordMessage('{"a":1}', { key: 'k', headers: [['h', 'v'], ['h2', new Uint8Array([0xff])]], timestamp: 1700000000123 })],
    [big + 1n, new RecordMessage('plain')],
  ]);
  const batch = decodeBatch('orders', 3, count, data);
  assert.equal(batch.topic, 'orders');
  assert.equal(batch.partition, 3);
  assert.equal(batch.length, 2);
  assert.equal(batch.firstOffset, big);
  assert.equal(batch.lastOffset, big + 1n);
  const [a, b] = batch.records;
  assert.equal(typeof a.offset, 'bigint');
  assert.equal(a.offset, 9007199254740993n);
  assert.equal(a.topic, 'orders');
  assert.equal(a.partition, 3);
  assert.equal(a.timestamp, 1700000000123);
  assert.equal(a.keyText(), 'k');
  assert.deepEqual(a.json(), { a: 1 });
  assert.deepEqual(
    a.headers.map(([n, v]) => [n, [...v]]),
    [
      ['h', [0x76]],
      ['h2', [0xff]],
    ],
  );
  assert.deepEqual([...a.header('h2')], [0xff]);
  assert.equal(a.header('nope'), undefined);
  assert.equal(b.key, null);
  assert.equal(b.keyText(), null);
  assert.equal(b.timestamp, null);
  assert.deepEqual(b.headers, []);
  assert.equal(b.text(), 'plain');
  assert.deepEqual([...batch].map((r) => r.offset), [big, big + 1n]);
});

test('a value that is not UTF-8 or not JSON rejects its record', () => {
  const batch = makeBatch([new Uint8Array([0x7b, 0xff]), 'not json', new RecordMessage('x', { key: new Uint8Array([0xc0]) })], { firstOffset: 7n });
  const [bad, notJson, badKey] = batch.records;
  assert.throws(
    () => bad.text(),
    (e) => e instanceof Rejected && e.offset === 7n && /^value is not UTF-8: invalid UTF-8 at byte 1$/.test(e.message),
  );
  assert.throws(() => bad.json(), (e) => e instanceof Rejected && e.offset === 7n);
  assert.throws(() => notJson.json(), (e) => e instanceof Rejected && e.offset === 8n && /^value is not JSON: /.test(e.message));
  assert.throws(() => badKey.keyText(), (e) => e instanceof Rejected && e.offset === 9n && /^key is not UTF-8/.test(e.message));
});

test('a header name that is not UTF-8 rejects its record', () => {
  const batch = makeBatch([new RecordMessage('v', { headers: [['ok', 'x']] })]);
  // Corrupt the header name in place: the one byte of "ok"'s first letter.
  const record = batch.records[0];
  const at = record.value.byteOffset + record.value.length + 4;
  record._data[at] = 0xff;
  assert.throws(() => record.headers, (e) => e instanceof Rejected && e.offset === 0n && /header name is not UTF-8/.test(e.message));
});

test('the decoder refuses a batch cut at any byte, and one with bytes left over', () => {
  const { data, count } = encode([
    [0n, new RecordMessage('value', { key: 'key', headers: [['name', 'v']] })],
    [1n, new RecordMessage('x')],
  ]);
  assert.equal(decodeBatch('t', 0, count, data).length, 2);
  for (let cut = 0; cut < data.length; cut++) {
    assert.throws(() => decodeBatch('t', 0, count, data.subarray(0, cut)), Fatal, `cut at ${cut}`);
  }
  const longer = new Uint8Array(data.length + 1);
  longer.set(data);
  assert.throws(() => decodeBatch('t', 0, count, longer), /1 bytes left over/);
  assert.throws(() => decodeBatch('t', 0, 3, data), /record 2 is cut short/);
});

test('the context carries what the instance serves, snapshot as a Uint8Array or undefined', () => {
  const none = makeContext({ snapshot: null });
  assert.equal(none.snapshot, undefined);
  assert.equal(none.snapshotJson(), undefined);
  const ctx = makeContext({ partition: 4, lane: 1, lanes: 2, snapshot: [0x7b, 0x7d], probe: true, workerIndex: 3, workerCount: 8 });
  assert.ok(ctx.snapshot instanceof Uint8Array);
  assert.deepEqual(ctx.snapshotJson(), {});
  assert.equal(ctx.probe, true);
  assert.equal(ctx.workerIndex, 3);
  assert.equal(ctx.workerCount, 8);
  assert.equal(ctx.expand('/out/{pipeline}-{sink}-{partition}-{lane}.csv'), '/out/test-sink-4-1.csv');
  assert.throws(() => ctx.expand('/out/{topic}.csv'), (e) => e instanceof Fatal && /unknown placeholder \{topic\}/.test(e.message));
  assert.throws(() => makeContext({ snapshot: [0x7b] }).snapshotJson(), /is not JSON/);
});

// --- The glue, called as the runtime calls it. ---

const wireContext = (fields = {}) => ({
  pipeline: 'p',
  sink: 's',
  topic: 't',
  partition: 0,
  lane: 0,
  lanes: 1,
  workerIndex: 0,
  workerCount: 1,
  snapshot: null,
  probe: false,
  ...fields,
});
const wireBatch = (values, firstOffset = 0n) => {
  const { data, count } = encode(values.map((v, i) => [firstOffset + BigInt(i), v]));
  return { topic: 't', partition: 2, count, data };
};
const thrown = (f) => {
  try {
    f();
  } catch (e) {
    return e;
  }
  assert.fail('did not throw');
};

test('errors map onto sink-error variants of exactly the shape jco expects', () => {
  const cases = [
    [new Backpressure(250), { tag: 'backpressure', val: 250 }],
    [new Backpressure(-5), { tag: 'backpressure', val: 0 }],
    [new Backpressure(2 ** 40), { tag: 'backpressure', val: 0xffffffff }],
    [new Retryable('timeout'), { tag: 'retryable', val: 'timeout' }],
    [new Fatal('broken'), { tag: 'fatal', val: 'broken' }],
    [new Rejected('bad', 2n ** 53n - 1n), { tag: 'rejected', val: [{ offset: 2 ** 53 - 1, reason: 'bad' }] }],
    [new RejectedRecords([[3n, 'a'], { offset: 4, reason: 'b' }, new Rejected('c', 5n)]), { tag: 'rejected', val: [
      { offset: 3, reason: 'a' },
      { offset: 4, reason: 'b' },
      { offset: 5, reason: 'c' },
    ] }],
  ];
  for (const [error, variant] of cases) assert.deepEqual(lowerError(error, 'add'), variant);
  const inexact = lowerError(new RejectedRecords([[1n, 'fine'], [2n ** 53n + 1n, 'too far']]), 'add');
  assert.deepEqual(inexact, {
    tag: 'fatal',
    val: 'cannot reject the record at offset 9007199254740993: the QuickJS backend passes offsets past 2^53 inexactly (too far)',
  });
  const unnamed = lowerError(new Rejected('which one?'), 'flush');
  assert.equal(unnamed.tag, 'fatal');
  assert.match(unnamed.val, /without naming its record/);
  assert.deepEqual(lowerError(new RejectedRecords([]), 'add').tag, 'fatal');
  assert.match(lowerError(new Rejected('x', 1n), 'open').val, /^records rejected in open/);
  const other = lowerError(new TypeError('oops'), 'add');
  assert.equal(other.tag, 'fatal');
  assert.match(other.val, /^uncaught TypeError: oops\n/);
  assert.deepEqual(lowerError('a string', 'add'), { tag: 'fatal', val: 'uncaught string: a string' });
  for (const [error] of cases) assert.deepEqual(Object.keys(lowerError(error, 'flush')), ['tag', 'val']);
});

test('the glue opens with the parsed config and a Context, decodes batches, and rejects from add by record', () => {
  const seen = [];
  class Probe extends Sink {
    static configSchema = { type: 'object' };
    open(config, context) {
      seen.push(['open', config, context instanceof sdk.Context, context === this.context, context.snapshot, context.partition]);
    }
    add(record) {
      if (record.text() === 'bad') throw new Rejected('no bad values');
      seen.push(['add', record.topic, record.partition, record.offset, record.text()]);
    }
  }
  const glue = exportSink(Probe);
  assert.equal(glue.sinkClass, Probe);
  assert.equal(glue.configSchema(), '{"type":"object"}');
  glue.open('{"a":1}', wireContext({ partition: 2 }));
  const e = thrown(() => glue.add(wireBatch(['ok', 'bad', 'fine'], 10n)));
  assert.deepEqual(e, { tag: 'rejected', val: [{ offset: 11, reason: 'no bad values' }] });
  assert.deepEqual(seen, [
    ['open', { a: 1 }, true, true, undefined, 2],
    ['add', 't', 2, 10n, 'ok'],
    ['add', 't', 2, 12n, 'fine'],
  ]);
  assert.equal(glue.flush(), null);
  assert.equal(glue.status(), null);
});

test('flush returns its snapshot, or asks snapshot(); status becomes Numbers', () => {
  class Snap extends Sink {
    open(config) {
      this.mode = config.mode;
    }
    add() {}
    flush() {
      if (this.mode === 'flush') return new Uint8Array([1, 2]);
      if (this.mode === 'huge') return new Uint8Array(64 * 1024 + 1);
      if (this.mode === 'string') return 'nope';
    }
    snapshot() {
      return new Uint8Array([9]);
    }
    status() {
      return { written: 5n, filtered: 2, custom: { retries: 3n } };
    }
  }
  const open = (mode) => {
    const glue = exportSink(Snap);
    glue.open(JSON.stringify({ mode }), wireContext());
    return glue;
  };
  assert.deepEqual([...open('flush').flush()], [1, 2]);
  assert.deepEqual([...open('snapshot').flush()], [9]);
  assert.match(thrown(() => open('huge').flush()).val, /snapshot of 65537 bytes; the limit is 65536/);
  assert.match(thrown(() => open('string').flush()).val, /a snapshot is a Uint8Array/);
  assert.deepEqual(open('flush').status(), { written: 5, warnings: 0, filtered: 2, failures: 0, custom: [['retries', 3]] });
});

test('the glue reports a config that is not JSON, calls before open, and leaves nothing after close', () => {
  class Nothing extends Sink {}
  const glue = exportSink(Nothing);
  assert.deepEqual(thrown(() => glue.add(wireBatch(['x']))), { tag: 'fatal', val: 'sink called before a successful open' });
  const e = thrown(() => glue.open('{', wireContext()));
  assert.equal(e.tag, 'fatal');
  assert.match(e.val, /^config is not JSON: /);
  glue.open('null', wireContext());
  assert.match(thrown(() => glue.add(wireBatch(['x']))).val, /overrides neither add\(record\) nor addBatch\(batch\)/);
  glue.close();
  assert.deepEqual(thrown(() => glue.flush()), { tag: 'fatal', val: 'sink called before a successful open' });
});

test('abort and status never throw, as their WIT signatures require: they log', () => {
  class Throws extends Sink {
    add() {}
    abort() {
      throw new Error('abort broke');
    }
    status() {
      throw new Error('status broke');
    }
  }
  const host = new FakeHost(Throws, {});
  host.open(); // a first open: an empty flush, then status
  host.abort();
  assert.deepEqual(
    host.logs.map((l) => [l.level, l.message]),
    [
      ['error', 'status failed: status broke'],
      ['error', 'abort failed: abort broke'],
    ],
  );
  host.close();
});

test('log sends level, message and string fields to the host', () => {
  class Logs extends Sink {
    open(config, context) {
      sdk.log('info', 'opened', { partition: context.partition, big: 2n ** 64n });
    }
  }
  const host = new FakeHost(Logs, {}, { partition: 3 });
  host.open();
  assert.deepEqual(host.logs, [{ level: 'info', message: 'opened', fields: { partition: '3', big: '18446744073709551616' } }]);
});

test('a tombstone is flagged by its header', () => {
  const batch = makeBatch([
    new RecordMessage('', { key: 'gone', headers: [[TOMBSTONE_HEADER, '']] }),
    new RecordMessage('{"a":1}'),
  ]);
  const [gone, kept] = batch.records;
  assert.equal(gone.tombstone, true);
  assert.equal(gone.value.length, 0);
  assert.equal(kept.tombstone, false);
});
