// The csv_sink example: CSV out, exactly once across crashes, with runtime
// snapshots and no state file.

import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { ContractViolation, FakeHost, makeBatch, makeContext, sdk } from '../sinkbox-sdk/testing.js';

const { sink } = await import('../examples/csv_sink/sink.js');
const CsvSink = sink.sinkClass;
const { Backpressure, Fatal, Retryable } = sdk;

const CONFIG = { path: '/out/x.csv', columns: ['n'] };
const expected = (n) => 'n\n' + Array.from({ length: n }, (_, i) => `${i}\n`).join('');

function hostFor(t, SinkClass = sink, config = CONFIG, options = {}) {
  const host = new FakeHost(SinkClass, config, { dirs: { '/out': null }, ...options });
  t.after(() => host.dispose());
  return host;
}

test('records {"n": OFFSET} become a CSV with header n and one line per record', (t) => {
  const host = hostFor(t);
  host.run(Array.from({ length: 25 }, (_, n) => ({ n })), { batchSize: 4, batchesPerCheckpoint: 2 });
  assert.equal(host.readText('/out/x.csv'), expected(25));
  assert.equal(host.status.written, 25);
  assert.deepEqual(host.deadLetters, []);
  assert.deepEqual(fs.readdirSync(host.path('/out')), ['x.csv'], 'no state file beside the output');
});

test('the config schema is offered', () => {
  const host = new FakeHost(sink, CONFIG);
  assert.deepEqual(host.configSchema().required, ['path', 'columns']);
});

test('a crash after an uncommitted flush: the reopened instance cuts back and the replay writes once', (t) => {
  const host = hostFor(t);
  host.open();
  host.add([{ n: 0 }, { n: 1 }]);
  host.flush();
  host.add([{ n: 2 }, { n: 3 }]);
  host.flush({ commit: false }); // written, but the checkpoint never committed
  assert.equal(host.readText('/out/x.csv'), expected(4));
  host.crash();
  host.open();
  assert.equal(host.readText('/out/x.csv'), expected(2), 'cut back to the committed snapshot');
  host.replay();
  host.add([{ n: 4 }]);
  host.flush();
  host.close();
  assert.equal(host.readText('/out/x.csv'), expected(5));
});

test('failures in flush are retried on fresh instances without duplicates', (t) => {
  const failed = new Set();
  class Flaky extends CsvSink {
    write(batch) {
      // Fails after writing, once for every other batch: the next instance cuts back.
      super.write(batch);
      if (batch.firstOffset % 6n === 0n && !failed.has(batch.firstOffset)) {
        failed.add(batch.firstOffset);
        throw new Retryable('lost the connection');
      }
    }
  }
  const host = hostFor(t, Flaky);
  host.run(Array.from({ length: 30 }, (_, n) => ({ n })), { batchSize: 3 });
  assert.equal(host.readText('/out/x.csv'), expected(30));
  assert.equal(failed.size, 5);
  assert.equal(host.opened, 6, 'every failure replaced the instance');
});

test('backpressure halfway through a flush: abort rolls the file back, the replay writes once', (t) => {
  const host = hostFor(t);
  let pushBack = true;
  class Pushy extends CsvSink {
    write(batch) {
      if (batch.topic === 'b' && pushBack) {
        pushBack = false;
        throw new Backpressure(10);
      }
      super.write(batch);
    }
  }
  const csv = new Pushy();
  csv.open(CONFIG, makeContext());
  csv.addBatch(makeBatch([{ n: 0 }], { topic: 'a' }));
  csv.addBatch(makeBatch([{ n: 1 }], { topic: 'b' }));
  assert.throws(() => csv.flush(), Backpressure);
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n', 'the first batch was written');
  csv.abort();
  assert.equal(host.readText('/out/x.csv'), '', 'cut back to the last snapshot: empty');
  csv.addBatch(makeBatch([{ n: 0 }], { topic: 'a' }));
  csv.addBatch(makeBatch([{ n: 1 }], { topic: 'b' }));
  csv.flush();
  assert.equal(host.readText('/out/x.csv'), expected(2));
});

