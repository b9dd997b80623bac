// Failover, timeouts and bad input on the deployed entry module's path
// (src/edge/entry.mjs on plain workerd, as `wrangler deploy` runs it). A
// request with a declared length, as every SDK sends it, has its body read
// by the entry module, which polls the Rust request path itself and makes a
// whole answer's provider calls with its own `fetch`: a different path
// from the one the `wrangler dev` suites see (there the body comes without
// a length and Rust reads it). Each scenario here has a twin in those
// suites; these prove the deployed path behaves the same.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import { ask, mockConfig, readSSE, streamText, KEY, MOCK_PROVIDER_KEY } from './harness.mjs';
import { startDeployed } from './workerd.mjs';

let mock;
let env;

const ok = 'ok-model';
const m = (name, directives) => `${name};${directives}`;

before(async () => {
  mock = await startMock();
  const two = (first) => ({ targets: [{ provider: 'mock', model: first }, { provider: 'mock', model: ok }] });
  const config = mockConfig(mock.url, {
    'fail-503': two(m('down', 'status=503')),
    'fail-429': two(m('busy', 'status=429,retry_after=30')),
    'fail-hung': two(m('hung', 'headers_delay_ms=3000')),
    'fail-stalled': two(m('stalled', 'first_byte_delay_ms=3000')),
    'fail-cut': two(m('cut', 'cut_after=0')),
    'fail-garbled': two(m('garbled', 'invalid_json=1')),
    'client-400': two(m('picky', 'status=400')),
    'all-down': { targets: [{ provider: 'mock', model: m('down1', 'status=503') }, { provider: 'mock', model: m('down2', 'status=500') }] },
    plain: { targets: [{ provider: 'mock', model: ok }] },
    'only-429': { targets: [{ provider: 'mock', model: m('alone', 'status=429,retry_after=7') }] },
    'all-429': { targets: [{ provider: 'mock', model: m('later', 'status=429,retry_after=9') }, { provider: 'mock', model: m('sooner', 'status=429,retry_after=7') }] },
    'key-refused': { targets: [{ provider: 'mock', model: m('refused', 'status=401') }, { provider: 'mock', model: ok }] },
    torn: { targets: [{ provider: 'mock', model: m('torn', 'cut_inside=3,chunks=8') }] },
    hedged: {
      targets: [{ provider: 'mock', model: m('slowpoke', 'headers_delay_ms=2000') }, { provider: 'mock', model: ok }],
      hedge: { after_ms: 200, max_extra: 1 },
    },
    cached: { targets: [{ provider: 'mock', model: m('cached', 'chunks=3') }], cache: { ttl_s: 300, scope: 'key' } },
    continued: {
      targets: [{ provider: 'mock', model: m('first', 'cut_after=5,chunks=12') }, { provider: 'mock', model: m('second', 'resume=1,chunks=12') }],
      continuation: true,
    },
  }, { limits: { max_body_bytes: 4096 } });
  config.failover = { connect_timeout_ms: 400, first_byte_timeout_ms: 400 };
  env = await startDeployed(config);
});

after(async () => {
  await env?.stop();
  await mock?.close();
});

