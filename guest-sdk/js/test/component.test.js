// The real thing: build the example and the scaffold with jco's QuickJS
// backend, check what they export, and drive the example's component with
// real WASI (jco transpile + preview2-shim) in a child Node. This is where a
// thrown value of the wrong shape or a BigInt where WIT has a u64 would trap.
// Skipped when the toolchain (npm install) is missing.

import test from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const wit = path.resolve(root, '../../wit');
const jco = path.join(root, 'node_modules/.bin/jco');

function preview2Shim() {
  try {
    const fromJco = createRequire(path.join(root, 'node_modules/@bytecodealliance/jco/package.json'));
    // The package root, above its main module (dist/nodejs/index.js).
    let dir = path.dirname(fromJco.resolve('@bytecodealliance/preview2-shim'));
    while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
    return dir;
  } catch {
    return null;
  }
}

const shim = fs.existsSync(jco) ? preview2Shim() : null;
const skip = shim === null ? 'needs `npm install` (jco and its preview2-shim)' : false;

function componentize(entry, cwd, out) {
  execFileSync(jco, ['componentize', entry, '--cwd', cwd, '--wit', wit, '--world-name', 'sinkbox:sink/sink-world-files', '--backend', 'qjs', '--backend-qjs-disable-async', '-o', out], { stdio: 'pipe' });
  try {
    // wasm-tools prints the interfaces too; jco's wit prints only the world.
    return execFileSync('wasm-tools', ['component', 'wit', out], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return execFileSync(jco, ['wit', out], { encoding: 'utf8' });
  }
}

function checkWit(text) {
  assert.match(text, /export sinkbox:sink\/sink@0\.2\.0;/);
  assert.match(text, /import sinkbox:sink\/host@0\.2\.0;/);
  if (!text.includes('interface sink {')) return;
  assert.match(text, /open: func\(config: string, context: context\) -> result<_, sink-error>;/);
  assert.match(text, /flush: func\(\) -> result<option<list<u8>>, sink-error>;/);
  assert.match(text, /status: func\(\) -> option<sink-status>;/);
}

// Runs in the child: every scenario prints [label, value].
const DRIVER = String.raw`
import fs from 'node:fs';
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';
import { encode } from ${JSON.stringify(path.join(root, 'sinkbox-sdk/testing.js'))};

const dir = process.argv[2];
_setPreopens({ '/out': dir });
let loads = 0;
const load = async () => (await import('./out/csv.js?i=' + ++loads)).sink;
const ctx = (over = {}) => ({ pipeline: 'p', sink: 's', topic: '', partition: 0, lane: 0, lanes: 1, workerIndex: 0, workerCount: 1, snapshot: null, probe: false, ...over });
const batch = (values, first) => ({ topic: 'in', partition: 0, ...encode(values.map((v, i) => [BigInt(first) + BigInt(i), v])) });
const nums = (from, to) => Array.from({ length: to - from }, (_, i) => ({ n: from + i }));
const err = (f) => { try { f(); return 'no error'; } catch (e) { return e.payload ?? String(e); } };
const text = (b) => b && Buffer.from(b).toString();
const out = [];
const note = (label, value) => out.push([label, value]);
const file = dir + '/x.csv';
const config = JSON.stringify({ path: '/out/x.csv', columns: ['n'] });

let s = await load();
note('schema', JSON.parse(s.configSchema()).required);
s.open(config, ctx());
note('initial', text(s.flush()));
s.add(batch(nums(0, 3), 0));
let snap = s.flush();
note('flush', text(snap));
const st = s.status();
note('status', [Number(st.written), Number(st.filtered)]);
note('rejected', err(() => s.add(batch(['nope', { n: 4 }, new Uint8Array([0x7b, 0xff, 0x7d])], 3))));
s.flush(); // its checkpoint is never committed: the next open gets the older snapshot
note('file before crash', fs.readFileSync(file, 'utf8'));
s = await load();
s.open(config, ctx({ snapshot: snap }));
note('file after reopen', fs.readFileSync(file, 'utf8'));
s.add(batch(nums(3, 5), 3));
snap = s.flush();
s.close();
note('file', fs.readFileSync(file, 'utf8'));
s = await load();
s.open(config, ctx({ probe: true }));
s.add(batch(nums(0, 2), 0));
s.abort();
s.close();
note('after probe', fs.readFileSync(file, 'utf8'));
s = await load();
note('no snapshot', err(() => s.open(config, ctx())));
fs.appendFileSync(file, 'x\n');
s = await load();
s.open(config, ctx({ snapshot: snap }));
fs.appendFileSync(file, 'y\n');
s.add(batch(nums(5, 6), 5));
note('changed', err(() => s.flush()));
fs.writeFileSync(file, 'n\n');
s = await load();
note('shorter', err(() => s.open(config, ctx({ snapshot: snap }))));
s = await load();
s.open(JSON.stringify({ path: '/out/big-{partition}.csv', columns: ['n'] }), ctx({ partition: 1 }));
note('inexact rejection', err(() => s.add(batch(['nope'], 2n ** 53n + 1n))));
// The host side lifts a u64 as a BigInt.
console.log(JSON.stringify(out, (k, v) => (typeof v === 'bigint' ? Number(v) : v)));
`;

test('the example and the scaffold build, and the example runs as a component', { skip, timeout: 180000 }, (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sinkbox-js-component-'));
  t.after(() => fs.rmSync(work, { recursive: true, force: true }));

  // The scaffold as `sinkbox new` lays it out: sink.js beside sinkbox-sdk.js.
  const project = path.join(work, 'project');
  fs.mkdirSync(project);
  const template = fs.readFileSync(path.resolve(root, '../../runtime/templates/js/sink.js.tmpl'), 'utf8');
  fs.writeFileSync(path.join(project, 'sink.js'), template.replaceAll('{{name}}', 'demo'));
  fs.copyFileSync(path.join(root, 'sinkbox-sdk.js'), path.join(project, 'sinkbox-sdk.js'));
  checkWit(componentize(path.join(project, 'sink.js'), project, path.join(work, 'scaffold.wasm')));

  const csv = path.join(work, 'csv.wasm');
  checkWit(componentize(path.join(root, 'examples/csv_sink/sink.js'), root, csv));

  execFileSync(jco, ['transpile', csv, '-o', path.join(work, 'out'), '-q', '--map', 'sinkbox:sink/host@0.2.0=../host.js']);
  fs.writeFileSync(path.join(work, 'host.js'), 'export function log() {}\n');
  fs.mkdirSync(path.join(work, 'node_modules/@bytecodealliance'), { recursive: true });
  fs.symlinkSync(shim, path.join(work, 'node_modules/@bytecodealliance/preview2-shim'));
  fs.writeFileSync(path.join(work, 'driver.mjs'), DRIVER);
  const data = path.join(work, 'data');
  fs.mkdirSync(data);
  // Node 20's V8 keeps the extended-const proposal the QuickJS build uses behind a flag.
  const v8Options = execFileSync(process.execPath, ['--v8-options'], { encoding: 'utf8' });
  const flags = v8Options.includes('--experimental-wasm-extended-const') ? ['--experimental-wasm-extended-const'] : [];
  const output = execFileSync(process.execPath, [...flags, path.join(work, 'driver.mjs'), data], { cwd: work, encoding: 'utf8' });
  const notes = Object.fromEntries(JSON.parse(output.trim().split('\n').at(-1)));

  assert.deepEqual(notes.schema, ['path', 'columns']);
  assert.equal(notes.initial, '{"len":0,"path":"/out/x.csv"}');
  assert.equal(notes.flush, '{"len":8,"path":"/out/x.csv"}');
  assert.deepEqual(notes.status, [3, 0]);
  assert.equal(notes.rejected.tag, 'rejected');
  assert.deepEqual(
    notes.rejected.val.map((r) => [r.offset, r.reason.replace(/: .*/, '')]),
    [
      [3, 'value is not JSON'],
      [5, 'value is not UTF-8'],
    ],
  );
  assert.equal(notes['file before crash'], 'n\n0\n1\n2\n4\n');
  assert.equal(notes['file after reopen'], 'n\n0\n1\n2\n');
  assert.equal(notes.file, 'n\n0\n1\n2\n3\n4\n');
  assert.equal(notes['after probe'], 'n\n0\n1\n2\n3\n4\n');
  assert.deepEqual(notes['no snapshot'], { tag: 'fatal', val: 'output /out/x.csv already holds 12 bytes this pipeline did not write; remove it or choose another path' });
  assert.deepEqual(notes.changed, { tag: 'fatal', val: 'output /out/x.csv is 14 bytes but the sink wrote 12: it was changed outside sinkbox' });
  assert.deepEqual(notes.shorter, { tag: 'fatal', val: 'output /out/x.csv is 2 bytes but 12 were committed: it was truncated or replaced outside sinkbox' });
  assert.equal(notes['inexact rejection'].tag, 'fatal');
  assert.match(notes['inexact rejection'].val, /^cannot reject the record at offset 9007199254740993: /);
});
