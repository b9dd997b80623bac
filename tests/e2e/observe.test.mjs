// Analytics, request logs and alerts end to end: after a mixed load, the
// gateway-wide totals equal the sum of the keys' own usage reports to the
// picodollar; logged keys' bodies are in local R2 (redacted when asked,
// nothing when off; days past the retention deleted); a webhook gets
// exactly one signed breaker_open, budget_80 and budget_100; a failing
// webhook never slows a request.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { startGateway, chat, ask, sleep, KEY, OTHER_KEY } from './harness.mjs';
import {
  ALERT_SECRET, observeConfig, mixedLoad, startReceiver, setConfig, flush, admin, adminJson, eventually,
} from './observe_fixture.mjs';

let mock;
let gw;
let receiver;
let load;
let config;

const today = () => new Date().toISOString().slice(0, 10);
const daysAgo = (n) => new Date(Date.now() - n * 86_400_000).toISOString().slice(0, 10);
/** The test config's R2 bucket. */
const BUCKET = 'test-request-logs';

before(async () => {
  mock = await startMock();
  receiver = await startReceiver();
  gw = await startGateway({ vars: { ALERT_SECRET } });
  config = observeConfig(mock.url, `${receiver.url}/ok`);
  await setConfig(gw, config);
  // Log objects of an old day and of a recent one: the first write of the
  // isolate deletes the days past the retention (30 days by default).
  await gw.r2Put(BUCKET, `requests/${daysAgo(40)}/00/1-old-000001.jsonl`, '{"old":true}\n');
  await gw.r2Put(BUCKET, `requests/${daysAgo(2)}/00/2-recent-000001.jsonl`, '{"recent":true}\n');
  load = await mixedLoad(gw, { beforeLogged: async (keys) => {
    config.request_logs = { keys: [keys.logged.key.id] };
    await setConfig(gw, config);
  } });
});

after(async () => {
  await gw?.stop();
  await receiver?.close();
  await mock?.close();
});

/** A usage report's by_day rows of today, summed. */
function todayOf(report) {
  const rows = report.by_day.filter((d) => d.date === today());
  const sum = (f) => rows.reduce((a, d) => a + d[f], 0);
  return {
    requests: sum('requests'), errors: sum('errors'), input_tokens: sum('input_tokens'),
    output_tokens: sum('output_tokens'), cached_tokens: sum('cached_tokens'), cache_hits: sum('cache_hits'),
    cost_pico: sum('cost_pico'),
  };
}

async function keyReport(id) {
  return adminJson(gw, `/admin/usage?key=${id}`);
}

