// Nearest that holds, end to end: the scenarios against four mock
// deployments (Paris, Frankfurt, Virginia, Oregon) that each answer in
// 300 ms, for callers placed by the geo override.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { startGateway, chat, ask, putConfig, sleep } from './harness.mjs';

let mock;
let gw;
let revision = 0;

const LONDON = JSON.stringify({ country: 'GB', continent: 'EU', eu: false, lat: 51.51, lon: -0.13, colo: 'LHR' });
const LYON = JSON.stringify({ country: 'FR', continent: 'EU', eu: true, lat: 45.76, lon: 4.84, colo: 'LYS' });
const COOLDOWN_MS = 3000;
const PLACES = {
  paris: { lat: 48.86, lon: 2.35 },
  frankfurt: { lat: 50.11, lon: 8.68 },
  virginia: { lat: 38.9, lon: -77.4 },
  oregon: { lat: 45.6, lon: -121.2 },
};

/** The config, with Paris answering `parisDirectives` instead of 300 ms. */
async function configure(parisDirectives = 'first_byte_delay_ms=300') {
  const providers = {};
  for (const [name, location] of Object.entries(PLACES)) {
    const directives = name === 'paris' ? parisDirectives : 'first_byte_delay_ms=300';
    providers[name] = {
      kind: 'openai-compatible',
      base_url: `${mock.url}/_mock/${directives},tag=${name}/v1`,
      api_key_secret: 'MOCK_PROVIDER_KEY',
      location,
    };
  }
  const res = await putConfig(gw, {
    version: 1,
    revision: `nearest-${++revision}`,
    providers,
    models: {
      // Listed farthest first: the order is the strategy's, not the config's.
      four: {
        targets: ['oregon', 'virginia', 'frankfurt', 'paris'].map((provider) => ({ provider, model: 'm' })),
        strategy: { type: 'nearest' },
      },
      two: {
        targets: ['frankfurt', 'paris'].map((provider) => ({ provider, model: 'm' })),
        strategy: { type: 'nearest' },
      },
    },
    failover: { max_attempts: 4, breaker: { failures: 3, window_ms: 60000, cooldown_ms: COOLDOWN_MS } },
  });
  assert.equal(res.status, 200, await res.text());
  await sleep(400); // the isolate re-reads its config every 300 ms
}

before(async () => {
  mock = await startMock();
  gw = await startGateway();
  await configure();
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

async function servedBy(model, geo) {
  const res = await chat(gw, ask(model), { headers: { 'x-gateway-test-geo': geo } });
  assert.equal(res.status, 200, await res.clone().text());
  await res.arrayBuffer();
  return res.headers.get('x-gateway-provider');
}

const hits = (tag) => mock.requests.filter((r) => r.directives.tag === tag).length;

test('a London caller is served by Paris on every one of 100 requests', async () => {
  const seen = {};
  for (let i = 0; i < 100; i++) {
    const p = await servedBy('four', LONDON);
    seen[p] = (seen[p] ?? 0) + 1;
  }
  assert.deepEqual(seen, { paris: 100 });
  assert.equal(hits('frankfurt') + hits('virginia') + hits('oregon'), 0, 'no other deployment was tried');
});

test('Paris answering 503: Frankfurt serves (never Virginia); Paris recovered: back within the cooldown', async () => {
  await configure('status=503');
  const before = { virginia: hits('virginia'), oregon: hits('oregon') };
  for (let i = 0; i < 10; i++) assert.equal(await servedBy('four', LONDON), 'frankfurt', `request ${i}`);
  assert.deepEqual({ virginia: hits('virginia'), oregon: hits('oregon') }, before);

  await configure();
  const recovered = performance.now() - 400; // configure() waited for the isolate to see it
  let back = null;
  while (performance.now() - recovered < COOLDOWN_MS + 1500) {
    const p = await servedBy('four', LONDON);
    if (p === 'paris') {
      back = performance.now() - recovered;
      break;
    }
    assert.equal(p, 'frankfurt');
  }
  assert.ok(back !== null && back <= COOLDOWN_MS + 1000, `back to Paris after ${back} ms`);
  for (let i = 0; i < 10; i++) assert.equal(await servedBy('four', LONDON), 'paris');
});

test('callers in Lyon and London of a Paris + Frankfurt model: Paris every time', async () => {
  for (let i = 0; i < 20; i++) {
    assert.equal(await servedBy('two', LYON), 'paris', `Lyon, request ${i}`);
    assert.equal(await servedBy('two', LONDON), 'paris', `London, request ${i}`);
  }
});
