// Streamed bodies as native byte streams (src/edge/pipe.rs): the rest of a
// committed pass-through stream, piped by a small JavaScript reader with no
// Rust on each chunk, and a stream Rust translates chunk by chunk (from
// Anthropic's events), written to the client's body by a Rust task. Both
// must stop the provider when the client goes away (the runtime notices at
// the next chunk it writes) and charge what was sent: at least an output
// token a chunk, even when the provider's usage so far says less. The pipe
// also ends a stream past the total timeout with an error event.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { startGateway, chat, ask, readSSE, mockConfig, putConfig, sleep, ADMIN_TOKEN } from './harness.mjs';

let mock;
let gw;

/** $0.001 a token, in and out. */
const PRICED = { input_per_mtok: 1000, output_per_mtok: 1000 };
/** Text events every 50 ms until the client goes away. */
const DRIP = 'drip;drip=1,interval_ms=50';
const TOTAL_TIMEOUT_MS = 1500;

before(async () => {
  mock = await startMock();
  gw = await startGateway();
  const config = mockConfig(mock.url, {
    drip: { targets: [{ provider: 'mock', model: DRIP }] },
    drip_translated: { targets: [{ provider: 'anth', model: DRIP }] },
  }, {
    providers: { anth: { kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY' } },
  });
  config.providers.mock.models = { [DRIP]: PRICED };
  config.providers.anth.models = { [DRIP]: PRICED };
  config.failover = { total_timeout_ms: TOTAL_TIMEOUT_MS };
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

async function createKey() {
  const res = await fetch(`${gw.url}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'pipe' }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).secret;
}

/** The provider call of a drip model, once the mock has seen it end. */
async function abortedCall(since) {
  const find = () => mock.requests.find((r) => r.seq > since && r.body?.model === DRIP);
  for (let i = 0; i < 60; i++) {
    if (find()?.aborted) break;
    await sleep(50);
  }
  return find();
}

/** Reads a stream until `n` content deltas have come. */
async function readDeltas(reader, n) {
  const decoder = new TextDecoder();
  let text = '';
  while ((text.match(/"content"/g) ?? []).length < n) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'the drip stream does not end on its own');
    text += decoder.decode(value, { stream: true });
  }
}

const lastSeq = () => mock.requests.at(-1)?.seq ?? 0;

for (const [model, how] of [['drip', 'piped'], ['drip_translated', 'translated']]) test(`a client that goes away mid-stream (${how}) stops the provider, and what was sent is charged`, async () => {
  const secret = await createKey();
  const since = lastSeq();
  const res = await chat(gw, ask(model, 'hi', { stream: true }), { key: secret });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  // Past the first token (the commit), into the piped or written part.
  await readDeltas(reader, 6);
  const gone = Date.now();
  await reader.cancel();
  const call = await abortedCall(since);
  assert.ok(call?.aborted, 'the provider call was aborted');
  assert.ok(call.aborted - gone < 2_000, `aborted ${call.aborted - gone} ms after the client went`);
  // Settled as an incomplete stream: its events are charged (no usage came).
  let usage;
  for (let i = 0; i < 100; i++) {
    const u = await (await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${secret}` } })).json();
    usage = u.by_day.find((d) => d.model === model);
    if (usage?.requests === 1) break;
    await sleep(100);
  }
  assert.equal(usage?.requests, 1, JSON.stringify(usage));
  assert.ok(usage.output_tokens >= 6, `output tokens charged: ${JSON.stringify(usage)}`);
});

test('a piped stream past the total timeout ends with an error event and stops the provider', async () => {
  const since = lastSeq();
  const t0 = performance.now();
  const events = await readSSE(await chat(gw, ask('drip', 'hi', { stream: true })), t0);
  const ended = performance.now() - t0;
  assert.ok(ended >= TOTAL_TIMEOUT_MS - 100 && ended < TOTAL_TIMEOUT_MS + 2_000, `ended after ${ended.toFixed(0)} ms`);
  const content = events.filter((e) => e.json?.choices?.[0]?.delta?.content);
  assert.ok(content.length >= 10, `${content.length} chunks passed on before the timeout`);
  const last = events.at(-1);
  assert.ok(last.json?.error, `ends with an error event: ${last.data}`);
  assert.ok(!events.some((e) => e.data === '[DONE]'), 'no [DONE] after a timeout');
  const call = await abortedCall(since);
  assert.ok(call?.aborted, 'the provider call was aborted');
});
