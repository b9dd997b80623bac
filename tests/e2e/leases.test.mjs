// Leases across two isolates that share one key's object (plain workerd,
// tests/e2e/workerd.mjs): budgets never overspent, rpm never exceeded in any
// 60-second window, revocation within the lease's life, and a lease whose
// isolate vanished charged in full when it expires. Each isolate admits from
// its own leases, so these hold only if the object's slices are right. The
// isolates run the deployed entry module (src/edge/entry.mjs), which drives
// a request with a declared length itself, as in production.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { ask, mockConfig, sleep, ADMIN_TOKEN } from './harness.mjs';
import { startTwoIsolates } from './workerd.mjs';

/** How long isolates admit from a lease here (the revocation bound). */
const LEASE_TTL_MS = 2_000;
/** The longest a request may run; a vanished lease is charged this long
 * after its end plus the report slack (15 s, src/limits/lease.rs). */
const TOTAL_TIMEOUT_MS = 3_000;
const REPORT_SLACK_MS = 15_000;

/** $0.001 per output token, input free: a request's cost is exact and small. */
const PRICED = { input_per_mtok: 0, output_per_mtok: 1000 };

let mock;
let env;

before(async () => {
  mock = await startMock();
  const config = mockConfig(mock.url, {
    demo: { targets: [{ provider: 'demo', model: 'demo-1' }] },
    priced: { targets: [{ provider: 'mock', model: 'priced' }] },
    // Answers after a second: a burst is all in flight at once.
    slow: { targets: [{ provider: 'mock', model: 'slow;headers_delay_ms=1000' }] },
  }, { limits: { lease_ttl_ms: LEASE_TTL_MS, flush_ms: 200 } });
  config.providers.mock.models = { priced: PRICED, 'slow;headers_delay_ms=1000': PRICED };
  config.failover = { total_timeout_ms: TOTAL_TIMEOUT_MS };
  env = await startTwoIsolates({ config, entry: true });
});

after(async () => {
  await env?.stop();
  await mock?.close();
});

