// BatchingSink: buffers per (topic, partition), prepare at add, write at
// flush, cleared on abort, counts in status.

import test from 'node:test';
import assert from 'node:assert/strict';
import { FakeHost, encode, makeBatch, sdk } from '../sinkbox-sdk/testing.js';

const { BatchingSink, Fatal, Rejected, RejectedRecords, SinkBatch, exportSink } = sdk;

// Records what write got: [topic, partition, firstOffset, lastOffset, items].
class Recorder extends BatchingSink {
  open(config) {
    this.writes = [];
    this.config = config;
  }
  write(batch) {
    assert.ok(batch instanceof SinkBatch);
    this.writes.push([batch.topic, batch.partition, batch.firstOffset, batch.lastOffset, batch.items.map((r) => r.text())]);
  }
}

function opened(SinkClass, config = {}) {
  const sink = new SinkClass();
  sink.open(config, undefined);
  return sink;
}

test('a destination sink writes only open and write: one batch per topic partition at flush', () => {
  const sink = opened(Recorder);
  sink.addBatch(makeBatch(['a', 'b'], { topic: 'orders', partition: 1, firstOffset: 10n }));
  sink.addBatch(makeBatch(['x'], { topic: 'orders', partition: 0, firstOffset: 5n }));
  sink.addBatch(makeBatch(['c'], { topic: 'orders', partition: 1, firstOffset: 12n }));
  sink.addBatch(makeBatch(['y'], { topic: 'refunds', partition: 1, firstOffset: 0n }));
  assert.equal(sink.buffered, 5);
  assert.deepEqual(sink.writes, []);
  sink.flush();
  assert.deepEqual(sink.writes, [
    ['orders', 1, 10n, 12n, ['a', 'b', 'c']],
    ['orders', 0, 5n, 5n, ['x']],
    ['refunds', 1, 0n, 0n, ['y']],
  ]);
  assert.equal(sink.buffered, 0);
  sink.flush();
  assert.equal(sink.writes.length, 3, 'nothing buffered, nothing written');
  assert.deepEqual(sink.status(), { written: 5, filtered: 0 });
  assert.deepEqual(sink.status(), { written: 0, filtered: 0 }, 'counts since the previous call');
});

test('abort drops the buffers', () => {
  const sink = opened(Recorder);
  sink.addBatch(makeBatch(['a', 'b']));
  sink.abort();
  assert.equal(sink.buffered, 0);
  sink.addBatch(makeBatch(['c'], { firstOffset: 2n }));
  sink.flush();
  assert.deepEqual(sink.writes, [['topic', 0, 2n, 2n, ['c']]]);
});

test('prepare turns records into items, skips (filtered) and rejects at add', () => {
  class Prepared extends Recorder {
    prepare(record) {
      const value = record.json();
      if (value.skip) return undefined;
      if (value.bad) throw new Rejected('bad record');
      return value.n;
    }
    write(batch) {
      this.writes.push([batch.firstOffset, batch.lastOffset, [...batch]]);
    }
  }
  const sink = opened(Prepared);
  assert.throws(
    () => sink.addBatch(makeBatch([{ n: 1 }, { skip: true }, { bad: true }, 'not json', { n: 2 }])),
    (e) =>
      e instanceof RejectedRecords &&
      e.rejections.length === 2 &&
      e.rejections[0].offset === 2n &&
      e.rejections[0].reason === 'bad record' &&
      e.rejections[1].offset === 3n &&
      /^value is not JSON/.test(e.rejections[1].reason),
  );
  sink.flush();
  assert.deepEqual(sink.writes, [[0n, 4n, [1, 2]]]);
  assert.deepEqual(sink.status(), { written: 2, filtered: 1 });
});

test('a batch whose records are all skipped writes nothing', () => {
  class SkipAll extends Recorder {
    prepare() {
      return null;
    }
  }
  const sink = opened(SkipAll);
  sink.addBatch(makeBatch(['a', 'b']));
  sink.flush();
  assert.deepEqual(sink.writes, []);
  assert.deepEqual(sink.status(), { written: 0, filtered: 2 });
});

