// A mixed load for the analytics, logs, alerts and dashboard tests: several
// keys (three teams), models, providers (OpenAI-compatible, Anthropic, the
// built-in demo), streams, a response-cache hit, a failover that opens a
// breaker, a model whose only target is down, a key that spends its daily
// budget to the cent, two locations; and a webhook receiver that checks
// signatures.

import http from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';
import assert from 'node:assert/strict';

import { chat, ask, putConfig, sleep, ADMIN_TOKEN, KEY, OTHER_KEY } from './harness.mjs';

/** The signing secret the gateway gets as a var. */
export const ALERT_SECRET = 'whsec-test-0123456789';

/** $1,000 per million output tokens: $0.001 a token, input free. */
const PRICED = { input_per_mtok: 0, output_per_mtok: 1000 };
/** $0.50 / $2 per million: small, odd prices, so sums are exact or not at all. */
const ODD = { input_per_mtok: 0.5, output_per_mtok: 2 };

export const FRANKFURT = JSON.stringify({ country: 'DE', continent: 'EU', eu: true, lat: 50.11, lon: 8.68, colo: 'FRA' });

/** The routing config of the load; `extra` is merged in at the top. */
export function observeConfig(mockUrl, webhookUrl, extra = {}) {
  const mock = { kind: 'openai-compatible', base_url: `${mockUrl}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY' };
  return {
    version: 1,
    revision: extra.revision ?? 'observe-1',
    providers: {
      mock: { ...mock, models: { 'cheap;chunks=1': PRICED, chatty: ODD, 'down;status=503': ODD, 'dead;status=503': ODD, streamy: ODD, cached: ODD } },
      claude: { kind: 'anthropic', base_url: mockUrl, api_key_secret: 'MOCK_PROVIDER_KEY', models: { 'claude-mock': ODD } },
      demo: { kind: 'mock' },
    },
    models: {
      demo: { targets: [{ provider: 'demo', model: 'demo-1' }] },
      cheap: { targets: [{ provider: 'mock', model: 'cheap;chunks=1' }] },
      chatty: { targets: [{ provider: 'mock', model: 'chatty' }] },
      // The first target always fails: each request fails over to Anthropic
      // until the first target's breaker opens.
      failover: { targets: [{ provider: 'mock', model: 'down;status=503' }, { provider: 'claude', model: 'claude-mock' }] },
      dead: { targets: [{ provider: 'mock', model: 'dead;status=503' }] },
      // The response cache: the same question twice, the second a free hit.
      cached: { targets: [{ provider: 'mock', model: 'cached' }], cache: { ttl_s: 300, scope: 'key' } },
      // Nearest-first reads the caller's location (the geo override).
      streamy: { targets: [{ provider: 'mock', model: 'streamy' }], strategy: { type: 'nearest' } },
    },
    failover: { breaker: { failures: 3, window_ms: 60000, cooldown_ms: 120000 } },
    analytics: { flush_ms: 500 },
    alerts: webhookUrl ? { webhook: { url: webhookUrl, secret: 'ALERT_SECRET' }, cooldown_ms: 600000 } : {},
    ...extra,
  };
}

export function admin(gw, path, { method = 'GET', body } = {}) {
  return fetch(`${gw.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
}

export async function adminJson(gw, path, opts) {
  const res = await admin(gw, path, opts);
  const text = await res.text();
  assert.ok(res.ok, `${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

export async function createKey(gw, settings) {
  const res = await admin(gw, '/admin/keys', { method: 'POST', body: settings });
  assert.equal(res.status, 201, await res.clone().text());
  return res.json();
}

export async function setConfig(gw, config) {
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
  await sleep(400); // the isolates re-read their config every 300 ms
}

/** Sends every isolate batch now (test hook). */
export async function flush(gw) {
  const res = await fetch(`${gw.url}/__test/flush`, { method: 'POST' });
  assert.equal(res.status, 200);
}

async function expectStatus(res, status, what) {
  const text = await res.text();
  assert.equal(res.status, status, `${what}: ${text.slice(0, 300)}`);
  return text;
}

/**
 * The load. Returns the keys (`search`, `ads`, `logged`, `budget`, each
 * `{key, secret}`) and counts of what was sent. `beforeLogged(keys)` runs
 * before the `logged` key's requests (to turn its logging on).
 */
export async function mixedLoad(gw, { beforeLogged } = {}) {
  const keys = {
    search: await createKey(gw, { name: 'search-prod', team: 'search' }),
    ads: await createKey(gw, { name: 'ads-batch', team: 'ads' }),
    logged: await createKey(gw, { name: 'support-bot', team: 'support' }),
    // Ten requests of $0.001 spend the daily budget exactly.
    budget: await createKey(gw, { name: 'capped', team: 'search', budgets: { daily_usd: 0.01 } }),
  };
  const sent = { ok: 0, failed: 0, refused: 0 };
  const send = async (key, body, { status = 200, headers = {} } = {}) => {
    const res = await chat(gw, body, { key, headers });
    await expectStatus(res, status, `${body.model} with ${key.slice(0, 12)}`);
    if (status === 200) sent.ok++;
    else if (status === 429) sent.refused++;
    else sent.failed++;
  };
  // Static keys: the demo model and a priced one.
  for (let i = 0; i < 3; i++) await send(KEY, ask('demo', `static hello ${i}`));
  await send(OTHER_KEY, ask('chatty', 'static on the other key'));
  // Virtual keys, several models, streams from another location.
  for (let i = 0; i < 4; i++) await send(keys.search.secret, ask('chatty', `search query number ${i}`));
  await send(keys.search.secret, ask('streamy', 'stream from frankfurt', { stream: true }), { headers: { 'x-gateway-test-geo': FRANKFURT } });
  await send(keys.ads.secret, ask('streamy', 'stream from dallas', { stream: true, stream_options: { include_usage: true } }));
  await send(keys.ads.secret, ask('demo', 'ads demo'));
  // A miss, stored off the request path, then a hit.
  for (const expect of ['miss', 'hit']) {
    const res = await chat(gw, ask('cached', 'what is the capital of France?', { temperature: 0 }), { key: keys.ads.secret });
    await expectStatus(res, 200, 'cached');
    assert.equal(res.headers.get('x-gateway-cache'), expect);
    sent.ok++;
    await sleep(300);
  }
  // Three failovers open the first target's breaker (failures: 3); the
  // fourth request goes straight to Anthropic.
  for (let i = 0; i < 4; i++) await send(keys.ads.secret, ask('failover', `fail over ${i}`));
  // Every target of `dead` fails: an error, charged nothing, counted.
  await send(keys.search.secret, ask('dead', 'nobody home'), { status: 503 });
  // The logged key (request_logs.keys).
  if (beforeLogged) await beforeLogged(keys);
  await send(keys.logged.secret, ask('chatty', 'please log this conversation'));
  await send(keys.logged.secret, ask('streamy', 'please log this stream', { stream: true }));
  // Ten requests of exactly $0.001 reach the $0.01 daily budget: 80 % at
  // the eighth, 100 % at the tenth; the eleventh is refused.
  for (let i = 0; i < 10; i++) await send(keys.budget.secret, ask('cheap', `spend ${i}`, { max_tokens: 1 }));
  await send(keys.budget.secret, ask('cheap', 'one too many', { max_tokens: 1 }), { status: 429 });
  return { keys, sent };
}

/**
 * A webhook receiver on loopback. `/ok` answers 204, `/fail` 500, `/hang`
 * never. Each delivery is recorded with its signature checked.
 */
export async function startReceiver(secret = ALERT_SECRET) {
  const deliveries = [];
  const hanging = new Set();
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const ts = req.headers['x-gateway-timestamp'];
      const sig = String(req.headers['x-gateway-signature'] ?? '');
      const want = `sha256=${createHmac('sha256', secret).update(`${ts}.${body}`).digest('hex')}`;
      const signed = sig.length === want.length && timingSafeEqual(Buffer.from(sig), Buffer.from(want));
      let json = null;
      try { json = JSON.parse(body); } catch { /* recorded as is */ }
      deliveries.push({ path: req.url, event: req.headers['x-gateway-event'], signed, json, at: Date.now() });
      if (req.url.startsWith('/hang')) { hanging.add(res); return; }
      res.writeHead(req.url.startsWith('/fail') ? 500 : 204).end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    deliveries,
    /** Deliveries to `path` of `event`. */
    of(event, path = '/ok') { return deliveries.filter((d) => d.event === event && d.path === path); },
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections?.();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Polls `check` (which throws until it holds) for up to `ms`. */
export async function eventually(check, ms = 15000, every = 250) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(every);
    }
  }
}
