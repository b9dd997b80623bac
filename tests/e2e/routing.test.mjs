// Routing and failover, end to end: every failure class against the mock
// provider, data residency under failover, weighted splits, the circuit
// breaker, and the x-gateway-* headers.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock, } from '../mock/server.mjs';
import { startGateway, chat, ask, readSSE, putConfig, sleep, freePort, MOCK_PROVIDER_KEY } from './harness.mjs';

let mock;
let gw;
let closedPort;

const EU = JSON.stringify({ country: 'DE', continent: 'EU', eu: true, lat: 50.1, lon: 8.7, colo: 'FRA' });
const US = JSON.stringify({ country: 'US', continent: 'NA', eu: false, lat: 40.7, lon: -74.0, colo: 'EWR' });

/** A provider on the mock, its directives in the base URL path. */
function mockProvider(directives = '', extra = {}) {
  const prefix = directives ? `/_mock/${directives}` : '';
  return { kind: 'openai-compatible', base_url: `${mock.url}${prefix}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY', ...extra };
}

/** Two targets: the first with `directives`, the second healthy. */
function pair(first, second = 'ok') {
  return { targets: [{ provider: first, model: `${first}-model` }, { provider: second, model: `${second}-model` }] };
}

before(async () => {
  closedPort = await freePort(); // nothing listens here
  mock = await startMock();
  gw = await startGateway();
  const config = {
    version: 1,
    revision: 'routing-e2e',
    providers: {
      ok: mockProvider('', { region: 'test-region', jurisdiction: 'us' }),
      s503: mockProvider('status=503'),
      s500: mockProvider('status=500'),
      s502: mockProvider('status=502'),
      s504: mockProvider('status=504'),
      s400: mockProvider('status=400'),
      sdriven: mockProvider('status=503'),
      s429: mockProvider('status=429,retry_after=2'),
      anth529: { kind: 'anthropic', base_url: `${mock.url}/_mock/status=529`, api_key_secret: 'MOCK_PROVIDER_KEY' },
      refused: { kind: 'openai-compatible', base_url: `http://127.0.0.1:${closedPort}/v1` },
      slowheaders: mockProvider('headers_delay_ms=3000'),
      slowfirst: mockProvider('first_byte_delay_ms=3000'),
      badjson: mockProvider('invalid_json=1'),
      cutearly: mockProvider('cut_after=0'),
      flaky: mockProvider('fail_first=2'),
      'eu-down': mockProvider('status=503', { jurisdiction: 'eu', region: 'westeurope', location: { lat: 52.37, lon: 4.9 } }),
      'eu-up': mockProvider('', { jurisdiction: 'eu', region: 'germanywestcentral', location: { lat: 50.1, lon: 8.7 } }),
      'us-up': mockProvider('', { jurisdiction: 'us', region: 'eastus', location: { lat: 37.4, lon: -79.2 } }),
      heavy: mockProvider(''),
      light: mockProvider(''),
    },
    models: {
      ok: { targets: [{ provider: 'ok', model: 'ok-model' }] },
      f503: pair('s503'),
      f500: pair('s500'),
      f502: pair('s502'),
      f504: pair('s504'),
      f400: pair('s400'),
      fdriven: pair('sdriven'),
      f429: pair('s429'),
      f529: pair('anth529'),
      fconnect: pair('refused'),
      fheaders: pair('slowheaders'),
      ffirst: pair('slowfirst'),
      fjson: pair('badjson'),
      fcut: pair('cutearly'),
      fbreaker: { targets: [{ provider: 'flaky', model: 'flaky-model' }, { provider: 'ok', model: 'ok-b' }] },
      allfail: { targets: [{ provider: 's503', model: 'a' }, { provider: 's500', model: 'b' }, { provider: 'refused', model: 'c' }] },
      regional: {
        targets: [{ provider: 'us-up', model: 'r' }, { provider: 'eu-down', model: 'r' }, { provider: 'eu-up', model: 'r' }],
        strategy: { type: 'nearest' },
      },
      eu_only_down: { targets: [{ provider: 'eu-down', model: 'x' }, { provider: 'us-up', model: 'x' }] },
      split: {
        targets: [{ provider: 'heavy', model: 'h', weight: 3 }, { provider: 'light', model: 'l', weight: 1 }],
        strategy: { type: 'weighted' },
      },
    },
    residency: [{ origin: { eu: true }, jurisdictions: ['eu'] }],
    failover: {
      connect_timeout_ms: 700,
      first_byte_timeout_ms: 700,
      retry_after_cap_s: 30,
      breaker: { failures: 2, window_ms: 60000, cooldown_ms: 1500 },
    },
  };
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

