// Drops the `name` and `producers` custom sections from a wasm module in
// place: function names for profilers and stack traces, which the deployed
// worker does not need (about 220 KB raw, 60 KB gzip of the gateway).
// `GATEWAY_KEEP_NAMES=1 scripts/build` keeps them (tests/bench/profile.mjs
// wants them).
//
//   node scripts/strip-wasm-names.mjs build/index_bg.wasm
import { readFileSync, writeFileSync } from 'node:fs';

const file = process.argv[2];
const wasm = readFileSync(file);
if (wasm.readUInt32LE(0) !== 0x6d736100) throw new Error(`${file} is not a wasm module`);

function leb(buf, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = buf[at++];
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (b < 0x80) return [value, at];
  }
}

const kept = [wasm.subarray(0, 8)];
let dropped = 0;
for (let at = 8; at < wasm.length;) {
  const start = at;
  const id = wasm[at++];
  const [size, body] = leb(wasm, at);
  const end = body + size;
  let drop = false;
  if (id === 0) {
    const [nameLen, nameAt] = leb(wasm, body);
    const name = wasm.subarray(nameAt, nameAt + nameLen).toString('utf8');
    drop = name === 'name' || name === 'producers';
  }
  if (drop) dropped += end - start;
  else kept.push(wasm.subarray(start, end));
  at = end;
}
writeFileSync(file, Buffer.concat(kept));
console.log(`${file}: dropped ${dropped} bytes of names (${wasm.length} -> ${wasm.length - dropped})`);