test('write rejections are reported after every batch was written; the rest count as written', () => {
  class Refuses extends Recorder {
    write(batch) {
      super.write(batch);
      if (batch.partition === 0) throw new RejectedRecords([[batch.firstOffset, 'refused by the destination']]);
      if (batch.partition === 1) throw new Rejected('one bad', batch.items[0]);
    }
  }
  const sink = opened(Refuses);
  sink.addBatch(makeBatch(['a', 'b'], { partition: 0 }));
  sink.addBatch(makeBatch(['c'], { partition: 1, firstOffset: 7n }));
  sink.addBatch(makeBatch(['d'], { partition: 2 }));
  assert.throws(
    () => sink.flush(),
    (e) => e instanceof RejectedRecords && e.rejections.map((r) => [r.offset, r.reason]).join('|') === '0,refused by the destination|7,one bad',
  );
  assert.equal(sink.writes.length, 3);
  assert.equal(sink.buffered, 0);
  assert.deepEqual(sink.status(), { written: 2, filtered: 0 });
});

test('write throwing Rejected without naming a record is fatal; any other error stops the flush', () => {
  class Unnamed extends Recorder {
    write() {
      throw new Rejected('which one?');
    }
  }
  const sink = opened(Unnamed);
  sink.addBatch(makeBatch(['a']));
  assert.throws(() => sink.flush(), (e) => e instanceof Fatal && /write rejected a record without naming it/.test(e.message));

  class Breaks extends Recorder {
    write(batch) {
      super.write(batch);
      if (batch.partition === 1) throw new sdk.Retryable('connection lost');
    }
  }
  const breaks = opened(Breaks);
  breaks.addBatch(makeBatch(['a'], { partition: 0 }));
  breaks.addBatch(makeBatch(['b'], { partition: 1 }));
  breaks.addBatch(makeBatch(['c'], { partition: 2 }));
  assert.throws(() => breaks.flush(), sdk.Retryable);
  assert.equal(breaks.writes.length, 2, 'stops at the failing batch');
  breaks.abort();
  assert.equal(breaks.buffered, 0);
  assert.deepEqual(breaks.status(), { written: 0, filtered: 0 }, 'a failed flush counts nothing');
});

test("an author's add decides per record and may call super.add", () => {
  class OwnAdd extends Recorder {
    add(record) {
      if (record.text() === 'drop') return;
      if (record.text() === 'bad') throw new Rejected('bad');
      super.add(record);
    }
  }
  const sink = opened(OwnAdd);
  assert.throws(() => sink.addBatch(makeBatch(['a', 'drop', 'bad', 'b'])), (e) => e instanceof RejectedRecords && e.rejections[0].offset === 2n);
  sink.flush();
  assert.deepEqual(sink.writes, [['topic', 0, 0n, 3n, ['a', 'b']]]);
});

test('through the glue, BatchingSink reports written and filtered in status', () => {
  class Counts extends BatchingSink {
    prepare(record) {
      return record.text() === 'skip' ? undefined : record;
    }
    write() {}
  }
  const host = new FakeHost(Counts, {});
  host.open();
  host.add(['a', 'skip', 'b']);
  host.flush();
  assert.deepEqual(host.status, { written: 2, warnings: 0, filtered: 1, failures: 0, custom: {} });
  host.close();
});

test('without write, a BatchingSink says so', () => {
  class NoWrite extends BatchingSink {}
  const glue = exportSink(NoWrite);
  glue.open('{}', { pipeline: '', sink: '', topic: '', partition: 0, lane: 0, lanes: 1, workerIndex: 0, workerCount: 1, snapshot: null, probe: false });
  const { data, count } = encode([[0n, 'a']]);
  glue.add({ topic: 't', partition: 0, count, data });
  assert.throws(() => glue.flush(), (e) => e.tag === 'fatal' && /NoWrite does not override write\(batch\)/.test(e.val));
});
