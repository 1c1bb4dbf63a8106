// Stand-in for `wasi:filesystem/preopens`: the current FakeHost's granted
// directories (none before there is one).
import { currentHost } from '../fake-host.js';

export function getDirectories() {
  const host = currentHost();
  return host ? host.getDirectories() : [];
}

export default { getDirectories };
