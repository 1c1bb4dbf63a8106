// Lets Node load modules that import `sinkbox:sink/host@0.2.0` and
// wasi:filesystem, by resolving those to the test stand-ins:
//
//     node --import sinkbox-sdk/testing/register --test
//
// `sinkbox-sdk/testing` imports this itself; with `--import` a test file may
// also import the SDK and a sink statically.

import { register } from 'node:module';

const REGISTERED = Symbol.for('sinkbox-sdk.testing.hooks');

if (!globalThis[REGISTERED]) {
  globalThis[REGISTERED] = true;
  register('./hooks.js', import.meta.url);
}