async function createKey(settings) {
  const res = await fetch(`${env.a.url}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'leases', ...settings }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return res.json();
}

function chat(side, secret, body) {
  return fetch(`${side.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

async function usage(id) {
  // Each isolate sends what it has settled first (test hook).
  await Promise.all([env.a, env.b].map((s) => fetch(`${s.url}/__test/flush`, { method: 'POST' })));
  const res = await fetch(`${env.a.url}/admin/usage?key=${id}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

// The scenarios use their own keys and run side by side: the long waits
// (a minute of rpm window, a lease's expiry) overlap.
describe('leases across two isolates', { concurrency: true }, () => {
  test('both isolates answer, each from its own leases', async () => {
    const { secret } = await createKey({ limits: { rpm: 1000 } });
    for (const side of [env.a, env.b, env.a, env.b]) {
      const res = await chat(side, secret, ask('demo'));
      assert.equal(res.status, 200);
      await res.text();
    }
    for (let i = 0; i < 10; i++) {
      for (const side of [env.a, env.b]) (await chat(side, secret, ask('demo'))).text();
    }
    await sleep(300);
    const stats = await Promise.all([env.a, env.b].map(async (s) => (await fetch(`${s.url}/__test/stats`)).json()));
    for (const s of stats) assert.ok(s.from_lease > 0, `admitted from a lease: ${JSON.stringify(s)}`);
  });

  test('100 concurrent requests over two isolates never overspend the budget', async () => {
    // Each request may use its 10 max tokens: $0.01 reserved; the mock
    // answers 4 tokens: $0.004. The budget covers five reservations.
    const { key, secret } = await createKey({ budgets: { total_usd: 0.055 } });
    const body = ask('slow', 'hi', { max_tokens: 10 });
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => chat(i % 2 ? env.a : env.b, secret, body)));
    const statuses = results.map((r) => r.status);
    await Promise.all(results.map((r) => r.text()));
    const admitted = statuses.filter((s) => s === 200).length;
    assert.ok(admitted >= 1 && admitted <= 5, `admitted ${admitted} with a budget for 5`);
    assert.equal(statuses.filter((s) => s === 429).length, 100 - admitted);
    await sleep(LEASE_TTL_MS + 500); // the leases end and are returned
    const u = await usage(key.id);
    assert.ok(u.spent_total_usd <= 0.055, `spent ${u.spent_total_usd}`);
    assert.equal(u.spent_total_usd, Number((admitted * 0.004).toFixed(6)), 'charged exactly what was used');
    assert.equal(u.reserved_usd, 0);
  });

  test('near its budget, a key serves request after request, each settled before the next', async () => {
    // $0.01 reserved a request, $0.004 spent: $0.03 a day leaves no room for
    // a lease, so the object admits each one; six fit, one after another.
    const { key, secret } = await createKey({ budgets: { daily_usd: 0.03 } });
    const body = ask('priced', 'hi', { max_tokens: 10 });
    for (let i = 1; i <= 6; i++) {
      const res = await chat(env.a, secret, body);
      assert.equal(res.status, 200, `request ${i}: ${await res.clone().text()}`);
      await res.text();
    }
    // The seventh would pass $0.03: refused until the day ends.
    const over = await chat(env.a, secret, body);
    assert.equal(over.status, 429);
    assert.match((await over.json()).error.message, /daily budget of \$0\.030000 has no room for this request/);
    assert.ok(Number(over.headers.get('retry-after')) > 1, 'retry when the day resets');
    assert.equal((await usage(key.id)).spent_total_usd, 0.024);
  });

  test('a budget held by a request in flight says to retry in a second', async () => {
    // One reservation fits at a time; the slow model keeps it in flight.
    const { secret } = await createKey({ budgets: { daily_usd: 0.015 } });
    const body = ask('slow', 'hi', { max_tokens: 10 });
    const [first, second] = await Promise.all([chat(env.a, secret, body), sleep(300).then(() => chat(env.a, secret, body))]);
    assert.equal(first.status, 200, await first.clone().text());
    assert.equal(second.status, 429);
    assert.equal(second.headers.get('retry-after'), '1');
    assert.match((await second.json()).error.message, /held by requests in flight/);
    await first.text();
  });

  test('a request dearer than the whole budget is refused for good', async () => {
    const { secret } = await createKey({ budgets: { daily_usd: 0.005 } });
    const res = await chat(env.a, secret, ask('priced', 'hi', { max_tokens: 10 }));
    assert.equal(res.status, 429);
    assert.equal(res.headers.get('retry-after'), null);
    assert.equal(res.headers.get('x-should-retry'), 'false');
    const { error } = await res.json();
    assert.equal(error.code, 'insufficient_quota');
    assert.match(error.message, /more than your whole daily budget/);
  });

  test('rpm is never exceeded in any 60-second window across both isolates', async () => {
    const rpm = 50;
    const { secret } = await createKey({ limits: { rpm } });
    const admittedAt = [];
    const burst = async (n) => {
      const sent = performance.now();
      const results = await Promise.all(Array.from({ length: n }, (_, i) => chat(i % 2 ? env.a : env.b, secret, ask('demo'))));
      for (const r of results) {
        // Admitted no earlier than the burst was sent: a window check on
        // send times is the strictest one.
        if (r.status === 200) admittedAt.push(sent);
        else assert.equal(r.status, 429);
        await r.text();
      }
    };
    await burst(70);
    const first = admittedAt.length;
    assert.ok(first <= rpm, `${first} admitted in the first burst`);
    assert.ok(first >= rpm / 2, `only ${first} of ${rpm} admitted: leases held back too much`);
    for (const wait of [20_000, 20_000, 22_000]) {
      await sleep(wait);
      await burst(30);
    }
    admittedAt.sort((x, y) => x - y);
    for (const [i, t] of admittedAt.entries()) {
      const inWindow = admittedAt.filter((u) => u >= t && u < t + 60_000).length;
      assert.ok(inWindow <= rpm, `${inWindow} admitted in the minute from request ${i}`);
    }
    assert.ok(admittedAt.length > first, 'the window slid: later bursts were admitted again');
  });

  test('a revoked key is refused by every isolate within the lease life', async () => {
    const { key, secret } = await createKey({ limits: { rpm: 10_000 } });
    for (const side of [env.a, env.b, env.a, env.b]) (await chat(side, secret, ask('demo'))).text();
    const revoked = await fetch(`${env.a.url}/admin/keys/${key.id}/revoke`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(revoked.status, 200);
    const t0 = performance.now();
    // The isolate that handled the revocation refuses at once.
    const here = await chat(env.a, secret, ask('demo'));
    assert.equal(here.status, 401);
    await here.text();
    // The other admits from its lease at most until that lease ends.
    let refusedAfter = null;
    while (performance.now() - t0 < LEASE_TTL_MS + 3_000) {
      const res = await chat(env.b, secret, ask('demo'));
      await res.text();
      if (res.status === 401) {
        refusedAfter = performance.now() - t0;
        break;
      }
      assert.equal(res.status, 200);
      await sleep(100);
    }
    assert.ok(refusedAfter !== null, 'never refused');
    assert.ok(refusedAfter <= LEASE_TTL_MS + 500, `refused after ${refusedAfter.toFixed(0)} ms (bound ${LEASE_TTL_MS} ms)`);
  });

  test('a lease whose isolate vanished is charged in full when it expires', async () => {
    const { key, secret } = await createKey({ budgets: { total_usd: 10 } });
    // One priced request through b: b is granted a lease holding money.
    const res = await chat(env.b, secret, ask('priced', 'hi', { max_tokens: 10 }));
    assert.equal(res.status, 200);
    await res.text();
    await fetch(`${env.b.url}/__test/flush`, { method: 'POST' });
    // b dies: its lease and what it knew are gone, unreported.
    await fetch(`${env.b.url}/__test/forget`, { method: 'POST' });
    const held = await usage(key.id);
    assert.equal(held.spent_total_usd, 0.004, 'the request b settled before it died');
    assert.ok(held.reserved_usd > 0, 'b held a lease');
    assert.equal(held.leases, 1);
    // Past its end + the request time limit + the report slack, the object's
    // alarm charges what the lease held.
    await sleep(LEASE_TTL_MS + TOTAL_TIMEOUT_MS + REPORT_SLACK_MS + 1_500);
    const charged = await usage(key.id);
    assert.equal(charged.leases, 0);
    assert.equal(charged.reserved_usd, 0);
    assert.equal(
      Number(charged.spent_total_usd.toFixed(6)),
      Number((held.spent_total_usd + held.reserved_usd).toFixed(6)),
      'never undercharged: the held money is spent',
    );
  });
});
