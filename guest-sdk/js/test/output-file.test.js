// `files` and `OutputFile` over the wasi:filesystem stand-in (real files in
// a temporary directory granted as /out).

import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { FakeHost, makeContext, sdk } from '../sinkbox-sdk/testing.js';

const { Fatal, FileError, OutputFile, files, utf8Decode } = sdk;

// A host granting a fresh /out; the stand-ins serve the host made last.
function granted(t) {
  const host = new FakeHost(sdk.Sink, {}, { dirs: { '/out': null } });
  t.after(() => host.dispose());
  return host;
}

const snapshotOf = (len, path = '/out/x.csv') => new Uint8Array(Buffer.from(JSON.stringify({ len, path })));
const fatal = (pattern) => (e) => e instanceof Fatal && pattern.test(e.message);

test('files.size throws for a missing file instead of answering 0', (t) => {
  const host = granted(t);
  assert.throws(() => files.size('/out/none'), (e) => e instanceof FileError && e.code === 'no-entry' && e.message === 'cannot stat /out/none: no-entry');
  assert.equal(files.stat('/out/none'), null);
  assert.equal(files.read('/out/none'), null);
  fs.writeFileSync(host.path('/out/a'), 'hello');
  assert.equal(files.size('/out/a'), 5);
  assert.deepEqual(files.stat('/out/a'), { size: 5, type: 'regular-file' });
  assert.throws(() => files.size('/elsewhere/a'), fatal(/^\/elsewhere\/a is not inside a granted directory$/));
});

test('files read, write at an offset, truncate and replace', (t) => {
  const host = granted(t);
  files.writeAt('/out/f', 0, 'hello world');
  files.writeAt('/out/f', 6, new Uint8Array(Buffer.from('WORLD')));
  assert.equal(utf8Decode(files.read('/out/f')), 'hello WORLD');
  files.truncate('/out/f', 5);
  assert.equal(host.readText('/out/f'), 'hello');
  const big = 'x'.repeat(10000) + 'é';
  files.replace('/out/f', big);
  assert.equal(host.readText('/out/f'), big);
  assert.equal(fs.existsSync(host.path('/out/f.tmp')), false);
});

test('a first run starts the file with the first append, not at open', (t) => {
  const host = granted(t);
  const out = new OutputFile('/out/x.csv', makeContext());
  assert.equal(out.length, 0);
  assert.equal(fs.existsSync(host.path('/out/x.csv')), false);
  assert.deepEqual(JSON.parse(Buffer.from(out.snapshot())), { len: 0, path: '/out/x.csv' });
  out.append('');
  assert.equal(fs.existsSync(host.path('/out/x.csv')), false);
  out.append('n\n0\n');
  out.append(new Uint8Array(Buffer.from('1\n')));
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n1\n');
  assert.equal(out.length, 6);
  assert.deepEqual(JSON.parse(Buffer.from(out.snapshot())), { len: 6, path: '/out/x.csv' });
});

test('a first run refuses a file that holds bytes, and takes an empty one', (t) => {
  const host = granted(t);
  fs.writeFileSync(host.path('/out/x.csv'), 'a'.repeat(1234));
  assert.throws(
    () => new OutputFile('/out/x.csv', makeContext()),
    fatal(/^output \/out\/x\.csv already holds 1,234 bytes this pipeline did not write; remove it or choose another path$/),
  );
  fs.writeFileSync(host.path('/out/x.csv'), '');
  const out = new OutputFile('/out/x.csv', makeContext());
  out.append('a\n');
  assert.equal(host.readText('/out/x.csv'), 'a\n');
});

test('a snapshot cuts off what a flush wrote after it', (t) => {
  const host = granted(t);
  fs.writeFileSync(host.path('/out/x.csv'), 'n\n0\n1\n2\n');
  const out = new OutputFile('/out/x.csv', makeContext({ snapshot: snapshotOf(4) }));
  assert.equal(out.length, 4);
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n');
  out.append('1\n');
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n1\n');
});