async function answered(model, { stream = false, geo } = {}) {
  const t0 = performance.now();
  const res = await chat(gw, ask(model, 'hi', stream ? { stream: true } : {}), { headers: geo ? { 'x-gateway-test-geo': geo } : {} });
  const body = stream ? await readSSE(res) : await res.json();
  return { res, body, ms: performance.now() - t0 };
}

function providerOf(res) {
  return res.headers.get('x-gateway-provider');
}

for (const [model, why] of [
  ['f503', '503 at once'],
  ['f500', '500'],
  ['f502', '502'],
  ['f504', '504'],
  ['f529', "Anthropic's 529 overloaded"],
  ['fconnect', 'a refused connection'],
  ['fjson', 'an invalid JSON body'],
]) {
  test(`fails over on ${why}`, async () => {
    const { res, body, ms } = await answered(model);
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(providerOf(res), 'ok');
    assert.equal(res.headers.get('x-gateway-attempts'), '2');
    assert.equal(res.headers.get('x-gateway-region'), 'test-region');
    assert.match(res.headers.get('x-request-id'), /^req_/);
    assert.ok(ms < 1500, `took ${ms.toFixed(0)} ms`);
  });
}

test("a whole answer's provider calls are made by the entry module, failover included; a stream's are not", async () => {
  const calls = async () => (await (await fetch(`${gw.url}/__test/stats`)).json()).driven_calls;
  const before = await calls();
  const { res, body } = await answered('fdriven');
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(res.headers.get('x-gateway-attempts'), '2');
  assert.equal(body.object, 'chat.completion');
  // The 503, then the answer: both driven from JavaScript (src/edge/driven.rs).
  assert.equal(await calls(), before + 2);
  const streamed = await answered('ok', { stream: true });
  assert.equal(streamed.res.status, 200);
  assert.ok(streamed.body.length > 0);
  assert.equal(await calls(), before + 2, 'a stream is read chunk by chunk from Rust');
});

test('fails over when response headers do not arrive in time', async () => {
  const { res, ms } = await answered('fheaders');
  assert.equal(providerOf(res), 'ok');
  assert.ok(ms > 650 && ms < 2000, `took ${ms.toFixed(0)} ms for a 700 ms timeout`);
});

test('a stream fails over when its first token does not arrive in time', async () => {
  const { res, body, ms } = await answered('ffirst', { stream: true });
  assert.equal(providerOf(res), 'ok');
  assert.equal(body.at(-1).data, '[DONE]');
  assert.ok(ms > 650 && ms < 2000, `took ${ms.toFixed(0)} ms for a 700 ms timeout`);
});

test('a stream cut before its first byte fails over invisibly', async () => {
  const { res, body } = await answered('fcut', { stream: true });
  assert.equal(providerOf(res), 'ok');
  assert.equal(res.headers.get('x-gateway-attempts'), '2');
  assert.equal(body.at(-1).data, '[DONE]');
  assert.ok(!body.some((e) => e.json?.error));
});

test('does not fail over on a 400: the caller gets it', async () => {
  mock.clear();
  const { res, body } = await answered('f400');
  assert.equal(res.status, 400);
  assert.equal(body.error.type, 'invalid_request_error');
  assert.ok(!mock.requests.some((r) => r.body?.model === 'ok-model'), 'the second target was not tried');
});

