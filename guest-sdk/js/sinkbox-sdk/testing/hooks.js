// Module resolution hooks (node:module `register`): point the imports a
// component build links, which Node cannot resolve, at the stand-ins.

const STAND_INS = [
  [/^sinkbox:sink\/host@0\.2\.\d+$/, 'host.js'],
  [/^wasi:filesystem\/preopens@0\.2\.\d+$/, 'preopens.js'],
  [/^wasi:filesystem\/types@0\.2\.\d+$/, 'types.js'],
];

export async function resolve(specifier, context, nextResolve) {
  for (const [pattern, file] of STAND_INS) {
    if (pattern.test(specifier)) return { url: new URL(`./stand-ins/${file}`, import.meta.url).href, shortCircuit: true };
  }
  if (/^(sinkbox|wasi):/.test(specifier)) {
    throw new Error(`sinkbox-sdk/testing has no stand-in for ${specifier} (it has: sinkbox:sink/host, wasi:filesystem/preopens, wasi:filesystem/types)`);
  }
  return nextResolve(specifier, context);
}
