// The `sinkbox new --lang js` scaffold: sink.js from the template beside a
// copy of sinkbox-sdk.js, as `sinkbox new` lays them out.

import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { FakeHost } from '../sinkbox-sdk/testing.js';

const here = path.dirname(new URL(import.meta.url).pathname);
const project = fs.mkdtempSync(path.join(os.tmpdir(), 'sinkbox-scaffold-'));
const template = fs.readFileSync(path.join(here, '../../../runtime/templates/js/sink.js.tmpl'), 'utf8');
fs.writeFileSync(path.join(project, 'sink.js'), template.replaceAll('{{name}}', 'demo'));
fs.copyFileSync(path.join(here, '../sinkbox-sdk.js'), path.join(project, 'sinkbox-sdk.js'));
const { sink } = await import(pathToFileURL(path.join(project, 'sink.js')).href);
test.after(() => fs.rmSync(project, { recursive: true, force: true }));

function hostFor(t, options = {}) {
  const host = new FakeHost(sink, { path: '/out/records.jsonl' }, { dirs: { '/out': null }, ...options });
  t.after(() => host.dispose());
  return host;
}

test('the scaffold writes a JSON line per record, offsets exact past 2^53', (t) => {
  const host = hostFor(t, { firstOffset: 2n ** 53n - 2n });
  host.run([{ id: 1 }, 'not json', [2], 3], { batchSize: 2 });
  assert.equal(
    host.readText('/out/records.jsonl'),
    '{"offset":9007199254740990,"value":{"id":1}}\n{"offset":9007199254740992,"value":[2]}\n{"offset":9007199254740993,"value":3}\n',
  );
  assert.deepEqual(
    host.deadLetters.map((r) => r.offset),
    [9007199254740991n],
  );
  assert.match(host.deadLetters[0].reason, /^value is not JSON/);
});

test('past 2^53 a rejection would name another record under QuickJS: fatal instead', (t) => {
  const host = hostFor(t, { firstOffset: 2n ** 53n + 1n });
  host.open();
  assert.throws(() => host.add(['not json']), /cannot reject the record at offset 9007199254740993/);
});

test('the scaffold is exactly once across a crash', (t) => {
  const host = hostFor(t);
  host.open();
  host.add([1, 2]);
  host.flush();
  host.add([3]);
  host.flush({ commit: false });
  host.restart();
  host.flush();
  host.close();
  assert.equal(host.readText('/out/records.jsonl'), '{"offset":0,"value":1}\n{"offset":1,"value":2}\n{"offset":2,"value":3}\n');
});

test('a scaffold probe touches nothing', (t) => {
  const host = hostFor(t);
  assert.equal(host.probe([[0n, 1]]), undefined);
  assert.deepEqual(fs.readdirSync(host.path('/out')), []);
});