test("a 429's Retry-After cools the target, then it is tried again", async () => {
  mock.clear();
  const first = await answered('f429');
  assert.equal(providerOf(first.res), 'ok');
  assert.equal(first.res.headers.get('x-gateway-attempts'), '2');
  const triedLimited = () => mock.requests.filter((r) => r.body?.model === 's429-model').length;
  assert.equal(triedLimited(), 1);
  // Cooling: straight to the healthy target.
  const second = await answered('f429');
  assert.equal(second.res.headers.get('x-gateway-attempts'), '1');
  assert.equal(triedLimited(), 1);
  await sleep(2100);
  await answered('f429');
  assert.equal(triedLimited(), 2, 'tried again once Retry-After passed');
});

test('when every target fails, the error lists each attempt without secrets', async () => {
  const { res, body } = await answered('allfail');
  assert.equal(res.status, 503);
  assert.equal(body.error.code, 'all_targets_failed');
  assert.deepEqual(body.error.attempts.map((a) => [a.provider, a.status]), [['s503', 503], ['s500', 500], ['refused', null]]);
  assert.ok(!JSON.stringify(body).includes(MOCK_PROVIDER_KEY));
});

test('the breaker opens after repeated failures and recovers through a probe', async () => {
  mock.clear();
  const flakyCalls = () => mock.requests.filter((r) => r.body?.model === 'flaky-model').length;
  // fail_first=2: the first two calls fail (and fail over), opening the breaker.
  for (let i = 0; i < 2; i++) {
    const { res } = await answered('fbreaker');
    assert.equal(providerOf(res), 'ok');
  }
  assert.equal(flakyCalls(), 2);
  // Open: skipped without a call.
  const skipped = await answered('fbreaker');
  assert.equal(skipped.res.headers.get('x-gateway-attempts'), '1');
  assert.equal(flakyCalls(), 2);
  // After the cooldown one probe goes; it succeeds and closes the breaker.
  await sleep(1600);
  const probe = await answered('fbreaker');
  assert.equal(providerOf(probe.res), 'flaky');
  assert.equal(flakyCalls(), 3);
  const closed = await answered('fbreaker');
  assert.equal(providerOf(closed.res), 'flaky');
});

test('EU requests stay in the EU, failover included; others go nearest', async () => {
  mock.clear();
  const eu = await answered('regional', { geo: EU });
  assert.equal(eu.res.status, 200);
  // Nearest EU deployment first (Frankfurt caller: germanywestcentral).
  assert.equal(providerOf(eu.res), 'eu-up');
  const us = await answered('regional', { geo: US });
  assert.equal(providerOf(us.res), 'us-up');

  // The only EU deployment is down: the request fails rather than leave the EU.
  mock.clear();
  const stuck = await answered('eu_only_down', { geo: EU });
  assert.equal(stuck.res.status, 503);
  assert.ok(!mock.requests.some((r) => r.body?.model === 'x' && r.rawPath.startsWith('/v1')), 'never sent to the US deployment');
  assert.equal(mock.requests.length, 1);
  // From the US the same model fails over to the US deployment.
  const fromUs = await answered('eu_only_down', { geo: US });
  assert.equal(providerOf(fromUs.res), 'us-up');
  // A model with no EU deployment at all: refused, and no retry can change that.
  mock.clear();
  const nowhere = await answered('ok', { geo: EU });
  assert.equal(nowhere.res.status, 503);
  assert.match(nowhere.body.error.message, /jurisdictions this request must stay in/);
  assert.equal(nowhere.res.headers.get('x-should-retry'), 'false');
  assert.equal(mock.requests.length, 0);
});

test('a weighted split lands within tolerance over many requests', async () => {
  const counts = { heavy: 0, light: 0 };
  const n = 200;
  for (let batch = 0; batch < n / 20; batch++) {
    const results = await Promise.all(Array.from({ length: 20 }, () => answered('split')));
    for (const { res } of results) counts[providerOf(res)]++;
  }
  const share = counts.heavy / n;
  assert.ok(share > 0.65 && share < 0.85, `heavy got ${(share * 100).toFixed(1)}% (${JSON.stringify(counts)}), expected ~75%`);
});
