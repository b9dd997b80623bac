// Timers on the deployed entry module's path (src/edge/entry.mjs on plain
// workerd, as `wrangler deploy` runs it): a request whose body the entry
// module reads is first polled synchronously, with a waker that does
// nothing, so a timer set in that poll must still wake the request once
// the executor has it. A stream's hedge and its connect timeout are both
// set there. (Under `wrangler dev` the body reaches the worker without a
// length, the Rust side reads it, and these timers are set later: the
// other suites do not see this path.)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { ask, mockConfig, readSSE, KEY } from './harness.mjs';
import { startDeployed } from './workerd.mjs';

const M = {
  primary: 'primary;first_byte_delay_ms=2000,chunks=3',
  silent: 'silent;headers_delay_ms=3000,chunks=3',
  backup: 'backup;first_byte_delay_ms=100,chunks=3',
};

let mock;
let env;

before(async () => {
  mock = await startMock();
  const config = mockConfig(mock.url, {
    hedged: {
      targets: [{ provider: 'mock', model: M.primary }, { provider: 'mock', model: M.backup }],
      hedge: { after_ms: 300, max_extra: 1 },
    },
    silent: { targets: [{ provider: 'mock', model: M.silent }, { provider: 'mock', model: M.backup }] },
  });
  config.failover = { connect_timeout_ms: 400 };
  env = await startDeployed(config);
});

after(async () => {
  await env?.stop();
  await mock?.close();
});

/** A streamed chat with a declared length (as every SDK sends it). */
async function stream(model) {
  const body = JSON.stringify(ask(model, 'Time us', { stream: true }));
  const t0 = performance.now();
  const res = await fetch(`${env.a.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
    body,
  });
  assert.equal(res.status, 200, await res.clone().text());
  const events = await readSSE(res, t0);
  const first = events.find((e) => e.json?.choices?.[0]?.delta?.content);
  assert.ok(first, 'a token');
  return { res, first: first.t };
}

test('a hedge set in the first poll fires on time: the backup answers, not the slow primary', async () => {
  const { res, first } = await stream('hedged');
  assert.ok(first < 1_200, `first token at ${first.toFixed(0)} ms (after_ms 300 + the backup's 100)`);
  assert.equal(res.headers.get('x-gateway-hedge'), `lost=mock/${M.primary}`);
  assert.equal(res.headers.get('x-gateway-model'), M.backup);
});

test("a stream's connect timeout set in the first poll fires on time: a silent provider is failed over", async () => {
  const { res, first } = await stream('silent');
  assert.ok(first < 1_500, `first token at ${first.toFixed(0)} ms (connect timeout 400 + the backup's 100)`);
  assert.equal(res.headers.get('x-gateway-model'), M.backup);
  assert.equal(res.headers.get('x-gateway-attempts'), '2');
});
