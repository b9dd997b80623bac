// The foundation, end to end: the built worker on workerd with local KV and
// Durable Objects, the mock provider on loopback, real HTTP in between.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import {
  startGateway, chat, ask, readSSE, streamText, mockConfig, putConfig, sleep,
  KEY, OTHER_KEY, ADMIN_TOKEN, MOCK_PROVIDER_KEY,
} from './harness.mjs';

let mock;
let gw;

before(async () => {
  mock = await startMock();
  gw = await startGateway();
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

/** Routes used by most tests: `echo` and `slow` on the mock, `demo` built in. */
function baseModels() {
  return {
    demo: { targets: [{ provider: 'demo', model: 'demo-1' }] },
    echo: { targets: [{ provider: 'mock', model: 'mock-echo;echo=1' }] },
    slow: { targets: [{ provider: 'mock', model: 'mock-slow;interval_ms=200,chunks=5' }] },
    failover: {
      targets: [
        { provider: 'mock', model: 'first;status=503' },
        { provider: 'mock', model: 'second;text=from the second target' },
      ],
    },
  };
}

async function useConfig(models, extra) {
  const res = await putConfig(gw, mockConfig(mock.url, models, extra));
  assert.equal(res.status, 200, await res.text());
}

async function errorOf(res, status) {
  assert.equal(res.status, status);
  assert.match(res.headers.get('content-type'), /application\/json/);
  const body = await res.json();
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0);
  assert.ok('type' in body.error && 'code' in body.error && 'param' in body.error, JSON.stringify(body));
  return body.error;
}

test('health answers without a key', async () => {
  const res = await fetch(`${gw.url}/health`);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { status: 'ok' });
  assert.match(res.headers.get('x-request-id'), /^req_[0-9a-f]{24}$/);
});

test('the demo model answers without any provider key, streamed and not', async () => {
  const res = await chat(gw, ask('demo', 'ping'));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-gateway-provider'), 'demo');
  const body = await res.json();
  assert.equal(body.object, 'chat.completion');
  assert.match(body.choices[0].message.content, /You said: "ping"/);
  assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);

  const sres = await chat(gw, ask('demo', 'pong', { stream: true }));
  assert.equal(sres.status, 200);
  assert.match(sres.headers.get('content-type'), /text\/event-stream/);
  const events = await readSSE(sres);
  assert.equal(events.at(-1).data, '[DONE]');
  assert.equal(events[0].json.choices[0].delta.role, 'assistant');
  assert.match(streamText(events), /You said: "pong"$/);
  assert.ok(!events.some((e) => e.json?.usage), 'no usage chunk unless asked');
});

test('errors are OpenAI-shaped with the right status', async () => {
  let e = await errorOf(await fetch(`${gw.url}/v1/nothing`), 404);
  assert.equal(e.code, 'unknown_url');

  const res = await fetch(`${gw.url}/v1/chat/completions`, { headers: { authorization: `Bearer ${KEY}` } });
  e = await errorOf(res, 405);
  assert.equal(res.headers.get('allow'), 'POST');

  e = await errorOf(await chat(gw, '{"model": "demo", "messages": ['), 400);
  assert.equal(e.code, 'invalid_json');

  e = await errorOf(await chat(gw, { model: 'demo' }), 400);
  assert.equal(e.param, 'messages');

  e = await errorOf(await chat(gw, ask('no-such-model')), 404);
  assert.equal(e.code, 'model_not_found');
  assert.equal(e.param, 'model');

  e = await errorOf(await chat(gw, ask('demo'), { key: '' }), 401);
  e = await errorOf(await fetch(`${gw.url}/v1/models`), 401);
  e = await errorOf(await chat(gw, ask('demo'), { key: 'sk-wrong' }), 401);
  // As OpenAI answers a wrong key.
  assert.equal(e.type, 'invalid_request_error');
  assert.equal(e.code, 'invalid_api_key');
  // The Anthropic-style header is accepted too.
  const viaHeader = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'x-api-key': OTHER_KEY }, body: JSON.stringify(ask('demo')),
  });
  assert.equal(viaHeader.status, 200);
});

