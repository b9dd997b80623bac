// Drops repeated entries from the wasm module's import object in the shim
// worker-build writes (build/index.js). worker-build 0.8 lists one
// `inline_js` snippet twice (`"./snippets/<crate>/inline3.js": $` two times,
// the same module both times), which is harmless at runtime but makes
// esbuild warn "Duplicate key ... in object literal" on every `wrangler dev`
// and `wrangler deploy`. Only an entry repeated with the same key and the
// same value is dropped; a key repeated with another value is left alone
// (and reported), since dropping it would change which module is imported.
//
//   node scripts/dedupe-snippet-imports.mjs build/index.js
import { readFileSync, writeFileSync } from 'node:fs';

const file = process.argv[2];
const source = readFileSync(file, 'utf8');
const entry = /,"(\.\/snippets\/[^"]+)":([A-Za-z_$][\w$]*)/g;
const seen = new Map();
let dropped = 0;
const tidy = source.replace(entry, (whole, key, value) => {
  if (!seen.has(key)) {
    seen.set(key, value);
    return whole;
  }
  if (seen.get(key) !== value) {
    console.warn(`${file}: ${key} imported as both ${seen.get(key)} and ${value}; left as is`);
    return whole;
  }
  dropped++;
  return '';
});
if (dropped > 0) {
  writeFileSync(file, tidy);
  console.log(`${file}: dropped ${dropped} repeated snippet import(s)`);
}
