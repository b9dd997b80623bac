// Trust, end to end: data-class routing (failover included, and no call at
// all when no target may take the class), PII redaction before egress
// (redact, restore — streams split at every byte boundary — and block), a
// panic that answers JSON, header hygiene both ways, CORS, request ids,
// request limits, parameter checks on the pass-through path, and a bound on
// JSON nesting.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import {
  startGateway, chat, ask, readSSE, streamText, putConfig, sleep, KEY, ADMIN_TOKEN, MOCK_PROVIDER_KEY,
} from './harness.mjs';

let mock;
let gw;

/** A provider on the mock, its directives in the base URL path. */
function mockProvider(directives = '', extra = {}) {
  const prefix = directives ? `/_mock/${directives}` : '';
  return { kind: 'openai-compatible', base_url: `${mock.url}${prefix}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY', ...extra };
}

const SECRET_TEXT = 'Email jane.doe@example.com, card 4111 1111 1111 1111, phone +1 415 555 0132.';
const REDACTED_TEXT = 'Email [EMAIL_1], card [CARD_1], phone [PHONE_1].';
/** Chunk counts for restored streams: the last splits at every byte. */
const CHUNKS = [1, 2, 3, 7, 16, REDACTED_TEXT.length];

before(async () => {
  mock = await startMock();
  gw = await startGateway();
  const restoreModels = Object.fromEntries(CHUNKS.map((n) => [
    `restore-${n}`,
    { targets: [{ provider: 'plain', model: `echo;echo=1,chunks=${n}` }], pii: { mode: 'restore' } },
  ]));
  const config = {
    version: 1,
    revision: 'trust-e2e',
    providers: {
      plain: mockProvider('', { jurisdiction: 'us' }),
      hipaa: mockProvider('', { jurisdiction: 'us', attributes: ['hipaa', 'zero_data_retention'] }),
      'hipaa-down': mockProvider('status=503', { jurisdiction: 'us', attributes: ['hipaa'] }),
      internal: mockProvider('provider_headers=1'),
      anth: { kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY' },
      oai: { kind: 'openai', base_url: `${mock.url}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY' },
    },
    models: {
      mixed: { targets: [{ provider: 'plain', model: 'plain-m' }, { provider: 'hipaa', model: 'hipaa-m' }] },
      'mixed-failover': {
        targets: [{ provider: 'plain', model: 'plain-m' }, { provider: 'hipaa-down', model: 'down-m' }, { provider: 'hipaa', model: 'hipaa-m' }],
      },
      'plain-only': { targets: [{ provider: 'plain', model: 'plain-only-m' }] },
      redact: { targets: [{ provider: 'plain', model: 'echo;echo=1' }], pii: { mode: 'redact' } },
      block: { targets: [{ provider: 'plain', model: 'block-m' }], pii: { mode: 'block', kinds: ['email', 'card_number', 'phone'] } },
      ...restoreModels,
      'restore-messages': { targets: [{ provider: 'anth', model: 'claude;echo=1,chunks=17' }], pii: { mode: 'restore' } },
      'restore-responses': { targets: [{ provider: 'oai', model: 'gpt;echo=1,chunks=13' }], pii: { mode: 'restore' } },
      echo: { targets: [{ provider: 'plain', model: 'echo;echo=1' }] },
      slow: { targets: [{ provider: 'plain', model: 'slow;headers_delay_ms=1500' }] },
      'restore-cached': {
        targets: [{ provider: 'plain', model: 'echo;echo=1,chunks=9' }],
        pii: { mode: 'restore' },
        cache: { ttl_s: 300, scope: 'global' },
      },
      internal: { targets: [{ provider: 'internal', model: 'i' }] },
      claude: { targets: [{ provider: 'anth', model: 'claude' }] },
      gpt: { targets: [{ provider: 'oai', model: 'gpt' }] },
    },
    data_classes: {
      phi: { require: ['hipaa'] },
      public: {},
    },
    limits: { max_messages: 50, max_tools: 8, max_content_parts: 100 },
    cors: { origins: ['https://app.example'] },
    logging: { requests: 'each' },
  };
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

/** The mock's recordings made while `fn` runs. */
async function recorded(fn) {
  mock.clear();
  const result = await fn();
  return { result, requests: [...mock.requests] };
}