test('a body over the configured limit is refused with 413', async () => {
  await useConfig(baseModels(), { limits: { max_body_bytes: 2048 } });
  const big = ask('demo', 'x'.repeat(4096));
  const e = await errorOf(await chat(gw, big), 413);
  assert.equal(e.code, 'request_too_large');
  assert.equal((await chat(gw, ask('demo', 'small'))).status, 200);
  await useConfig(baseModels());
});

test('/v1/models lists the usable models', async () => {
  await useConfig(baseModels());
  const res = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${KEY}` } });
  assert.equal(res.status, 200);
  const list = await res.json();
  assert.equal(list.object, 'list');
  assert.deepEqual(list.data.map((m) => m.id).sort(), ['demo', 'echo', 'failover', 'slow']);
  const one = await fetch(`${gw.url}/v1/models/echo`, { headers: { authorization: `Bearer ${KEY}` } });
  assert.deepEqual(await one.json(), { id: 'echo', object: 'model', created: 0, owned_by: 'mock' });
  await errorOf(await fetch(`${gw.url}/v1/models/nope`, { headers: { authorization: `Bearer ${KEY}` } }), 404);
});

test('an OpenAI-compatible target gets the translated request with its own key', async () => {
  await useConfig(baseModels());
  mock.clear();
  const res = await chat(gw, ask('echo', 'forward me', { temperature: 0.25, user: 'u-1', x_custom: { a: [1, 2] } }));
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.choices[0].message.content, 'forward me');
  assert.equal(body.model, 'mock-echo');
  assert.equal(res.headers.get('x-gateway-provider'), 'mock');
  assert.equal(res.headers.get('x-gateway-model'), 'mock-echo;echo=1');
  assert.equal(mock.requests.length, 1);
  const seen = mock.requests[0];
  assert.equal(seen.path, '/v1/chat/completions');
  assert.equal(seen.headers.authorization, `Bearer ${MOCK_PROVIDER_KEY}`);
  assert.equal(seen.body.model, 'mock-echo;echo=1');
  assert.equal(seen.body.temperature, 0.25);
  assert.deepEqual(seen.body.x_custom, { a: [1, 2] }, 'unknown fields pass through');
  assert.ok(!JSON.stringify(seen.headers).includes(KEY), 'the gateway key is not forwarded');

  // Streams ask the upstream for usage, and strip it unless the client asked.
  mock.clear();
  const s = await chat(gw, ask('echo', 'stream me', { stream: true }));
  const events = await readSSE(s);
  assert.equal(streamText(events), 'stream me');
  assert.equal(events.at(-1).data, '[DONE]');
  assert.ok(!events.some((e) => e.json?.usage), 'usage stripped');
  assert.deepEqual(mock.requests[0].body.stream_options, { include_usage: true });

  const withUsage = await readSSE(await chat(gw, ask('echo', 'count me', { stream: true, stream_options: { include_usage: true } })));
  const usage = withUsage.find((e) => e.json?.usage)?.json.usage;
  assert.ok(usage && usage.completion_tokens > 0, 'usage kept when asked');
});

test('streaming is incremental: chunks 200 ms apart arrive ~200 ms apart', async () => {
  await useConfig(baseModels());
  const t0 = performance.now();
  const res = await chat(gw, ask('slow', 'hi', { stream: true }));
  const events = await readSSE(res, t0);
  const content = events.filter((e) => e.json?.choices?.[0]?.delta?.content);
  assert.equal(content.length, 5, JSON.stringify(events.map((e) => e.data)));
  const gaps = content.slice(1).map((e, i) => e.t - content[i].t);
  for (const gap of gaps) {
    assert.ok(gap > 120 && gap < 450, `gap ${gap.toFixed(0)} ms in ${gaps.map((g) => g.toFixed(0))}`);
  }
  const total = events.at(-1).t;
  assert.ok(content[0].t < total - 600, `first chunk at ${content[0].t.toFixed(0)} ms of ${total.toFixed(0)} ms`);
});

test('a 503 from the first target fails over to the second', async () => {
  await useConfig(baseModels());
  const res = await chat(gw, ask('failover'));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-gateway-attempts'), '2');
  assert.equal((await res.json()).choices[0].message.content, 'from the second target');
});

test('a KV config change changes the route; a bad one is rejected and the last good one kept', async () => {
  const routed = (text) => ({ routed: { targets: [{ provider: 'mock', model: `m;text=${text}` }] } });
  await gw.kvPut('config', mockConfig(mock.url, routed('route-a'), { revision: 'a' }));
  let content;
  for (let i = 0; i < 50 && content !== 'route-a'; i++) {
    const res = await chat(gw, ask('routed'));
    if (res.status === 200) content = (await res.json()).choices[0].message.content;
    else await sleep(100);
  }
  assert.equal(content, 'route-a');

  await gw.kvPut('config', mockConfig(mock.url, routed('route-b'), { revision: 'b' }));
  for (let i = 0; i < 50 && content !== 'route-b'; i++) {
    content = (await (await chat(gw, ask('routed'))).json()).choices[0].message.content;
    if (content !== 'route-b') await sleep(100);
  }
  assert.equal(content, 'route-b');

  // A document that fails validation is written straight to KV: the gateway
  // keeps serving route-b and reports the rejection.
  const bad = mockConfig(mock.url, { routed: { targets: [{ provider: 'nope', model: 'x' }] } });
  await gw.kvPut('config', bad);
  await sleep(500);
  for (let i = 0; i < 5; i++) {
    const res = await chat(gw, ask('routed'));
    assert.equal(res.status, 200);
    assert.equal((await res.json()).choices[0].message.content, 'route-b');
  }
  const status = await (await fetch(`${gw.url}/admin/config`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json();
  assert.equal(status.revision, 'b');
  assert.deepEqual(status.rejected.errors, ['models.routed.targets[0].provider: unknown provider "nope"']);

  // The admin API refuses to store a bad document at all.
  const e = await errorOf(await putConfig(gw, bad), 400);
  assert.match(e.message, /unknown provider "nope"/);
  assert.equal(e.param, 'models.routed.targets[0].provider');
  await errorOf(await putConfig(gw, mockConfig(mock.url, baseModels()), 'wrong-token'), 401);
  await errorOf(await fetch(`${gw.url}/admin/config`), 401);
  await useConfig(baseModels());
});

test('the per-key Durable Object counts every request, per key', async () => {
  const before1 = await usageOf(gw, KEY);
  const before2 = await usageOf(gw, OTHER_KEY);
  await Promise.all(Array.from({ length: 10 }, () => chat(gw, ask('demo')).then((r) => r.text())));
  // Static keys are counted when their requests settle, just after the answer.
  const after1 = await usageOf(gw, KEY, (u) => u.requests >= before1.requests + 10);
  assert.equal(after1.requests, before1.requests + 10);
  assert.ok(after1.last_request_ms >= after1.first_request_ms && after1.first_request_ms > 0);
  await sleep(200);
  assert.equal((await usageOf(gw, KEY)).requests, before1.requests + 10, 'counted once each');
  assert.equal((await usageOf(gw, OTHER_KEY)).requests, before2.requests, 'another key is counted apart');
});

/** GET /v1/usage, polled until `until` holds (settlement runs after the answer). */
async function usageOf(g, key, until = () => true) {
  for (let i = 0; ; i++) {
    const res = await fetch(`${g.url}/v1/usage`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(res.status, 200);
    const u = await res.json();
    if (until(u) || i === 50) return u;
    await sleep(100);
  }
}

test('a panic costs one request, not the worker', async () => {
  const res = await fetch(`${gw.url}/__test/panic`);
  assert.equal(res.status, 500);
  await res.text();
  const next = await chat(gw, ask('demo', 'still alive?'));
  assert.equal(next.status, 200);
  assert.match((await next.json()).choices[0].message.content, /still alive/);
});

test('Durable Object state survives a restart of the runtime', async () => {
  const persisted = await startGateway();
  try {
    for (let i = 0; i < 3; i++) assert.equal((await chat(persisted, ask('demo'))).status, 200);
    assert.equal((await usageOf(persisted, KEY, (u) => u.requests === 3)).requests, 3);
    await persisted.stop({ keepState: true });
    const again = await startGateway({ persistDir: persisted.persistDir });
    try {
      const res = await fetch(`${again.url}/v1/usage`, { headers: { authorization: `Bearer ${KEY}` } });
      assert.equal((await res.json()).requests, 3);
    } finally {
      await again.stop();
    }
  } finally {
    await persisted.stop();
  }
});