/** A POST with a declared length (fetch declares it for a string body). */
function post(path, body, { key = KEY, headers = {} } = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  return fetch(`${env.a.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}), ...headers },
    body: text,
  });
}

/** Timed: the response, its parsed body and the time to the whole of it. */
async function timed(path, body, opts) {
  const t0 = performance.now();
  const res = await post(path, body, opts);
  const text = await res.text();
  const ms = performance.now() - t0;
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: the assertion on it says so
  }
  return { res, text, json, ms };
}

/** An OpenAI-shaped error with this status and type, and no provider key in it. */
function assertError({ res, json, text }, status, type) {
  assert.equal(res.status, status, text);
  assert.equal(typeof json?.error?.message, 'string', text);
  if (type) assert.equal(json.error.type, type, text);
  assert.ok(!text.includes(MOCK_PROVIDER_KEY), 'no provider key in the error');
  assert.match(res.headers.get('content-type') ?? '', /application\/json/);
}

for (const [model, why, bound] of [
  ['fail-503', 'a 503', 1_500],
  ['fail-429', 'a 429 with Retry-After', 1_500],
  ['fail-hung', 'a provider that sends nothing (first_byte_timeout_ms 400)', 1_500],
  ['fail-stalled', 'headers then no body (first_byte_timeout_ms 400)', 1_500],
  ['fail-cut', 'half a body, then a dropped connection', 1_500],
  ['fail-garbled', 'a 200 whose body is not JSON', 1_500],
]) {
  test(`whole answer: ${why} is failed over to the next target`, async () => {
    const r = await timed('/v1/chat/completions', ask(model, 'hello'));
    assert.equal(r.res.status, 200, r.text);
    assert.equal(r.json.object, 'chat.completion');
    assert.equal(typeof r.json.choices[0].message.content, 'string');
    assert.ok(r.json.usage.total_tokens > 0, 'usage');
    assert.equal(r.res.headers.get('x-gateway-model'), ok);
    assert.equal(r.res.headers.get('x-gateway-attempts'), '2');
    assert.ok(r.ms < bound, `${r.ms.toFixed(0)} ms`);
  });
}

test('whole answer: after a 429 the target cools, and the next request goes straight to the backup', async () => {
  await post('/v1/chat/completions', ask('fail-429')).then((r) => r.text());
  const before = mock.requests.filter((q) => q.body?.model?.startsWith('busy')).length;
  const r = await timed('/v1/chat/completions', ask('fail-429'));
  assert.equal(r.res.status, 200, r.text);
  assert.equal(r.res.headers.get('x-gateway-attempts'), '1');
  assert.equal(mock.requests.filter((q) => q.body?.model?.startsWith('busy')).length, before, 'the cooled target was not called');
});

test('whole answer: a lone target\'s 429 reaches the client as a 429 with its Retry-After', async () => {
  const r = await timed('/v1/chat/completions', ask('only-429'));
  assertError(r, 429);
  assert.equal(r.res.headers.get('retry-after'), '7');
  // While it cools, the client is still rate limited (not a 503 outage),
  // told how long is left.
  const again = await timed('/v1/chat/completions', ask('only-429'));
  assertError(again, 429, 'rate_limit_error');
  assert.equal(again.json.error.code, 'rate_limit_exceeded');
  const left = Number(again.res.headers.get('retry-after'));
  assert.ok(left >= 1 && left <= 7, `retry-after ${left}`);
});

test('whole answer: every target rate limited is a 429 with the soonest Retry-After any of them gave', async () => {
  const r = await timed('/v1/chat/completions', ask('all-429'));
  assertError(r, 429, 'rate_limit_error');
  assert.equal(r.json.error.code, 'all_targets_failed');
  assert.equal(r.res.headers.get('retry-after'), '7');
  assert.deepEqual(r.json.error.attempts.map((a) => [a.status, a.retry_after]), [[429, 9], [429, 7]]);
});

test("whole answer: the provider refusing the gateway's key is a 502 no retry can fix", async () => {
  const r = await timed('/v1/chat/completions', ask('key-refused'));
  assertError(r, 502, 'server_error');
  assert.equal(r.json.error.code, 'upstream_auth_failed');
  assert.equal(r.res.headers.get('x-should-retry'), 'false');
});

test("whole answer: the provider gets the provider's key and the client's request id, never the gateway key", async () => {
  const id = 'req-deployed-1';
  const r = await timed('/v1/chat/completions', ask('plain'), { headers: { 'x-request-id': id } });
  assert.equal(r.res.status, 200, r.text);
  assert.equal(r.res.headers.get('x-request-id'), id);
  const seen = mock.requests.at(-1);
  assert.equal(seen.headers.authorization, `Bearer ${MOCK_PROVIDER_KEY}`);
  assert.ok(!JSON.stringify(seen.headers).includes(KEY), 'no gateway key upstream');
});

test("whole answer: a provider's 400 is the client's error, passed on, not failed over", async () => {
  const calls = mock.requests.length;
  const r = await timed('/v1/chat/completions', ask('client-400'));
  assertError(r, 400, 'invalid_request_error');
  assert.equal(mock.requests.length, calls + 1, 'one call, no failover');
});

test('whole answer: every target down is a 5xx in OpenAI shape, never a provider key', async () => {
  const r = await timed('/v1/chat/completions', ask('all-down'));
  assert.ok(r.res.status === 502 || r.res.status === 503, `status ${r.res.status}: ${r.text}`);
  assertError(r, r.res.status);
  assert.equal(r.res.headers.get('x-gateway-attempts'), '2');
  // Five failures open both breakers (the default policy); then the
  // targets are skipped: a 503 at once, with no Retry-After that would hold
  // an SDK's retries for the breakers' 30 s.
  let skipped;
  for (let i = 0; i < 8 && !skipped; i++) {
    const next = await timed('/v1/chat/completions', ask('all-down'));
    if (next.json?.error?.code === 'no_target_available') skipped = next;
  }
  assert.ok(skipped, 'the breakers opened');
  assertError(skipped, 503, 'server_error');
  assert.equal(skipped.res.headers.get('retry-after'), null);
  assert.match(skipped.json.error.message, /temporarily skipped/);
});

test('stream: a provider that ends inside an event leaves no half event ahead of the error that ends the stream', async () => {
  for (const include_usage of [false, true]) {
    const res = await post('/v1/chat/completions', ask('torn', 'hello', { stream: true, stream_options: { include_usage } }));
    assert.equal(res.status, 200);
    const text = await res.text();
    const events = text.split('\n\n').filter((e) => e.trim() !== '');
    for (const e of events) {
      assert.ok(e.startsWith('data: '), `${e} in ${text}`);
      JSON.parse(e.slice(6)); // every event whole
    }
    assert.match(events.at(-1), /"error":\{/);
    assert.ok(!text.includes('[DONE]'), 'a cut stream never looks complete');
  }
});

test('stream: a 503 before the first token is failed over unseen; the stream ends with [DONE]', async () => {
  const t0 = performance.now();
  const res = await post('/v1/chat/completions', ask('fail-503', 'hello', { stream: true }));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-gateway-model'), ok);
  const events = await readSSE(res, t0);
  assert.equal(events.at(-1).data, '[DONE]');
  assert.ok(streamText(events).length > 0);
});

test('stream: a provider that sends nothing is failed over at the connect timeout', async () => {
  const t0 = performance.now();
  const res = await post('/v1/chat/completions', ask('fail-hung', 'hello', { stream: true }));
  assert.equal(res.status, 200);
  const events = await readSSE(res, t0);
  assert.equal(events.at(-1).data, '[DONE]');
  assert.ok(events[0].t < 1_500, `first event at ${events[0].t.toFixed(0)} ms`);
});

test('whole answer: a hedge answers from the backup while the primary is silent', async () => {
  const r = await timed('/v1/chat/completions', ask('hedged'));
  assert.equal(r.res.status, 200, r.text);
  assert.equal(r.res.headers.get('x-gateway-model'), ok);
  // The header says the hedge won (a failover at the 400 ms timeout would
  // carry none); the bound leaves a loaded machine room.
  assert.match(r.res.headers.get('x-gateway-hedge') ?? '', /slowpoke/);
  assert.ok(r.ms < 1_500, `${r.ms.toFixed(0)} ms (hedged at 200)`);
});

test('stream: a stream cut mid-answer is finished by the next target as one stream', async () => {
  const res = await post('/v1/chat/completions', ask('continued', 'Say hello', { stream: true }));
  assert.equal(res.status, 200);
  const events = await readSSE(res);
  assert.equal(streamText(events), 'Hello from the mock provider.', 'all the text, no word twice at the seam');
  assert.equal(events.filter((e) => e.data === '[DONE]').length, 1);
  assert.ok(!events.some((e) => e.json?.error), 'no error event');
});

test('cache: a repeated request is answered from the cache, whole and streamed, with one provider call', async () => {
  const body = ask('cached', 'cache me', { temperature: 0 }); // sampling answers are not cached
  const first = await timed('/v1/chat/completions', body);
  assert.equal(first.res.status, 200, first.text);
  const calls = () => mock.requests.filter((q) => q.body?.model?.startsWith('cached')).length;
  assert.equal(calls(), 1);
  // The entry is stored after the answer (in the background): wait for it.
  let hit;
  for (let i = 0; i < 20; i++) {
    hit = await timed('/v1/chat/completions', body);
    if (hit.res.headers.get('x-gateway-cache') === 'hit') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(hit.res.headers.get('x-gateway-cache'), 'hit');
  assert.equal(hit.json.choices[0].message.content, first.json.choices[0].message.content);
  const res = await post('/v1/chat/completions', { ...body, stream: true });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-gateway-cache'), 'hit');
  const events = await readSSE(res);
  assert.equal(streamText(events), first.json.choices[0].message.content);
  assert.equal(events.at(-1).data, '[DONE]');
  assert.equal(calls(), 1, 'one provider call in all');
});

test('many concurrent whole answers with a failover each all succeed', async () => {
  const results = await Promise.all(Array.from({ length: 40 }, (_, i) => timed('/v1/chat/completions', ask(i % 2 ? 'fail-503' : 'fail-cut', `n${i}`))));
  for (const r of results) assert.equal(r.res.status, 200, r.text);
});

// Bad input: the status and error a client gets, in OpenAI's shape.
for (const [why, body, status, param] of [
  ['a body that is not JSON', '{"model": "plain", "messages": [', 400, null],
  ['JSON that is not an object', '[1, 2]', 400, null],
  ['no messages', { model: 'plain' }, 400, 'messages'],
  ['messages not an array', { model: 'plain', messages: 'hi' }, 400, 'messages'],
  ['no model', { messages: [{ role: 'user', content: 'hi' }] }, 400, 'model'],
  ['a temperature that is a string', ask('plain', 'hi', { temperature: 'hot' }), 400, 'temperature'],
  ['an empty body', '', 400, null],
  ['a role chat completions do not have', { model: 'plain', messages: [{ role: 'wizard', content: 'hi' }] }, 400, 'messages[0].role'],
  ['a user message without content', { model: 'plain', messages: [{ role: 'user' }] }, 400, 'messages'],
  ['a message without a role', { model: 'plain', messages: [{ content: 'hi' }] }, 400, 'messages'],
  ['a stream flag that is a string', ask('plain', 'hi', { stream: 'yes' }), 400, 'stream'],
  ['a negative max_tokens', ask('plain', 'hi', { max_tokens: -1 }), 400, 'max_tokens'],
  ['stream_options without a stream', ask('plain', 'hi', { stream_options: { include_usage: true } }), 400, 'stream_options'],
  // Passed through as is, a provider might take it; translated, it cannot be decoded: refused alike.
  ['half a surrogate pair in a \\u escape', '{"model":"plain","messages":[{"role":"user","content":"\\ud800 hi"}]}', 400, null],
]) {
  test(`bad input: ${why} is a 400`, async () => {
    const calls = mock.requests.length;
    const r = await timed('/v1/chat/completions', body);
    assertError(r, status, 'invalid_request_error');
    if (param) assert.equal(r.json.error.param, param, r.text);
    assert.equal(mock.requests.length, calls, 'no provider call');
  });
}

test('bad input: an unknown model is a 404 naming it', async () => {
  const r = await timed('/v1/chat/completions', ask('no-such-model'));
  assertError(r, 404);
  assert.match(r.json.error.message, /no-such-model/);
});

test('bad input: no key or a wrong key is a 401', async () => {
  assertError(await timed('/v1/chat/completions', ask('plain'), { key: null }), 401);
  assertError(await timed('/v1/chat/completions', ask('plain'), { key: 'sk-wrong' }), 401);
});

test('bad input: a body over the configured limit is a 413, declared or not', async () => {
  const big = ask('plain', 'x'.repeat(5000));
  assertError(await timed('/v1/chat/completions', big), 413);
  // A declared length over the entry module's own cap: the Rust side reads
  // and refuses it.
  const huge = ask('plain', 'x'.repeat(300_000));
  assertError(await timed('/v1/chat/completions', huge), 413);
});

test('Anthropic Messages on the deployed path: an answer, a stream and an error in its shape', async () => {
  const body = { model: 'fail-503', max_tokens: 64, messages: [{ role: 'user', content: 'hello' }] };
  const r = await timed('/v1/messages', body, { headers: { 'anthropic-version': '2023-06-01' } });
  assert.equal(r.res.status, 200, r.text);
  assert.equal(r.json.type, 'message');
  assert.equal(r.json.content[0].type, 'text');
  assert.ok(r.json.usage.output_tokens > 0);

  const res = await post('/v1/messages', { ...body, stream: true }, { headers: { 'anthropic-version': '2023-06-01' } });
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.match(text, /event: message_start/);
  assert.match(text, /event: message_stop/);

  const bad = await timed('/v1/messages', { model: 'plain', messages: 'hi', max_tokens: 1 }, { headers: { 'anthropic-version': '2023-06-01' } });
  assert.equal(bad.res.status, 400, bad.text);
  assert.equal(bad.json.type, 'error');
  assert.equal(bad.json.error.type, 'invalid_request_error');
});

test('OpenAI Responses on the deployed path: an answer after a failover', async () => {
  const r = await timed('/v1/responses', { model: 'fail-503', input: 'hello' });
  assert.equal(r.res.status, 200, r.text);
  assert.equal(r.json.object, 'response');
  assert.equal(r.json.status, 'completed');
  assert.ok(r.json.output.some((o) => o.type === 'message'));
});
