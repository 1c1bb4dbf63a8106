// Stand-in for `sinkbox:sink/host@0.2.0`: forwards to the current FakeHost,
// or to standard error before there is one.
import { currentHost } from '../fake-host.js';

export function log(level, message, fields) {
  const host = currentHost();
  if (host) host.log(level, message, fields);
  else process.stderr.write(`[${level}] ${message}${fields.map(([k, v]) => ` ${k}=${v}`).join('')}\n`);
}

export default { log };
