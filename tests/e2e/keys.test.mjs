// Virtual keys, rate limits and exact budgets, end to end: the admin API,
// the per-key Durable Objects on workerd, and real concurrency.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { startGateway, chat, ask, readSSE, mockConfig, putConfig, sleep, ADMIN_TOKEN } from './harness.mjs';

let mock;
let gw;

/** $0.001 per output token, input free: a request's cost is exact and small. */
const PRICED = { input_per_mtok: 0, output_per_mtok: 1000 };

before(async () => {
  mock = await startMock();
  gw = await startGateway();
  const config = mockConfig(mock.url, {
    demo: { targets: [{ provider: 'demo', model: 'demo-1' }] },
    // Answers after 1.5 s, so a burst is admitted before anything settles.
    slow: { targets: [{ provider: 'mock', model: 'slow;headers_delay_ms=1500' }] },
    priced: { targets: [{ provider: 'mock', model: 'priced' }] },
    cut: { targets: [{ provider: 'mock', model: 'cut;cut_after=3,chunks=8' }] },
    // Answers without `usage`, as some OpenAI-compatible servers do.
    silent: { targets: [{ provider: 'mock', model: 'silent;usage=0' }] },
  });
  config.providers.mock.models = {
    'slow;headers_delay_ms=1500': PRICED,
    priced: PRICED,
    'cut;cut_after=3,chunks=8': PRICED,
    'silent;usage=0': PRICED,
  };
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

function admin(path, { method = 'GET', body, token = ADMIN_TOKEN } = {}) {
  return fetch(`${gw.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function createKey(settings) {
  const res = await admin('/admin/keys', { method: 'POST', body: { name: 'test', ...settings } });
  assert.equal(res.status, 201, await res.clone().text());
  return res.json();
}

async function usage(secret) {
  const res = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${secret}` } });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

/** Waits until the key has nothing in flight (settlement runs after the answer). */
async function settled(secret) {
  for (let i = 0; i < 100; i++) {
    const u = await usage(secret);
    if (u.in_flight === 0) return u;
    await sleep(100);
  }
  throw new Error('requests never settled');
}

test('admin endpoints refuse a missing or wrong token', async () => {
  for (const token of ['', 'wrong']) {
    for (const [path, method] of [['/admin/keys', 'GET'], ['/admin/keys', 'POST'], ['/admin/config', 'GET'], ['/admin/usage?key=0000000000000000', 'GET']]) {
      const res = await admin(path, { method, token, body: method === 'POST' ? { name: 'x' } : undefined });
      assert.equal(res.status, 401, `${method} ${path} with ${JSON.stringify(token)}`);
      const { error } = await res.json();
      // OpenAI's own shape for a wrong key.
      assert.equal(error.type, 'invalid_request_error');
      assert.equal(error.code, 'invalid_api_key');
    }
  }
});

test('a created key works, is shown once, and is never readable in clear', async () => {
  const { key, secret } = await createKey({ owner: 'ana', team: 'search', tier: 'gold', tags: { env: 'test' } });
  assert.match(secret, /^sk-gw-[0-9a-f]{16}_[0-9a-f]{48}$/);
  assert.equal(key.secret_hint, `sk-gw-${key.id}_…${secret.slice(-4)}`);
  const res = await chat(gw, ask('demo', 'hello'), { key: secret });
  assert.equal(res.status, 200);
  await res.text();

  const one = await (await admin(`/admin/keys/${key.id}`)).text();
  const list = await (await admin('/admin/keys')).text();
  for (const shown of [one, list]) {
    assert.ok(shown.includes(key.id));
    assert.ok(!shown.includes(secret.split('_')[1]), 'the secret is not readable');
    assert.ok(!/[0-9a-f]{64}/.test(shown), 'nor is its hash');
  }
  assert.equal(JSON.parse(one).owner, 'ana');
  assert.ok(JSON.parse(list).data.some((k) => k.id === key.id));

  // A well-formed key that was never issued is refused.
  const forged = `sk-gw-${'a'.repeat(16)}_${'b'.repeat(48)}`;
  assert.equal((await chat(gw, ask('demo'), { key: forged })).status, 401);
  // So is an issued id with the wrong secret.
  const wrong = `sk-gw-${key.id}_${'c'.repeat(48)}`;
  assert.equal((await chat(gw, ask('demo'), { key: wrong })).status, 401);
});

test('revoking is immediate; rotating keeps the key and its usage', async () => {
  const { key, secret } = await createKey({});
  assert.equal((await chat(gw, ask('demo'), { key: secret }).then(async (r) => { await r.text(); return r; })).status, 200);
  const rotated = await (await admin(`/admin/keys/${key.id}/rotate`, { method: 'POST' })).json();
  assert.notEqual(rotated.secret, secret);
  assert.equal((await chat(gw, ask('demo'), { key: secret })).status, 401, 'the old secret stops working');
  const ok = await chat(gw, ask('demo'), { key: rotated.secret });
  assert.equal(ok.status, 200);
  await ok.text();
  assert.equal((await usage(rotated.secret)).requests, 2, 'usage survives rotation');

  const revoked = await (await admin(`/admin/keys/${key.id}/revoke`, { method: 'POST' })).json();
  assert.equal(revoked.revoked, true);
  const res = await chat(gw, ask('demo'), { key: rotated.secret });
  assert.equal(res.status, 401);
  assert.match((await res.json()).error.message, /revoked/);
});

test('expired keys are refused; scope is enforced before routing', async () => {
  const expired = await createKey({ expires_at_ms: Date.now() - 1 });
  const res = await chat(gw, ask('demo'), { key: expired.secret });
  assert.equal(res.status, 401);
  assert.match((await res.json()).error.message, /expired/);

  const scoped = await createKey({ allowed_models: ['demo'] });
  mock.clear();
  const denied = await chat(gw, ask('priced'), { key: scoped.secret });
  assert.equal(denied.status, 404);
  assert.equal((await denied.json()).error.code, 'model_not_found');
  assert.equal(mock.requests.length, 0, 'no upstream call for an out-of-scope model');
  const models = await (await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${scoped.secret}` } })).json();
  assert.deepEqual(models.data.map((m) => m.id), ['demo']);

  const patched = await admin(`/admin/keys/${scoped.key.id}`, { method: 'PATCH', body: { allowed_models: null } });
  assert.equal((await patched.json()).allowed_models, undefined);
  const now = await chat(gw, ask('priced'), { key: scoped.secret });
  assert.equal(now.status, 200);
  await now.text();
});

test('an id no virtual key has is a 404 naming it', async () => {
  for (const path of ['/admin/usage?key=static', '/admin/keys/0123456789abcdef']) {
    const res = await admin(path);
    assert.equal(res.status, 404, path);
    const { error } = await res.json();
    assert.equal(error.code, 'key_not_found', path);
    assert.match(error.message, /No virtual key has the id `(static|0123456789abcdef)`/);
  }
});

test('PATCH changes the limits and budgets it names and keeps every other cap', async () => {
  const { key } = await createKey({
    limits: { rpm: 100, rpd: 1000, tpm: 100000 },
    budgets: { daily_usd: 5, monthly_usd: 50, total_usd: 500 },
  });
  const res = await admin(`/admin/keys/${key.id}`, { method: 'PATCH', body: { limits: { rpm: 120 }, budgets: { daily_usd: 10 } } });
  assert.equal(res.status, 200);
  const changed = await res.json();
  assert.deepEqual(changed.limits, { rpm: 120, rpd: 1000, tpm: 100000 });
  assert.deepEqual(changed.budgets, { daily_usd: 10, monthly_usd: 50, total_usd: 500 });
  const lifted = await (await admin(`/admin/keys/${key.id}`, { method: 'PATCH', body: { limits: { rpm: null }, budgets: { total_usd: null } } })).json();
  assert.deepEqual(lifted.limits, { rpd: 1000, tpm: 100000 });
  assert.deepEqual(lifted.budgets, { daily_usd: 10, monthly_usd: 50 });
  // What the object keeps, read back.
  const read = await (await admin(`/admin/keys/${key.id}`)).json();
  assert.deepEqual([read.limits, read.budgets], [lifted.limits, lifted.budgets]);
});

test('requests per minute hold under concurrency, with OpenAI headers', async () => {
  const { secret } = await createKey({ limits: { rpm: 5 } });
  const results = await Promise.all(Array.from({ length: 8 }, () => chat(gw, ask('demo'), { key: secret })));
  const statuses = results.map((r) => r.status).sort();
  assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
  const ok = results.find((r) => r.status === 200);
  assert.equal(ok.headers.get('x-ratelimit-limit-requests'), '5');
  assert.match(ok.headers.get('x-ratelimit-remaining-requests'), /^[0-4]$/);
  const limited = results.find((r) => r.status === 429);
  assert.equal(limited.headers.get('x-ratelimit-remaining-requests'), '0');
  // OpenAI's duration format: `20ms`, `1.5s`, `1m1s`.
  assert.match(limited.headers.get('x-ratelimit-reset-requests'), /^(\d+ms|(\d+m)?\d+(\.\d+)?s)$/);
  const retry = Number(limited.headers.get('retry-after'));
  // The minute window counts in one-second buckets: up to a second longer.
  assert.ok(retry >= 1 && retry <= 61, `retry-after ${retry}`);
  const err = (await limited.json()).error;
  assert.equal(err.code, 'rate_limit_exceeded');
  await Promise.all(results.filter((r) => r !== limited).map((r) => r.text()));
});

test('100 concurrent requests against a budget: exactly what it allows, charged once', async () => {
  // Each request may use its 10 max tokens: $0.01 reserved. The budget
  // holds five reservations, not six.
  const { key, secret } = await createKey({ budgets: { total_usd: 0.055 } });
  const body = ask('slow', 'hi', { max_tokens: 10 });
  const results = await Promise.all(Array.from({ length: 100 }, () => chat(gw, body, { key: secret })));
  const admitted = results.filter((r) => r.status === 200);
  const denied = results.filter((r) => r.status === 429);
  assert.equal(admitted.length, 5);
  assert.equal(denied.length, 95);
  const err = (await denied[0].json()).error;
  assert.equal(err.code, 'insufficient_quota');
  assert.equal(err.type, 'insufficient_quota');
  await Promise.all(admitted.map((r) => r.json()));
  await Promise.all(denied.slice(1).map((r) => r.text()));

  // The mock answered 4 tokens each: $0.004 × 5, settled exactly, once.
  const u = await settled(secret);
  assert.equal(u.spent_total_usd, 0.02);
  assert.equal(u.reserved_usd, 0);
  assert.equal(u.requests, 5);
  const day = u.by_day.find((d) => d.model === 'slow');
  assert.deepEqual([day.requests, day.output_tokens, day.errors], [5, 20, 0]);
  assert.ok(u.spent_total_usd <= 0.055);
  const viaAdmin = await (await admin(`/admin/usage?key=${key.id}`)).json();
  assert.equal(viaAdmin.spent_total_usd, 0.02);

  // $0.035 left: three more reservations fit, a fourth does not.
  const more = await Promise.all(Array.from({ length: 4 }, () => chat(gw, body, { key: secret })));
  assert.deepEqual(more.map((r) => r.status).sort(), [200, 200, 200, 429]);
  await Promise.all(more.map((r) => r.text()));
});

test('a cut stream is charged for what was sent', async () => {
  const { secret } = await createKey({});
  const events = await readSSE(await chat(gw, ask('cut', 'hi', { stream: true }), { key: secret }));
  const last = events.at(-1);
  assert.ok(last.json?.error, `ends with an error event: ${last.data}`);
  assert.ok(!events.some((e) => e.data === '[DONE]'));
  const sent = events.filter((e) => e.json?.choices).length; // role chunk + content chunks
  const u = await settled(secret);
  const day = u.by_day.find((d) => d.model === 'cut');
  assert.equal(day.errors, 1);
  assert.equal(day.output_tokens, sent);
  assert.equal(u.spent_total_usd, Number((sent * 0.001).toFixed(6)));
});

test('a whole answer without usage is charged its output estimated from the answer, within max_tokens', async () => {
  const { secret } = await createKey({ budgets: { total_usd: 1 } });
  const res = await chat(gw, ask('silent', 'hi', { max_tokens: 40 }), { key: secret });
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.equal(JSON.parse(text).usage, undefined, 'the provider sent none');
  const u = await settled(secret);
  const day = u.by_day.find((d) => d.model === 'silent');
  const expected = Math.min(Math.ceil(Buffer.byteLength(text) / 4), 40);
  assert.equal(day.output_tokens, expected);
  assert.equal(u.spent_total_usd, Number((expected * 0.001).toFixed(6)));
});

test('key state survives a restart of the runtime', async () => {
  const { key, secret } = await createKey({ budgets: { total_usd: 1 } });
  const res = await chat(gw, ask('priced', 'hi', { max_tokens: 10 }), { key: secret });
  assert.equal(res.status, 200);
  await res.text();
  const before = await settled(secret);
  await gw.stop({ keepState: true });
  gw = await startGateway({ persistDir: gw.persistDir });
  const after = await usage(secret);
  assert.equal(after.spent_total_usd, before.spent_total_usd);
  assert.equal(after.requests, 1);
  const listed = await (await admin('/admin/keys')).json();
  assert.ok(listed.data.some((k) => k.id === key.id));
});