function post(path, body, headers = {}) {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

function admin(path, { method = 'GET', body } = {}) {
  return fetch(`${gw.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

/** The usage log line of a request, once the worker has written it. */
async function logLine(requestId) {
  for (let i = 0; i < 50; i++) {
    const line = gw.log().split('\n').find((l) => l.includes(`"request_id":"${requestId}"`));
    if (line) return JSON.parse(line.slice(line.indexOf('{')));
    await sleep(100);
  }
  throw new Error(`no log line for ${requestId}`);
}

// ---- Data classes ------------------------------------------------------------

test('a phi request reaches only the hipaa target', async () => {
  for (const headers of [{ 'x-gateway-data-class': 'phi' }, {}]) {
    const body = headers['x-gateway-data-class'] ? ask('mixed') : ask('mixed', 'hi', { metadata: { data_class: 'phi' } });
    const { result, requests } = await recorded(async () => {
      const res = await chat(gw, body, { headers });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(res.headers.get('x-gateway-provider'), 'hipaa');
      return res.json();
    });
    assert.ok(result.choices[0].message.content);
    assert.deepEqual(requests.map((r) => r.body.model), ['hipaa-m']);
  }
  // Unclassed, the first target serves as always.
  const res = await chat(gw, ask('mixed'));
  assert.equal(res.headers.get('x-gateway-provider'), 'plain');
});

test('failover of a phi request stays among hipaa targets', async () => {
  const { requests } = await recorded(async () => {
    const res = await chat(gw, ask('mixed-failover'), { headers: { 'x-gateway-data-class': 'phi' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-gateway-provider'), 'hipaa');
    assert.equal(res.headers.get('x-gateway-attempts'), '2');
    await res.text();
  });
  assert.deepEqual(requests.map((r) => r.body.model), ['down-m', 'hipaa-m']);
});

test('a class no target may take is refused with 403 and nothing is sent', async () => {
  const { result, requests } = await recorded(async () => {
    const res = await chat(gw, ask('plain-only'), { headers: { 'x-gateway-data-class': 'phi' } });
    return { status: res.status, body: await res.json(), id: res.headers.get('x-request-id') };
  });
  assert.equal(result.status, 403);
  assert.equal(result.body.error.code, 'data_class_denied');
  assert.match(result.body.error.message, /`phi`.*hipaa/);
  assert.equal(requests.length, 0);
  const line = await logLine(result.id);
  assert.equal(line.data_class, 'phi');
  assert.equal(line.status, 403);
  // An unknown class is the caller's mistake, named.
  const res = await chat(gw, ask('mixed'), { headers: { 'x-gateway-data-class': 'phl' } });
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error.param, 'x-gateway-data-class');
});

test("a key's default class applies and the caller cannot lower it", async () => {
  const made = await admin('/admin/keys', { method: 'POST', body: { name: 'clinic', data_class: 'phi' } });
  assert.equal(made.status, 201, await made.clone().text());
  const { secret } = await made.json();
  const { requests } = await recorded(async () => {
    for (const headers of [{}, { 'x-gateway-data-class': 'public' }]) {
      const res = await chat(gw, ask('mixed'), { key: secret, headers });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(res.headers.get('x-gateway-provider'), 'hipaa');
      await res.text();
    }
  });
  assert.deepEqual(requests.map((r) => r.body.model), ['hipaa-m', 'hipaa-m']);
  const res = await chat(gw, ask('plain-only'), { key: secret });
  assert.equal(res.status, 403);
});

// ---- PII ---------------------------------------------------------------------

test('personal data reaches the provider as placeholders only (redact mode)', async () => {
  const { result, requests } = await recorded(async () => {
    const res = await chat(gw, ask('redact', SECRET_TEXT));
    assert.equal(res.status, 200);
    return { body: await res.json(), id: res.headers.get('x-request-id') };
  });
  assert.equal(requests.length, 1);
  const raw = requests[0].rawBody;
  assert.ok(raw.includes(REDACTED_TEXT), raw);
  for (const secret of ['jane.doe@example.com', '4111', '415 555']) assert.ok(!raw.includes(secret), secret);
  // Redact mode does not restore.
  assert.equal(result.body.choices[0].message.content, REDACTED_TEXT);
  const line = await logLine(result.id);
  assert.deepEqual(line.pii, { card_number: 1, email: 1, phone: 1 });
  assert.ok(!JSON.stringify(line).includes('jane.doe'));
});

test('restore mode gives the client the originals, whole and streamed at every split', async () => {
  for (const n of CHUNKS) {
    const { result, requests } = await recorded(async () => {
      const whole = await chat(gw, ask(`restore-${n}`, SECRET_TEXT));
      assert.equal(whole.status, 200);
      const streamed = await chat(gw, ask(`restore-${n}`, SECRET_TEXT, { stream: true }));
      assert.equal(streamed.status, 200);
      return { whole: await whole.json(), events: await readSSE(streamed) };
    });
    for (const r of requests) {
      assert.ok(r.rawBody.includes(REDACTED_TEXT) && !r.rawBody.includes('jane.doe'), r.rawBody);
    }
    assert.equal(result.whole.choices[0].message.content, SECRET_TEXT, `chunks=${n}`);
    assert.equal(streamText(result.events), SECRET_TEXT, `chunks=${n}`);
    assert.equal(result.events.at(-1).data, '[DONE]');
    if (n === REDACTED_TEXT.length) {
      // Every byte of the redacted answer came in its own delta.
      assert.ok(result.events.length >= REDACTED_TEXT.length / 2, `${result.events.length} events`);
    }
  }
});

test('restore mode works for Anthropic Messages and OpenAI Responses pass-through', async () => {
  const messages = { model: 'restore-messages', max_tokens: 64, messages: [{ role: 'user', content: SECRET_TEXT }] };
  const { result, requests } = await recorded(async () => {
    const whole = await (await post('/v1/messages', messages)).json();
    const events = await readSSE(await post('/v1/messages', { ...messages, stream: true }));
    return { whole, events };
  });
  assert.ok(requests.every((r) => r.rawBody.includes(REDACTED_TEXT) && !r.rawBody.includes('jane.doe')));
  assert.equal(result.whole.content[0].text, SECRET_TEXT);
  const text = result.events.map((e) => (e.json?.type === 'content_block_delta' ? e.json.delta.text : '')).join('');
  assert.equal(text, SECRET_TEXT);

  const responses = { model: 'restore-responses', input: SECRET_TEXT };
  const whole = await (await post('/v1/responses', responses)).json();
  assert.equal(whole.output[0].content[0].text, SECRET_TEXT);
  const events = await readSSE(await post('/v1/responses', { ...responses, stream: true }));
  const deltas = events.filter((e) => e.json?.type === 'response.output_text.delta').map((e) => e.json.delta).join('');
  assert.equal(deltas, SECRET_TEXT);
  const seqs = events.map((e) => e.json?.sequence_number).filter((s) => s !== undefined);
  assert.deepEqual(seqs, seqs.map((_, i) => seqs[0] + i), 'sequence numbers stay consecutive');
});

test('the response cache holds placeholders: each hit is restored with its own originals', async () => {
  const mine = 'Mail ann@example.com about it.';
  const theirs = 'Mail bob@example.org about it.';
  const { result, requests } = await recorded(async () => {
    const first = await chat(gw, ask('restore-cached', mine, { temperature: 0 }));
    const second = await chat(gw, ask('restore-cached', theirs, { temperature: 0 }));
    const streamed = await chat(gw, ask('restore-cached', theirs, { temperature: 0, stream: true }));
    return {
      states: [first, second, streamed].map((r) => r.headers.get('x-gateway-cache')),
      first: (await first.json()).choices[0].message.content,
      second: (await second.json()).choices[0].message.content,
      streamed: streamText(await readSSE(streamed)),
    };
  });
  // Both redact to the same request: one upstream call, two hits.
  assert.deepEqual(result.states, ['miss', 'hit', 'hit']);
  assert.equal(requests.length, 1);
  assert.ok(requests[0].rawBody.includes('Mail [EMAIL_1] about it.'));
  assert.equal(result.first, mine);
  assert.equal(result.second, theirs, 'a hit carries its own request\'s originals, never another\'s');
  assert.equal(result.streamed, theirs);
});

test('block mode answers 400 naming the kinds, and nothing is sent', async () => {
  const { result, requests } = await recorded(async () => {
    const res = await chat(gw, ask('block', SECRET_TEXT));
    return { status: res.status, body: await res.json() };
  });
  assert.equal(result.status, 400);
  assert.equal(result.body.error.code, 'pii_detected');
  assert.equal(result.body.error.param, 'messages');
  for (const kind of ['email', 'card_number', 'phone']) assert.match(result.body.error.message, new RegExp(kind));
  assert.ok(!result.body.error.message.includes('jane.doe'));
  assert.equal(requests.length, 0);
  const clean = await chat(gw, ask('block', 'nothing personal here'));
  assert.equal(clean.status, 200);
});

// ---- Hardening ---------------------------------------------------------------

test('a panic answers an OpenAI-shaped JSON 500 and the next request succeeds', async () => {
  const res = await fetch(`${gw.url}/__test/panic`);
  assert.equal(res.status, 500);
  assert.match(res.headers.get('content-type'), /application\/json/);
  const body = await res.json();
  assert.equal(body.error.type, 'server_error');
  assert.equal(body.error.code, 'internal_error');
  const next = await chat(gw, ask('echo', 'still alive?'));
  assert.equal(next.status, 200);
  assert.equal((await next.json()).choices[0].message.content, 'still alive?');
});

test('a panic while another request waits on its provider answers that one with a JSON 500 as well', async () => {
  // Waiting on its provider call, made by the entry module (src/edge/driven.rs).
  const waiting = chat(gw, ask('slow', 'hi'));
  await sleep(400);
  const res = await fetch(`${gw.url}/__test/panic`);
  assert.equal(res.status, 500);
  await res.text();
  // Its answer comes back to a rebuilt instance that no longer knows it.
  const lost = await waiting;
  assert.equal(lost.status, 500);
  assert.match(lost.headers.get('content-type'), /application\/json/);
  const body = await lost.json();
  assert.equal(body.error.code, 'internal_error');
  assert.match(body.error.message, /retrying it is safe/);
  const next = await chat(gw, ask('echo', 'still alive?'));
  assert.equal(next.status, 200);
});

test("a client's Cookie and Authorization never reach the provider", async () => {
  const { requests } = await recorded(async () => {
    for (const stream of [false, true]) {
      const res = await chat(gw, ask('echo', 'hi', { stream }), {
        headers: {
          cookie: 'session=client-secret',
          'x-forwarded-for': '203.0.113.9',
          'x-api-key': 'client-other-key',
          'x-custom-client': 'y',
          'anthropic-beta': 'not-for-openai',
        },
      });
      assert.equal(res.status, 200);
      await res.text();
    }
    const res = await post('/v1/messages', { model: 'claude', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] },
      { cookie: 'session=client-secret', 'anthropic-version': '2023-06-01' });
    assert.equal(res.status, 200);
    await res.text();
  });
  assert.equal(requests.length, 3);
  // What the runtime adds (host, length, cf-worker) and what the wire
  // formats need: nothing else.
  const allowed = new Set(['host', 'content-length', 'cf-worker', 'content-type', 'accept', 'authorization',
    'x-api-key', 'anthropic-version', 'anthropic-beta', 'accept-encoding']);
  for (const r of requests) {
    const names = Object.keys(r.headers);
    assert.deepEqual(names.filter((n) => !allowed.has(n)), [], names.join());
    assert.ok(!names.includes('cookie'), names.join());
    assert.ok(!names.includes('x-forwarded-for'), names.join());
    assert.ok(!names.includes('x-custom-client'), names.join());
    assert.ok(!JSON.stringify(r.headers).includes(KEY), 'the gateway key stays at the gateway');
    assert.ok(!JSON.stringify(r.headers).includes('client-secret'));
  }
  assert.equal(requests[0].headers.authorization, `Bearer ${MOCK_PROVIDER_KEY}`);
  assert.equal(requests[2].headers['x-api-key'], MOCK_PROVIDER_KEY);
  assert.equal(requests[2].headers['anthropic-version'], '2023-06-01');
});

test('provider response headers that name accounts do not reach the client', async () => {
  for (const stream of [false, true]) {
    const res = await chat(gw, ask('internal', 'hi', { stream }));
    assert.equal(res.status, 200);
    await res.text();
    for (const name of ['openai-organization', 'openai-project', 'openai-processing-ms', 'anthropic-organization-id', 'set-cookie', 'x-mock-seq']) {
      assert.equal(res.headers.get(name), null, name);
    }
    assert.notEqual(res.headers.get('x-request-id'), 'mock-upstream-request-id');
  }
});

test('CORS is answered only for configured origins', async () => {
  const preflight = (origin, path = '/v1/chat/completions') => fetch(`${gw.url}${path}`, {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type, x-stainless-os' },
  });
  const ok = await preflight('https://app.example');
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('access-control-allow-origin'), 'https://app.example');
  assert.match(ok.headers.get('access-control-allow-headers'), /x-stainless-os/);
  assert.match(ok.headers.get('access-control-allow-methods'), /POST/);
  const other = await preflight('https://evil.example');
  assert.equal(other.status, 405);
  assert.equal(other.headers.get('access-control-allow-origin'), null);
  const res = await chat(gw, ask('echo'), { headers: { origin: 'https://app.example' } });
  assert.equal(res.headers.get('access-control-allow-origin'), 'https://app.example');
  assert.match(res.headers.get('access-control-expose-headers'), /x-request-id/);
  const denied = await chat(gw, ask('echo'), { headers: { origin: 'https://evil.example' } });
  assert.equal(denied.headers.get('access-control-allow-origin'), null);
  // An error reply carries them too, so a browser can read it.
  const unauth = await chat(gw, ask('echo'), { key: 'wrong', headers: { origin: 'https://app.example' } });
  assert.equal(unauth.status, 401);
  assert.equal(unauth.headers.get('access-control-allow-origin'), 'https://app.example');
});

test('client request ids are kept only in a safe format', async () => {
  const ok = await chat(gw, ask('echo'), { headers: { 'x-request-id': 'client-123.abc:9' } });
  assert.equal(ok.headers.get('x-request-id'), 'client-123.abc:9');
  const long = await chat(gw, ask('echo'), { headers: { 'x-request-id': 'x'.repeat(200) } });
  assert.match(long.headers.get('x-request-id'), /^req_[0-9a-f]{24}$/);
  const odd = await chat(gw, ask('echo'), { headers: { 'x-request-id': 'a b<script>' } });
  assert.match(odd.headers.get('x-request-id'), /^req_[0-9a-f]{24}$/);
});

test('parameters are checked before any provider is called, pass-through included', async () => {
  const cases = [
    ['/v1/chat/completions', { ...ask('echo'), temperature: 'hot' }, 'temperature', /expected a decimal, but got a string/],
    ['/v1/chat/completions', { ...ask('echo'), temperature: 2.5 }, 'temperature', /<= 2/],
    ['/v1/chat/completions', { ...ask('echo'), top_p: 1.5 }, 'top_p', /<= 1/],
    ['/v1/chat/completions', { ...ask('echo'), n: 0 }, 'n', />= 1/],
    ['/v1/chat/completions', { ...ask('echo'), presence_penalty: -3 }, 'presence_penalty', />= -2/],
    ['/v1/chat/completions', { ...ask('echo'), stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', /maximum length 4/],
    ['/v1/responses', { model: 'gpt', input: 'hi', temperature: 'hot' }, 'temperature', /expected a decimal/],
    ['/v1/responses', { model: 'gpt', input: 'hi', max_output_tokens: 4 }, 'max_output_tokens', />= 16/],
  ];
  const { requests } = await recorded(async () => {
    for (const [path, body, param, message] of cases) {
      const res = await post(path, body);
      assert.equal(res.status, 400, `${param}: ${await res.clone().text()}`);
      const err = (await res.json()).error;
      assert.equal(err.param, param);
      assert.match(err.message, message);
    }
    const res = await post('/v1/messages', { model: 'claude', max_tokens: 8, temperature: 1.5, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(res.status, 400);
    const body = await res.json();
    assert.equal(body.type, 'error');
    assert.equal(body.error.type, 'invalid_request_error');
    assert.equal(body.error.message, 'temperature: Input should be less than or equal to 1');
  });
  assert.equal(requests.length, 0);
});

test('messages, tools and content parts beyond the limits are a 400', async () => {
  const many = Array.from({ length: 51 }, () => ({ role: 'user', content: 'x' }));
  const tools = Array.from({ length: 9 }, (_, i) => ({ type: 'function', function: { name: `f${i}`, parameters: { type: 'object' } } }));
  const parts = Array.from({ length: 101 }, () => ({ type: 'text', text: 'x' }));
  const { requests } = await recorded(async () => {
    for (const [body, param] of [
      [{ model: 'echo', messages: many }, 'messages'],
      [{ ...ask('echo'), tools }, 'tools'],
      [{ model: 'echo', messages: [{ role: 'user', content: parts }] }, 'messages'],
    ]) {
      const res = await chat(gw, body);
      assert.equal(res.status, 400);
      const err = (await res.json()).error;
      assert.equal(err.param, param);
      assert.match(err.message, /at most/);
    }
  });
  assert.equal(requests.length, 0);
});

test('a body nested 200,000 arrays deep is a 400 before any provider is called', async () => {
  const deep = '['.repeat(200_000) + ']'.repeat(200_000);
  const { requests } = await recorded(async () => {
    for (const body of [
      `{"model":"echo","messages":${deep}}`,
      `{"model":"echo","messages":[{"role":"user","content":"hi"}],"extra":${deep}}`,
    ]) {
      const res = await chat(gw, body);
      assert.equal(res.status, 400);
      assert.match((await res.json()).error.message, /deeper than 64 levels/);
    }
    const res = await post('/v1/messages', `{"model":"claude","max_tokens":5,"messages":[],"x":${deep}}`);
    assert.equal(res.status, 400);
  });
  assert.equal(requests.length, 0);
});
