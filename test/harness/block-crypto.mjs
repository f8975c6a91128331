// Loaded with `node --import` (through NODE_OPTIONS) to make the Rust crypto module unloadable
// in a process, as a broken install or a missing WebAssembly file would.
import { register } from 'node:module';

register(
  'data:text/javascript,' +
    encodeURIComponent(`
export async function resolve(specifier, context, next) {
  if (specifier.startsWith('@matrix-org/matrix-sdk-crypto-wasm')) {
    throw new Error('the crypto module is blocked for this test');
  }
  return next(specifier, context);
}`),
);
