// The harness itself: it must fail a test where a QuickJS build would trap
// or the runtime would refuse an answer.

import test from 'node:test';
import assert from 'node:assert/strict';
import { ContractViolation, FakeHost, GuestTrap, Message, encode, sdk } from '../sinkbox-sdk/testing.js';

const { Sink, Fatal, Rejected, files } = sdk;

// A hand-made export (no SDK glue), for answers the glue never gives.
function raw(methods) {
  const make = () => ({
    configSchema: () => null,
    open() {},
    add() {},
    flush: () => null,
    status: () => null,
    abort() {},
    close() {},
    ...methods,
  });
  return { [Symbol.for('sinkbox-sdk.instance')]: make };
}

test('a thrown value that is not a sink-error is a trap, and the instance is dropped', () => {
  for (const value of [new Error('plain'), { tag: 'fatal' }, { tag: 'fatal', val: 'x', extra: 1 }, { tag: 'oops', val: 'x' }, { tag: 'rejected', val: [{ offset: 1n, reason: 'r' }] }, 'text']) {
    const host = new FakeHost(
      raw({
        add() {
          throw value;
        },
      }),
      {},
    );
    host.open();
    assert.throws(() => host.add(['a']), GuestTrap);
    assert.equal(host.isOpen, false);
  }
});

test('a BigInt where WIT has a u64 is a trap', () => {
  const host = new FakeHost(raw({ status: () => ({ written: 1n, warnings: 0, filtered: 0, failures: 0, custom: [] }) }), {});
  assert.throws(() => host.open(), (e) => e instanceof GuestTrap && /written = "1n", not a u64 Number/.test(e.message));

  class Careless extends Sink {
    open() {
      files.open('/out/f', true).setSize(5n);
    }
  }
  const other = new FakeHost(Careless, {}, { dirs: { '/out': null } });
  assert.throws(() => other.open(), (e) => e instanceof GuestTrap && /descriptor.set-size got a BigInt/.test(e.message));
  other.dispose();
});

test('a WASI stream write over 4096 bytes is a trap', () => {
  class Greedy extends Sink {
    open() {
      files.open('/out/f', true).writeViaStream(0).blockingWriteAndFlush(new Uint8Array(5000));
    }
  }
  const host = new FakeHost(Greedy, {}, { dirs: { '/out': null } });
  assert.throws(() => host.open(), (e) => e instanceof GuestTrap && /5000 bytes; the limit is 4096/.test(e.message));
  host.dispose();
});

test('calls the runtime never makes are contract violations', () => {
  const host = new FakeHost(Sink, {});
  assert.throws(() => host.flush(), ContractViolation);
  host.open();
  assert.throws(() => host.open(), ContractViolation);
  host.close();
  assert.throws(() => host.abort(), ContractViolation);
});

test('a rejection naming a record the call did not carry is refused', () => {
  class WrongOffset extends Sink {
    add(record) {
      throw new Rejected('bad', record.offset + 100n);
    }
  }
  const host = new FakeHost(WrongOffset, {});
  host.open();
  assert.throws(() => host.add(['a']), (e) => e instanceof ContractViolation && /rejected offset 100, which it was not given/.test(e.message));
});

test('errors arrive as the runtime sees them; fatal drops the instance, backpressure does not', () => {
  class Moody extends Sink {
    add(record) {
      const mood = record.text();
      if (mood === 'busy') throw new sdk.Backpressure(50);
      if (mood === 'broken') throw new TypeError('undefined is not a function');
    }
  }
  const host = new FakeHost(Moody, {});
  host.open();
  assert.throws(() => host.add(['busy']), (e) => e instanceof sdk.Backpressure && e.retryAfterMs === 50);
  assert.equal(host.isOpen, true);
  host.abort();
  assert.throws(() => host.add(['broken']), (e) => e instanceof Fatal && /^uncaught TypeError: undefined is not a function/.test(e.message));
  assert.equal(host.isOpen, false);
});

test('a failed open leaves no instance; run gives up after the attempts', () => {
  class NeverOpens extends Sink {
    open() {
      throw new sdk.Retryable('destination down');
    }
  }
  const host = new FakeHost(NeverOpens, {});
  assert.throws(() => host.run(['a'], { attempts: 2 }), (e) => e instanceof sdk.Retryable && e.message === 'destination down');
  assert.equal(host.isOpen, false);
  assert.equal(host.opened, 0);
});

test('the committed snapshot reaches the next open; records past it are replayed', () => {
  const opens = [];
  class Remembers extends Sink {
    open(config, context) {
      opens.push(context.snapshot && Buffer.from(context.snapshot).toString());
      this.seen = [];
    }
    add(record) {
      this.seen.push(record.offset);
    }
    flush() {
      return new Uint8Array(Buffer.from(`up to ${this.seen.at(-1) ?? 'none'}`));
    }
  }
  const host = new FakeHost(Remembers, {});
  host.open();
  host.add(['a', 'b']);
  host.flush();
  host.add(['c']);
  host.crash();
  host.open();
  assert.deepEqual(host.uncommitted.map(([offset]) => offset), [2n]);
  host.replay();
  host.flush();
  assert.deepEqual(opens, [undefined, 'up to 1']);
  assert.equal(Buffer.from(host.snapshot).toString(), 'up to 2');
});

test('encode writes the packed batch format of types.wit', () => {
  const { data, count } = encode([[258n, new Message('v', { key: 'k', headers: { h: 'x' }, timestamp: -1 })]]);
  assert.equal(count, 1);
  const expected = Buffer.concat([
    Buffer.from([2, 1, 0, 0, 0, 0, 0, 0]), // offset 258
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), // timestamp -1
    Buffer.from([1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]), // key-len, value-len, header-count
    Buffer.from('kv'),
    Buffer.from([1, 0, 0, 0]),
    Buffer.from('h'),
    Buffer.from([1, 0, 0, 0]),
    Buffer.from('x'),
  ]);
  assert.deepEqual(Buffer.from(data), expected);
});
