// Faster and steadier than one provider, end to end on wrangler dev: the
// exact-match response cache (Cache API of the location), hedged requests
// against a slow primary, and mid-stream continuation of a broken stream.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { startGateway, chat, ask, readSSE, streamText, mockConfig, putConfig, sleep, ADMIN_TOKEN, KEY } from './harness.mjs';

let mock;
let gw;

/** $0.001 a token, in and out: every charge is exact. */
const PRICED = { input_per_mtok: 1000, output_per_mtok: 1000 };
const TEXT = 'Hello from the mock provider.';

const M = {
  cached: 'cached;chunks=4',
  cut: 'cutc;cut_after=2,chunks=6',
  failing: 'failc;status=500',
  primary: 'primary;first_byte_delay_ms=2000,chunks=3',
  backup: 'backup;first_byte_delay_ms=100,chunks=3',
  first: 'first;cut_after=5,chunks=12',
  second: 'second;resume=1,chunks=12',
  secondAnth: 'second-anth;resume=1,chunks=12',
};

before(async () => {
  mock = await startMock();
  gw = await startGateway();
  const cache = { ttl_s: 300, scope: 'key' };
  const config = mockConfig(mock.url, {
    cached: { targets: [{ provider: 'mock', model: M.cached }], cache },
    cached_team: { targets: [{ provider: 'mock', model: M.cached }], cache: { ttl_s: 300, scope: 'team' } },
    cached_sampled: { targets: [{ provider: 'mock', model: M.cached }], cache: { ttl_s: 300, scope: 'global', sampled: true } },
    cut_cached: { targets: [{ provider: 'mock', model: M.cut }], cache },
    failing_cached: { targets: [{ provider: 'mock', model: M.failing }], cache },
    hedged: {
      targets: [{ provider: 'mock', model: M.primary }, { provider: 'mock', model: M.backup }],
      hedge: { after_ms: 300, max_extra: 1 },
    },
    unhedged: { targets: [{ provider: 'mock', model: M.primary }, { provider: 'mock', model: M.backup }] },
    continued: { targets: [{ provider: 'mock', model: M.first }, { provider: 'mock', model: M.second }], continuation: true },
    continued_anthropic: { targets: [{ provider: 'mock', model: M.first }, { provider: 'anth', model: M.secondAnth }], continuation: true },
    not_continued: { targets: [{ provider: 'mock', model: M.first }, { provider: 'mock', model: M.second }] },
  }, {
    providers: { anth: { kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY' } },
  });
  config.providers.mock.models = Object.fromEntries(Object.values(M).map((m) => [m, PRICED]));
  config.providers.anth.models = { [M.secondAnth]: PRICED };
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

function admin(path, { method = 'GET', body } = {}) {
  return fetch(`${gw.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function createKey(settings = {}) {
  const res = await admin('/admin/keys', { method: 'POST', body: { name: 'speed', ...settings } });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).secret;
}

/** The key's usage once nothing is in flight and every settlement is in. */
async function settled(secret, requests) {
  for (let i = 0; i < 100; i++) {
    const res = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${secret}` } });
    const u = await res.json();
    const counted = u.by_day.reduce((n, d) => n + d.requests, 0);
    if (u.in_flight === 0 && counted >= requests) return u;
    await sleep(100);
  }
  throw new Error('requests never settled');
}

const upstreamCalls = (model) => mock.requests.filter((r) => r.body?.model === model);

const question = (text, extra = {}) => ask('cached', text, { temperature: 0, ...extra });

// ---------------------------------------------------------------------------
// Response cache
// ---------------------------------------------------------------------------

test('the same request twice: the second is a hit, stream and non-stream from one entry, and free', async () => {
  const secret = await createKey();
  mock.clear();
  const first = await chat(gw, question('What is the capital of France?'), { key: secret });
  assert.equal(first.status, 200, await first.clone().text());
  assert.equal(first.headers.get('x-gateway-cache'), 'miss');
  const whole = await first.json();
  assert.equal(whole.choices[0].message.content, TEXT);
  await sleep(300); // stored off the request path

  // Same question, fields in another order, another user: a hit as JSON.
  const again = await chat(gw, { temperature: 0, messages: [{ content: 'What is the capital of France?', role: 'user' }], model: 'cached', user: 'someone-else' }, { key: secret });
  assert.equal(again.status, 200);
  assert.equal(again.headers.get('x-gateway-cache'), 'hit');
  const hit = await again.json();
  assert.deepEqual(hit.choices, whole.choices);
  assert.equal(hit.id, whole.id);

  // The same entry replays as a stream, with a usage chunk when asked.
  const streamed = await chat(gw, question('What is the capital of France?', { stream: true, stream_options: { include_usage: true } }), { key: secret });
  assert.equal(streamed.headers.get('x-gateway-cache'), 'hit');
  assert.match(streamed.headers.get('content-type'), /^text\/event-stream/);
  const events = await readSSE(streamed);
  assert.equal(streamText(events), TEXT);
  assert.equal(events.at(-1).data, '[DONE]');
  assert.deepEqual(events.find((e) => e.json?.usage)?.json.usage, whole.usage);
  assert.equal(upstreamCalls(M.cached).length, 1, 'one upstream call for three answers');

  // A hit costs nothing and is counted as a hit.
  const u = await settled(secret, 3);
  assert.equal(u.spent_total_usd, (whole.usage.prompt_tokens + whole.usage.completion_tokens) / 1000);
  const day = u.by_day.find((d) => d.model === 'cached');
  assert.equal(day.requests, 3);
  assert.equal(day.cache_hits, 2);
});

test('a streamed answer is stored with its chunking and replays as JSON too', async () => {
  mock.clear();
  const body = question('Tell me a streamed story', { stream: true });
  const first = await chat(gw, body);
  assert.equal(first.headers.get('x-gateway-cache'), 'miss');
  const original = await readSSE(first);
  await sleep(300);
  const replay = await chat(gw, body);
  assert.equal(replay.headers.get('x-gateway-cache'), 'hit');
  const replayed = await readSSE(replay);
  assert.deepEqual(replayed.map((e) => e.data), original.map((e) => e.data), 'the original chunks, in order');
  const asJson = await chat(gw, { ...body, stream: false });
  assert.equal(asJson.headers.get('x-gateway-cache'), 'hit');
  assert.equal((await asJson.json()).choices[0].message.content, TEXT);
  assert.equal(upstreamCalls(M.cached).length, 1);
});

test('scope key: two keys never hit each other; scope team: a team shares', async () => {
  const [a, b] = [await createKey(), await createKey()];
  mock.clear();
  const q = question('Whose answer is this?');
  assert.equal((await chat(gw, q, { key: a })).headers.get('x-gateway-cache'), 'miss');
  await sleep(300);
  assert.equal((await chat(gw, q, { key: b })).headers.get('x-gateway-cache'), 'miss', "another key's entry");
  assert.equal((await chat(gw, q, { key: a })).headers.get('x-gateway-cache'), 'hit');
  assert.equal(upstreamCalls(M.cached).length, 2);

  const [t1, t2, other] = [await createKey({ team: 'search' }), await createKey({ team: 'search' }), await createKey({ team: 'ads' })];
  const tq = { ...q, model: 'cached_team' };
  assert.equal((await chat(gw, tq, { key: t1 })).headers.get('x-gateway-cache'), 'miss');
  await sleep(300);
  assert.equal((await chat(gw, tq, { key: t2 })).headers.get('x-gateway-cache'), 'hit', 'same team');
  assert.equal((await chat(gw, tq, { key: other })).headers.get('x-gateway-cache'), 'miss', 'another team');
});

test('Cache-Control: no-store bypasses; no-cache refreshes; sampled requests only when configured', async () => {
  mock.clear();
  const q = question('Fresh, please');
  assert.equal((await chat(gw, q)).headers.get('x-gateway-cache'), 'miss');
  await sleep(300);
  const bypass = await chat(gw, q, { headers: { 'cache-control': 'no-store' } });
  assert.equal(bypass.headers.get('x-gateway-cache'), 'bypass');
  const refresh = await chat(gw, q, { headers: { 'cache-control': 'no-cache' } });
  assert.equal(refresh.headers.get('x-gateway-cache'), 'miss');
  assert.equal(upstreamCalls(M.cached).length, 3, 'both went upstream');
  await sleep(300);
  assert.equal((await chat(gw, q)).headers.get('x-gateway-cache'), 'hit');

  // temperature > 0 (or none: the providers' default is 1) is not cached...
  const sampled = ask('cached', 'Surprise me', { temperature: 0.8 });
  assert.equal((await chat(gw, sampled)).headers.get('x-gateway-cache'), 'bypass');
  assert.equal((await chat(gw, ask('cached', 'Surprise me'))).headers.get('x-gateway-cache'), 'bypass');
  // ...unless the model's policy says so.
  const allowed = { ...sampled, model: 'cached_sampled' };
  assert.equal((await chat(gw, allowed)).headers.get('x-gateway-cache'), 'miss');
  await sleep(300);
  assert.equal((await chat(gw, allowed)).headers.get('x-gateway-cache'), 'hit');
  // A model with no cache says nothing.
  assert.equal((await chat(gw, ask('hedged', 'x', { temperature: 0 }))).headers.get('x-gateway-cache'), null);
});

test('a cut or failed answer is never cached', async () => {
  mock.clear();
  const cut = ask('cut_cached', 'Cut me', { temperature: 0, stream: true });
  for (let i = 0; i < 2; i++) {
    const res = await chat(gw, cut);
    assert.equal(res.headers.get('x-gateway-cache'), 'miss');
    const events = await readSSE(res);
    assert.ok(events.at(-1).json?.error, 'ends with the error event');
    await sleep(300);
  }
  assert.equal(upstreamCalls(M.cut).length, 2);
  const failing = ask('failing_cached', 'Fail me', { temperature: 0 });
  for (let i = 0; i < 2; i++) {
    const res = await chat(gw, failing);
    assert.equal(res.status, 502);
    assert.equal(res.headers.get('x-gateway-cache'), 'miss');
    await res.text();
    await sleep(300);
  }
  assert.equal(upstreamCalls(M.failing).length, 2);
});

// ---------------------------------------------------------------------------
// Hedged requests
// ---------------------------------------------------------------------------

test('a hedge answers from the backup at about after_ms + its first byte; the primary is aborted; both are charged', async () => {
  const secret = await createKey();
  mock.clear();
  const t0 = performance.now();
  const res = await chat(gw, ask('hedged', 'Race us', { stream: true, stream_options: { include_usage: true } }), { key: secret });
  assert.equal(res.status, 200, await res.clone().text());
  const events = await readSSE(res, t0);
  const firstToken = events.find((e) => e.json?.choices?.[0]?.delta?.content).t;
  assert.ok(firstToken >= 350 && firstToken < 1200, `first token at ${firstToken.toFixed(0)} ms`);
  assert.equal(streamText(events), TEXT);
  assert.equal(res.headers.get('x-gateway-model'), M.backup);
  assert.equal(res.headers.get('x-gateway-hedge'), `lost=mock/${M.primary}`);
  assert.equal(res.headers.get('x-gateway-attempts'), '2');
  // The primary's connection was dropped while it was still silent.
  await sleep(200);
  const [primary] = upstreamCalls(M.primary);
  assert.ok(primary?.aborted, 'the primary was aborted');
  assert.ok(primary.aborted - primary.t < 1_500, 'at once, not after its answer');

  // Exact money: the winner's tokens, and the loser's input (the same
  // prompt) at its own price.
  const usage = events.find((e) => e.json?.usage).json.usage;
  const u = await settled(secret, 1);
  assert.equal(u.spent_total_usd, (2 * usage.prompt_tokens + usage.completion_tokens) / 1000);
});

test('without a hedge, the same slow primary answers after its two seconds', async () => {
  mock.clear();
  const t0 = performance.now();
  const res = await chat(gw, ask('unhedged', 'Wait for it', { stream: true }));
  const events = await readSSE(res, t0);
  const firstToken = events.find((e) => e.json?.choices?.[0]?.delta?.content).t;
  assert.ok(firstToken >= 1_900, `first token at ${firstToken.toFixed(0)} ms`);
  assert.equal(res.headers.get('x-gateway-hedge'), null);
  assert.equal(upstreamCalls(M.backup).length, 0);
});

// ---------------------------------------------------------------------------
// Mid-stream continuation
// ---------------------------------------------------------------------------

async function continuedStream(model, key = KEY) {
  mock.clear();
  const res = await chat(gw, ask(model, 'Say hello', { stream: true, stream_options: { include_usage: true } }), { key });
  assert.equal(res.status, 200, await res.clone().text());
  return readSSE(res);
}

test('a stream cut after 5 of 12 chunks is finished by the next target as one stream', async () => {
  const secret = await createKey();
  const events = await continuedStream('continued', secret);
  assert.equal(streamText(events), TEXT, 'all the text, no word twice at the seam');
  assert.equal(events.filter((e) => e.data === '[DONE]').length, 1);
  assert.equal(events.at(-1).data, '[DONE]');
  assert.ok(!events.some((e) => e.json?.error), 'no error event');
  const chunks = events.filter((e) => e.json);
  assert.equal(new Set(chunks.map((e) => e.json.id)).size, 1, 'one id');
  assert.equal(chunks.filter((e) => e.json.choices?.[0]?.finish_reason).length, 1, 'one finish_reason');
  assert.equal(chunks.filter((e) => e.json.choices?.[0]?.delta?.role).length, 1, 'one role');

  // The second leg got the text so far and the continuation prompt.
  const [leg2] = upstreamCalls(M.second);
  const said = leg2.body.messages.at(-2);
  assert.equal(said.role, 'assistant');
  assert.ok(TEXT.startsWith(said.content) && said.content.length > 0);
  assert.equal(leg2.body.messages.at(-1).role, 'user');

  // Usage: both legs (the first's estimated: it never reported).
  const usage = chunks.find((e) => e.json.usage).json.usage;
  const [leg1] = upstreamCalls(M.first);
  assert.ok(leg1);
  assert.ok(usage.completion_tokens > 12, `both legs' output: ${usage.completion_tokens}`);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  const u = await settled(secret, 1);
  assert.equal(u.spent_total_usd, usage.total_tokens / 1000, 'charged as reported');
  assert.equal(u.by_day.find((d) => d.model === 'continued').errors, 0);
});

test('an Anthropic second leg continues from a prefill', async () => {
  const events = await continuedStream('continued_anthropic');
  assert.equal(streamText(events), TEXT);
  const [leg2] = upstreamCalls(M.secondAnth);
  const last = leg2.body.messages.at(-1);
  assert.equal(last.role, 'assistant', 'the prefill is the last turn');
  const prefill = typeof last.content === 'string' ? last.content : last.content.map((b) => b.text).join('');
  assert.ok(prefill.length > 0 && TEXT.startsWith(prefill), prefill);
  assert.equal(prefill, prefill.trimEnd(), 'no trailing whitespace (Anthropic refuses it)');
});

test('with continuation off, the cut stream ends with the in-band error', async () => {
  const events = await continuedStream('not_continued');
  assert.ok(events.at(-1).json?.error, 'the error event last');
  assert.ok(!events.some((e) => e.data === '[DONE]'));
  assert.equal(upstreamCalls(M.second).length, 0);
});