test('a file shorter than its snapshot, or gone, is refused, never padded or recreated', (t) => {
  const host = granted(t);
  fs.writeFileSync(host.path('/out/x.csv'), 'x'.repeat(120));
  assert.throws(
    () => new OutputFile('/out/x.csv', makeContext({ snapshot: snapshotOf(4000) })),
    fatal(/^output \/out\/x\.csv is 120 bytes but 4,000 were committed: it was truncated or replaced outside sinkbox$/),
  );
  assert.equal(host.readText('/out/x.csv').length, 120);
  fs.unlinkSync(host.path('/out/x.csv'));
  assert.throws(
    () => new OutputFile('/out/x.csv', makeContext({ snapshot: snapshotOf(4000) })),
    fatal(/^output \/out\/x\.csv is missing but 4,000 bytes were committed: it was deleted or moved outside sinkbox$/),
  );
  assert.equal(fs.existsSync(host.path('/out/x.csv')), false);
  // Nothing committed yet: a missing file is an empty one.
  assert.equal(new OutputFile('/out/x.csv', makeContext({ snapshot: snapshotOf(0) })).length, 0);
});

test('a snapshot taken for another path counts as none; one an OutputFile did not write is refused', (t) => {
  const host = granted(t);
  fs.writeFileSync(host.path('/out/x.csv'), 'old');
  assert.throws(() => new OutputFile('/out/x.csv', makeContext({ snapshot: snapshotOf(3, '/out/other.csv') })), /already holds 3 bytes/);
  assert.throws(() => new OutputFile('/out/x.csv', makeContext({ snapshot: new Uint8Array([1, 2]) })), fatal(/is not one an output file wrote/));
  assert.throws(
    () => new OutputFile('/out/x.csv', makeContext({ snapshot: new Uint8Array(Buffer.from('{"len":-1,"path":"/out/x.csv"}')) })),
    fatal(/is not one an output file wrote/),
  );
});

test('append refuses a file changed, replaced or deleted under the sink', (t) => {
  const host = granted(t);
  const file = host.path('/out/x.csv');
  const open = () => {
    fs.rmSync(file, { force: true });
    const out = new OutputFile('/out/x.csv', makeContext());
    out.append('n\n0\n');
    out.snapshot();
    return out;
  };
  let out = open();
  fs.appendFileSync(file, 'x\n');
  assert.throws(() => out.append('1\n'), fatal(/^output \/out\/x\.csv is 6 bytes but the sink wrote 4: it was changed outside sinkbox$/));
  out = open();
  fs.writeFileSync(file + '.new', 'n\n9\n');
  fs.renameSync(file + '.new', file);
  assert.throws(() => out.append('1\n'), fatal(/^output \/out\/x\.csv was replaced by another file outside sinkbox$/));
  out = open();
  fs.unlinkSync(file);
  assert.throws(() => out.append('1\n'), fatal(/^output \/out\/x\.csv is missing but the sink had written 4 bytes to it/));
  out = open();
  fs.truncateSync(file, 2);
  assert.throws(() => out.check(), /is 2 bytes but the sink wrote 4/);
});

test('rollback cuts back to the last snapshot', (t) => {
  const host = granted(t);
  const out = new OutputFile('/out/x.csv', makeContext());
  out.append('n\n0\n');
  out.snapshot();
  out.append('1\n');
  out.append('2\n');
  out.rollback();
  assert.equal(out.length, 4);
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n');
  out.rollback();
  out.append('1\n');
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n1\n');
});

test('instances that would share a file are refused; placeholders name their own', (t) => {
  const host = granted(t);
  assert.throws(
    () => new OutputFile('/out/x.csv', makeContext({ lanes: 2, lane: 1 })),
    fatal(/^output path \/out\/x\.csv has no \{lane\} placeholder but the sink runs 2 lanes/),
  );
  assert.throws(
    () => new OutputFile('/out/x.csv', makeContext({ partition: 3 })),
    fatal(/^output path \/out\/x\.csv has no \{partition\} placeholder but this instance serves partition 3/),
  );
  const out = new OutputFile('/out/x-{partition}-{lane}.csv', makeContext({ partition: 3, lane: 1, lanes: 2 }));
  assert.equal(out.path, '/out/x-3-1.csv');
  out.append('a\n');
  assert.equal(host.readText('/out/x-3-1.csv'), 'a\n');
});

test('on a probe, OutputFile touches nothing and refuses to write', (t) => {
  const host = granted(t);
  fs.writeFileSync(host.path('/out/x.csv'), 'n\n0\n1\n');
  const out = new OutputFile('/out/x.csv', makeContext({ probe: true, snapshot: snapshotOf(2) }));
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n1\n');
  assert.throws(() => out.append('2\n'), fatal(/^a probe instance must not write its output \/out\/x\.csv$/));
  out.rollback();
  assert.equal(host.readText('/out/x.csv'), 'n\n0\n1\n');
  // No snapshot and a file that holds bytes: a probe does not refuse either.
  new OutputFile('/out/x.csv', makeContext({ probe: true }));
});
