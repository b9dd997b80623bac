// Admission overlapped with the upstream call, across two isolates with
// leases off (every request of a virtual key is decided by its object): an
// isolate that last saw ample headroom sends the upstream request while the
// object decides; on a refusal the client gets the 429 at once and the
// upstream fetch is aborted, never answered to the client. The isolates run
// the deployed entry module (src/edge/entry.mjs), as in production.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { ask, mockConfig, sleep, ADMIN_TOKEN } from './harness.mjs';
import { startTwoIsolates } from './workerd.mjs';

/** $0.001 per output token, input free. */
const PRICED = { input_per_mtok: 0, output_per_mtok: 1000 };

let mock;
let env;

before(async () => {
  mock = await startMock();
  const config = mockConfig(mock.url, {
    // Answers after 1.5 s: long enough to tell a refusal from an answer.
    slow: { targets: [{ provider: 'mock', model: 'slow;headers_delay_ms=1500' }] },
  }, { limits: { lease_ttl_ms: 0 } });
  config.providers.mock.models = { 'slow;headers_delay_ms=1500': PRICED };
  env = await startTwoIsolates({ config, entry: true });
});

after(async () => {
  await env?.stop();
  await mock?.close();
});

const admin = (side, path, init = {}) => fetch(`${side.url}${path}`, {
  ...init,
  headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
});

function chat(side, secret) {
  return fetch(`${side.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: JSON.stringify(ask('slow', 'hi', { max_tokens: 10 })),
  });
}

test('a refused overlapped admission aborts the upstream call and answers 429 at once', async () => {
  const created = await admin(env.a, '/admin/keys', { method: 'POST', body: JSON.stringify({ name: 'o', budgets: { total_usd: 1 } }) });
  assert.equal(created.status, 201);
  const { key, secret } = await created.json();
  // b's first request is decided first (nothing known of the key yet); b
  // learns the key has ample headroom.
  const first = await chat(env.b, secret);
  assert.equal(first.status, 200, await first.clone().text());
  await first.text();
  // Through a, the budget drops below one more request; b does not know.
  const patched = await admin(env.a, `/admin/keys/${key.id}`, { method: 'PATCH', body: JSON.stringify({ budgets: { total_usd: 0.005 } }) });
  assert.equal(patched.status, 200);
  mock.clear();
  const before = await (await fetch(`${env.b.url}/__test/stats`)).json();
  const t0 = performance.now();
  const refused = await chat(env.b, secret);
  const ms = performance.now() - t0;
  assert.equal(refused.status, 429);
  assert.equal((await refused.json()).error.code, 'insufficient_quota');
  assert.ok(ms < 1_200, `refused after ${ms.toFixed(0)} ms, before the upstream's 1.5 s answer`);
  const after = await (await fetch(`${env.b.url}/__test/stats`)).json();
  assert.equal(after.overlapped - before.overlapped, 1, `the admission ran beside the upstream call: ${JSON.stringify({ before, after })}`);
  // The upstream call was aborted: it never reached the provider, or it
  // did and the provider saw its client go away (the refusal takes a
  // millisecond; the provider would have answered after 1.5 s).
  await sleep(200);
  const calls = mock.requests.filter((r) => r.path.endsWith('/chat/completions'));
  assert.ok(calls.length <= 1);
  assert.ok(calls.every((c) => c.aborted), 'the upstream fetch was aborted');
});

test('an admitted overlapped request answers as any other, charged once', async () => {
  const created = await admin(env.a, '/admin/keys', { method: 'POST', body: JSON.stringify({ name: 'o2', budgets: { total_usd: 1 } }) });
  const { key, secret } = await created.json();
  const first = await chat(env.b, secret);
  assert.equal(first.status, 200);
  await first.text();
  const before = await (await fetch(`${env.b.url}/__test/stats`)).json();
  const second = await chat(env.b, secret);
  assert.equal(second.status, 200);
  const body = await second.json();
  assert.equal(body.object, 'chat.completion');
  const after = await (await fetch(`${env.b.url}/__test/stats`)).json();
  assert.equal(after.overlapped - before.overlapped, 1);
  await fetch(`${env.b.url}/__test/flush`, { method: 'POST' });
  const u = await (await admin(env.a, `/admin/usage?key=${key.id}`)).json();
  assert.equal(u.requests, 2);
  assert.equal(u.spent_total_usd, 0.008);
  assert.equal(u.reserved_usd, 0);
});