test('bad records go to the dead-letter queue at add; the rest are written', (t) => {
  const host = hostFor(t);
  host.open();
  const rejected = host.add([{ n: 0 }, 'not json', [1, 2], new Uint8Array([0x7b, 0xff, 0x7d]), { n: 4 }]);
  assert.deepEqual(
    rejected.map((r) => [r.offset, r.reason.replace(/: .*/, '')]),
    [
      [1n, 'value is not JSON'],
      [2n, 'value is not a JSON object'],
      [3n, 'value is not UTF-8'],
    ],
  );
  host.flush();
  host.close();
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n4\n');
  assert.equal(host.deadLetters.length, 3);
});

test('cells are quoted as CSV needs', (t) => {
  const host = hostFor(t, sink, { path: '/out/x.csv', columns: ['a', 'b', 'c'] });
  host.run([{ a: 'plain', b: 'with,comma', c: 'with "quotes"' }, { a: 'two\nlines', b: { nested: [1] }, c: null }, { b: true }]);
  assert.equal(host.readText('/out/x.csv'), 'a,b,c\nplain,"with,comma","with ""quotes"""\n"two\nlines","{""nested"":[1]}",\n,true,\n');
});

test('a probe instance touches nothing', (t) => {
  const host = hostFor(t);
  host.open();
  host.add([{ n: 0 }]);
  host.flush();
  host.add([{ n: 1 }, { n: 2 }]);
  host.flush({ commit: false });
  const before = host.readText('/out/x.csv');
  // The probe gets the committed snapshot, shorter than the file: it must not cut it back.
  assert.equal(host.probe(), undefined);
  assert.equal(host.readText('/out/x.csv'), before);
  host.close();
});

test('a probe on a fresh pipeline creates no file', (t) => {
  const host = hostFor(t);
  assert.equal(host.probe([[0n, { n: 0 }]]), undefined);
  assert.deepEqual(fs.readdirSync(host.path('/out')), []);
});

test('a first run refuses an output that holds bytes it did not write', (t) => {
  const host = hostFor(t);
  fs.writeFileSync(host.path('/out/x.csv'), 'someone else\n');
  assert.throws(
    () => host.open(),
    (e) => e instanceof Fatal && e.message === 'output /out/x.csv already holds 13 bytes this pipeline did not write; remove it or choose another path',
  );
});

test('an output shorter than the snapshot fails the open; one changed under the sink fails the flush', (t) => {
  const host = hostFor(t);
  host.open();
  host.add([{ n: 0 }, { n: 1 }]);
  host.flush();
  fs.appendFileSync(host.path('/out/x.csv'), 'x\n');
  host.add([{ n: 2 }]);
  assert.throws(() => host.flush(), (e) => e instanceof Fatal && /is 8 bytes but the sink wrote 6: it was changed outside sinkbox/.test(e.message));
  assert.equal(host.isOpen, false, 'a fatal error drops the instance');
  fs.writeFileSync(host.path('/out/x.csv'), 'n\n');
  assert.throws(() => host.open(), (e) => e instanceof Fatal && /is 2 bytes but 6 were committed: it was truncated or replaced outside sinkbox/.test(e.message));
});

test('{partition} and {lane} name each instance its own file; a shared path is refused', (t) => {
  const config = { path: '/out/x-{partition}-{lane}.csv', columns: ['n'] };
  const a = hostFor(t, sink, config, { partition: 2, lane: 0, lanes: 2 });
  a.run([{ n: 0 }]);
  const b = new FakeHost(sink, config, { dirs: { '/out': a.path('/out') }, partition: 2, lane: 1, lanes: 2 });
  b.run([{ n: 1 }]);
  assert.equal(a.readText('/out/x-2-0.csv'), 'n\n0\n');
  assert.equal(a.readText('/out/x-2-1.csv'), 'n\n1\n');
  const shared = hostFor(t, sink, CONFIG, { lanes: 2 });
  assert.throws(() => shared.open(), (e) => e instanceof Fatal && /has no \{lane\} placeholder/.test(e.message));
});

test('the harness catches a probe that writes', (t) => {
  class Careless extends CsvSink {
    open(config, context) {
      super.open(config, context);
      if (context.probe) sdk.files.writeAt('/out/oops', 0, 'x');
    }
  }
  const host = hostFor(t, Careless);
  assert.throws(() => host.probe([[0n, { n: 0 }]]), (e) => e instanceof ContractViolation && /a probe instance tried to create .*oops/.test(e.message));
  assert.equal(fs.existsSync(host.path('/out/oops')), false);
});