async function staticReport(key) {
  const res = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${key}` } });
  assert.equal(res.status, 200);
  return res.json();
}

const FIELDS = ['requests', 'errors', 'input_tokens', 'output_tokens', 'cached_tokens', 'cache_hits', 'cost_pico'];
const pick = (o) => Object.fromEntries(FIELDS.map((f) => [f, o[f]]));

test('analytics totals for the day equal the sum of every key usage report, to the picodollar', async () => {
  await eventually(async () => {
    await flush(gw);
    const reports = {};
    for (const [name, k] of Object.entries(load.keys)) {
      const r = await keyReport(k.key.id);
      assert.equal(r.in_flight, 0, `${name} has requests in flight`);
      reports[k.key.id] = todayOf(r);
    }
    const statics = [todayOf(await staticReport(KEY)), todayOf(await staticReport(OTHER_KEY))];
    const sum = Object.fromEntries(FIELDS.map((f) => [f, [...Object.values(reports), ...statics].reduce((a, r) => a + r[f], 0)]));
    const a = await adminJson(gw, `/admin/analytics?from=${today()}&to=${today()}`);
    assert.deepEqual(pick(a.totals), sum);
    assert.ok(sum.requests >= load.sent.ok + load.sent.failed, JSON.stringify(sum));
    assert.ok(sum.cost_pico > 0);
    assert.equal(sum.cache_hits, 1);
    // And key by key.
    const byKey = await adminJson(gw, `/admin/analytics?from=${today()}&to=${today()}&group_by=key`);
    for (const [id, r] of Object.entries(reports)) {
      assert.deepEqual(pick(byKey.groups.find((g) => g.group === id)), r, id);
    }
    const statik = byKey.groups.find((g) => g.group === 'static');
    assert.deepEqual(pick(statik), Object.fromEntries(FIELDS.map((f) => [f, statics[0][f] + statics[1][f]])));
  }, 20000, 500);
});

test('analytics group by team, model, provider and location, with failovers and percentiles', async () => {
  const q = (g) => adminJson(gw, `/admin/analytics?from=${today()}&to=${today()}&group_by=${g}`);
  const [teams, models, providers, locations, series] = await Promise.all([
    q('team'), q('model'), q('provider'), q('location'),
    adminJson(gw, `/admin/analytics?from=${today()}&to=${today()}&interval=hour`),
  ]);
  const names = (a) => a.groups.map((g) => g.group).sort();
  assert.deepEqual(names(teams), ['', 'ads', 'search', 'support'], 'static keys have no team');
  assert.deepEqual(names(models), ['cached', 'chatty', 'cheap', 'dead', 'demo', 'failover', 'streamy']);
  const cached = models.groups.find((g) => g.group === 'cached');
  assert.deepEqual([cached.requests, cached.cache_hits], [2, 1]);
  assert.deepEqual(names(providers), ['', 'claude', 'demo', 'mock'], "'' is the request no target answered");
  assert.deepEqual(names(locations), ['DFW', 'FRA']);
  const failover = models.groups.find((g) => g.group === 'failover');
  assert.equal(failover.requests, 4);
  assert.equal(failover.failovers, 3, 'the fourth skipped the open breaker');
  assert.equal(models.groups.find((g) => g.group === 'dead').errors, 1);
  assert.equal(models.groups.find((g) => g.group === 'cheap').cost_pico, 10 * 1e9, 'ten requests at $0.001');
  for (const a of [teams, models, providers, locations, series]) {
    assert.equal(a.totals.requests, models.totals.requests);
    assert.equal(a.totals.cost_pico, models.totals.cost_pico);
  }
  assert.equal(series.series.reduce((s, p) => s + p.requests, 0), models.totals.requests);
  assert.ok(models.totals.latency_ms.p50 >= 0 && models.totals.latency_ms.p95 >= models.totals.latency_ms.p50);
  assert.ok(models.totals.ttft_ms.p95 != null);
  // A bad query names its parameter.
  const bad = await admin(gw, '/admin/analytics?group_by=colour');
  assert.equal(bad.status, 400);
  assert.equal((await bad.json()).error.param, 'group_by');
});

test('a logged key has its bodies in R2 after the flush; redaction leaves no message text; PII policies leave only placeholders; off writes nothing', async () => {
  const logged = load.keys.logged;
  const records = async (q) => (await adminJson(gw, `/admin/logs?date=${today()}&${q}`)).data;
  // Logged in full during the load.
  const full = await eventually(async () => {
    const r = await records(`key=${logged.key.id}`);
    assert.equal(r.length, 2, JSON.stringify(r).slice(0, 300));
    return r;
  });
  const chatRec = full.find((r) => !r.stream);
  assert.equal(chatRec.request.messages[0].content, 'please log this conversation');
  assert.match(JSON.stringify(chatRec.response), /Hello from the mock provider/);
  assert.equal(chatRec.team, 'support');
  assert.equal(chatRec.redacted, false);
  const streamRec = full.find((r) => r.stream);
  assert.ok(Array.isArray(streamRec.response) && streamRec.response.length > 2, 'a stream is kept as its events');
  // A limit below what matches says the answer is cut.
  const one = await adminJson(gw, `/admin/logs?date=${today()}&key=${logged.key.id}&limit=1`);
  assert.deepEqual([one.data.length, one.truncated], [1, true]);
  assert.equal((await adminJson(gw, `/admin/logs?date=${today()}&key=${logged.key.id}&limit=2`)).truncated, false);
  // Retention: the old day is gone, the recent one kept.
  assert.deepEqual((await adminJson(gw, `/admin/logs?date=${daysAgo(40)}`)).objects, []);
  assert.equal((await adminJson(gw, `/admin/logs?date=${daysAgo(2)}`)).objects.length, 1);
  // Nobody else was logged.
  const all = await records('limit=1000');
  assert.ok(all.every((r) => r.key === logged.key.id), 'only the logged key');
  assert.ok(!JSON.stringify(all).includes('search query number'));

  // Redaction on.
  config.request_logs = { keys: [logged.key.id], redact: true };
  await setConfig(gw, config);
  const secretText = 'my card number is 4111 1111 1111 1111';
  for (const stream of [false, true]) {
    const res = await chat(gw, ask('chatty', secretText, { stream }), { key: logged.secret });
    assert.equal(res.status, 200);
    await res.text();
  }
  const redacted = await eventually(async () => {
    const r = (await records(`key=${logged.key.id}`)).filter((x) => x.redacted);
    assert.equal(r.length, 2);
    return r;
  });
  const text = JSON.stringify(redacted);
  for (const leak of ['4111', 'card number', 'Hello from the mock', 'Hello', 'mock provider']) {
    assert.ok(!text.includes(leak), `${leak} leaked: ${text.slice(0, 400)}`);
  }
  assert.equal(redacted.find((r) => !r.stream).request.messages[0].role, 'user', 'structure is kept');

  // Under a PII policy a log keeps what left the gateway: the placeholders,
  // and no body at all for a request refused for the personal data in it.
  const byId = (id) => eventually(async () => {
    const r = await records(`request_id=${id}`);
    assert.equal(r.length, 1);
    return r[0];
  });
  const address = 'alice.personal@example.com';
  config.request_logs = { keys: [logged.key.id] };
  config.models.chatty.pii = { mode: 'restore' };
  await setConfig(gw, config);
  let res = await chat(gw, ask('chatty', `write to ${address}`), { key: logged.secret });
  assert.equal(res.status, 200);
  await res.text();
  const restored = await byId(res.headers.get('x-request-id'));
  assert.equal(restored.request.messages[0].content, 'write to [EMAIL_1]');
  config.models.chatty.pii = { mode: 'block' };
  await setConfig(gw, config);
  res = await chat(gw, ask('chatty', `write to ${address}`), { key: logged.secret });
  assert.equal(res.status, 400);
  await res.text();
  const refused = await byId(res.headers.get('x-request-id'));
  assert.equal(refused.status, 400);
  assert.ok(!JSON.stringify(refused).includes(address), JSON.stringify(refused).slice(0, 400));
  delete config.models.chatty.pii;

  // Off: nothing more is written.
  const before = (await adminJson(gw, `/admin/logs?date=${today()}`)).objects.length;
  config.request_logs = {};
  await setConfig(gw, config);
  for (const key of [logged.secret, load.keys.search.secret]) {
    const res = await chat(gw, ask('chatty', 'not to be logged'), { key });
    assert.equal(res.status, 200);
    await res.text();
  }
  await flush(gw);
  const after = await adminJson(gw, `/admin/logs?date=${today()}&limit=1000`);
  assert.equal(after.objects.length, before, 'no object written');
  assert.ok(!JSON.stringify(after.data).includes('not to be logged'));
});

test('the webhook gets exactly one signed breaker_open, budget_80 and budget_100', async () => {
  await eventually(() => {
    assert.equal(receiver.of('budget_100').length, 1);
    assert.equal(receiver.of('breaker_open').length, 1);
  }, 20000);
  // Anything late or repeated would show up by now.
  await sleep(2000);
  await flush(gw);
  await sleep(1000);
  const ok = receiver.deliveries.filter((d) => d.path === '/ok');
  const count = (e) => ok.filter((d) => d.event === e).length;
  assert.equal(count('breaker_open'), 1);
  assert.equal(count('budget_80'), 1);
  assert.equal(count('budget_100'), 1);
  assert.equal(count('model_down'), 1, 'the dead model, once');
  assert.ok(ok.every((d) => d.signed), 'every delivery carries a valid HMAC-SHA256 signature');
  const breaker = receiver.of('breaker_open')[0].json;
  assert.equal(breaker.event, 'breaker_open');
  assert.equal(breaker.target, 'mock/down;status=503');
  assert.equal(breaker.details.provider, 'mock');
  const b100 = receiver.of('budget_100')[0].json;
  assert.equal(b100.target, `key:${load.keys.budget.key.id}:daily`);
  assert.equal(b100.details.budget_usd, 0.01);
  assert.equal(b100.details.spent_usd, 0.01);
  assert.equal(receiver.of('budget_80')[0].json.details.team, 'search');
  // The dashboard's list says the same.
  const listed = await adminJson(gw, '/admin/alerts');
  assert.equal(listed.data.filter((d) => d.outcome === 'delivered').length, ok.length);
});

test('a failing or hanging webhook never slows or fails requests', async () => {
  const timed = async (n, key, model) => {
    const times = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const res = await chat(gw, ask(model, `timed ${i}`), { key });
      assert.equal(res.status, 200);
      await res.text();
      times.push(performance.now() - t0);
    }
    return times.sort((a, b) => a - b)[Math.floor(n / 2)];
  };
  const baseline = await timed(10, KEY, 'demo');
  for (const path of ['/hang', '/fail']) {
    config.alerts = { webhook: { url: `${receiver.url}${path}`, secret: 'ALERT_SECRET' }, cooldown_ms: 600000 };
    config.revision = `webhook-${path}`;
    // A new model whose only target is down raises model_down at once.
    config.models[`down${path.slice(1)}`] = { targets: [{ provider: 'mock', model: `gone-${path.slice(1)};status=503` }] };
    await setConfig(gw, config);
    const res = await chat(gw, ask(`down${path.slice(1)}`, 'raise it'));
    assert.equal(res.status, 503);
    await res.text();
    await flush(gw);
    await eventually(() => assert.ok(receiver.of('model_down', path).length >= 1), 15000);
    // While the webhook hangs (or fails and is retried), requests run as before.
    const during = await timed(10, KEY, 'demo');
    assert.ok(during < baseline * 3 + 50, `median ${during.toFixed(1)} ms vs ${baseline.toFixed(1)} ms before`);
  }
});
