// Every wire format end to end: the built worker on workerd in front of the
// mock provider speaking OpenAI, Anthropic Messages and Gemini, streamed and
// not; tool calls, finish reasons, the upstream request as the provider sees
// it, in-stream errors, overload and rate limits, and embeddings.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from '../mock/server.mjs';
import {
  startGateway, chat, ask, readSSE, streamText, mockConfig, putConfig, sleep,
  KEY, ADMIN_TOKEN, MOCK_PROVIDER_KEY,
} from './harness.mjs';

let mock;
let gw;

/** Per wire format: its provider in the config and its provider-side model. */
const FORMATS = {
  openai: { provider: 'mock', model: 'gpt-mock' },
  anthropic: { provider: 'anthropic', model: 'claude-mock' },
  gemini: { provider: 'gemini', model: 'gemini-mock' },
};
const TEXT = 'Hello from every wire format';

/** `<format>-<scenario>` public names, each one target with mock directives. */
function models() {
  const out = {};
  for (const [f, { provider, model }] of Object.entries(FORMATS)) {
    const one = (directives) => ({ targets: [{ provider, model: `${model};${directives}` }] });
    out[`${f}-text`] = one(`text=${TEXT},chunks=4`);
    out[`${f}-tools`] = one('tools=2,chunks=3');
    out[`${f}-length`] = one('finish=length,chunks=2');
    out[`${f}-filtered`] = one('finish=content_filter,chunks=2');
    out[`${f}-echo`] = one('echo=1');
    out[`${f}-broken`] = one('error_after=1,chunks=4');
    out[`${f}-limited`] = one('status=429,retry_after=7');
  }
  out['anthropic-overloaded'] = { targets: [{ provider: 'anthropic', model: 'claude-mock;status=529' }] };
  out['overloaded-then-gemini'] = {
    targets: [
      { provider: 'anthropic', model: 'claude-mock;status=529' },
      { provider: 'gemini', model: 'gemini-mock;text=rescued' },
    ],
  };
  out['emb-openai'] = { targets: [{ provider: 'mock', model: 'text-embedding-mock' }] };
  out['emb-gemini'] = { targets: [{ provider: 'gemini', model: 'gemini-embedding-001' }] };
  out['emb-claude'] = { targets: [{ provider: 'anthropic', model: 'claude-mock' }] };
  out['emb-demo'] = { targets: [{ provider: 'demo', model: 'demo-1' }] };
  return out;
}

before(async () => {
  mock = await startMock();
  gw = await startGateway();
  const config = mockConfig(mock.url, models(), {
    providers: {
      anthropic: { kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY' },
      gemini: { kind: 'gemini', base_url: `${mock.url}/v1beta`, api_key_secret: 'MOCK_PROVIDER_KEY' },
    },
  });
  // $0.001 an input token, so a key's spend on embeddings is exact.
  config.providers.mock.models = { 'text-embedding-mock': { input_per_mtok: 1000 } };
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

const TOOLS = ['get_weather', 'get_time'].map((name) => ({
  type: 'function',
  function: { name, parameters: { type: 'object', properties: { city: { type: 'string' } } } },
}));

async function json(res, status = 200) {
  const text = await res.text();
  assert.equal(res.status, status, text);
  return JSON.parse(text);
}

async function stream(body) {
  const res = await chat(gw, { ...body, stream: true });
  assert.equal(res.status, 200, res.status === 200 ? '' : await res.text());
  assert.match(res.headers.get('content-type'), /text\/event-stream/);
  return readSSE(res);
}

function embed(body, key = KEY) {
  return fetch(`${gw.url}/v1/embeddings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });
}

/** The finish reason of a stream: the one chunk that carries it. */
function streamFinish(events) {
  const finishes = events.map((e) => e.json?.choices?.[0]?.finish_reason).filter(Boolean);
  assert.equal(finishes.length, 1, JSON.stringify(events.map((e) => e.data)));
  return finishes[0];
}

/** A complete stream: role first, one id throughout, `[DONE]` last. */
function assertWellFormed(events) {
  assert.equal(events.at(-1).data, '[DONE]');
  assert.equal(events.filter((e) => e.data === '[DONE]').length, 1);
  assert.ok(!events.some((e) => e.partial || e.json?.error), JSON.stringify(events.map((e) => e.data)));
  const chunks = events.slice(0, -1).map((e) => e.json);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(c.id, chunks[0].id);
  }
  assert.ok(!chunks.slice(1).some((c) => c.choices[0]?.delta?.role), 'role only on the first chunk');
}

for (const format of Object.keys(FORMATS)) {
  test(`${format}: text, non-stream and stream, usage only when asked`, async () => {
    const res = await chat(gw, ask(`${format}-text`, 'hi'));
    const body = await json(res);
    assert.equal(res.headers.get('x-gateway-provider'), FORMATS[format].provider);
    assert.equal(body.object, 'chat.completion');
    assert.equal(body.choices[0].message.role, 'assistant');
    assert.equal(body.choices[0].message.content, TEXT);
    assert.equal(body.choices[0].finish_reason, 'stop');
    assert.ok(body.usage.prompt_tokens > 0 && body.usage.completion_tokens > 0, JSON.stringify(body.usage));
    assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);

    const events = await stream(ask(`${format}-text`, 'hi'));
    assertWellFormed(events);
    assert.equal(streamText(events), TEXT);
    assert.equal(streamFinish(events), 'stop');
    assert.ok(!events.some((e) => e.json?.usage), 'no usage unless asked');

    const counted = await stream(ask(`${format}-text`, 'hi', { stream_options: { include_usage: true } }));
    assertWellFormed(counted);
    assert.equal(streamText(counted), TEXT);
    const last = counted.at(-2).json;
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
    assert.equal(last.usage.completion_tokens, body.usage.completion_tokens);
    assert.equal(counted.filter((e) => e.json?.usage).length, 1, 'usage once, at the end');
  });

  test(`${format}: two parallel tool calls, non-stream and stream`, async () => {
    const request = ask(`${format}-tools`, 'weather and time in Paris?', { tools: TOOLS });
    const body = await json(await chat(gw, request));
    const message = body.choices[0].message;
    assert.equal(body.choices[0].finish_reason, 'tool_calls');
    assert.equal(message.tool_calls.length, 2);
    assert.equal(new Set(message.tool_calls.map((c) => c.id)).size, 2, 'distinct ids');
    message.tool_calls.forEach((call, i) => {
      assert.equal(call.type, 'function');
      assert.equal(call.function.name, TOOLS[i].function.name);
      assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris', call: i });
    });

    const events = await stream(request);
    assertWellFormed(events);
    assert.equal(streamFinish(events), 'tool_calls');
    const calls = new Map();
    for (const e of events.slice(0, -1)) {
      for (const d of e.json.choices[0]?.delta?.tool_calls ?? []) {
        if (!calls.has(d.index)) {
          assert.ok(d.id && d.function.name, `the first delta of call ${d.index} names it: ${e.data}`);
          assert.equal(d.type, 'function');
          calls.set(d.index, { id: d.id, name: d.function.name, args: d.function.arguments ?? '' });
        } else {
          assert.ok(d.id === undefined && d.function.name === undefined, `later deltas carry arguments only: ${e.data}`);
          calls.get(d.index).args += d.function.arguments ?? '';
        }
      }
    }
    assert.deepEqual([...calls.keys()], [0, 1]);
    for (const [i, call] of calls) {
      assert.equal(call.name, TOOLS[i].function.name);
      assert.deepEqual(JSON.parse(call.args), { city: 'Paris', call: i });
    }
  });

  test(`${format}: finish reasons length and content_filter`, async () => {
    for (const [scenario, reason] of [['length', 'length'], ['filtered', 'content_filter']]) {
      const body = await json(await chat(gw, ask(`${format}-${scenario}`)));
      assert.equal(body.choices[0].finish_reason, reason, `${scenario} non-stream`);
      const events = await stream(ask(`${format}-${scenario}`));
      assertWellFormed(events);
      assert.equal(streamFinish(events), reason, `${scenario} stream`);
    }
  });

  test(`${format}: an in-stream error ends the stream with an error event, no [DONE]`, async () => {
    const events = await stream(ask(`${format}-broken`));
    assert.ok(events.length >= 2);
    assert.equal(events[0].json.choices[0].delta.role, 'assistant');
    assert.ok(streamText(events).length > 0, 'the content before the error arrived');
    const last = events.at(-1).json;
    assert.ok(last?.error, JSON.stringify(events.map((e) => e.data)));
    assert.equal(typeof last.error.message, 'string');
    assert.ok('type' in last.error && 'code' in last.error);
    assert.ok(!events.some((e) => e.data === '[DONE]'), 'a broken stream never looks complete');
  });

  test(`${format}: a provider 429 is a 429 with its Retry-After`, async () => {
    const res = await chat(gw, ask(`${format}-limited`));
    const body = await json(res, 429);
    assert.equal(res.headers.get('retry-after'), '7');
    assert.equal(body.error.type, 'rate_limit_error');
    assert.ok(!JSON.stringify(body).includes(MOCK_PROVIDER_KEY));
  });
}

test('openai: the upstream gets the body with only model rewritten, and its key', async () => {
  mock.clear();
  const request = ask('openai-echo', 'forward me', { max_tokens: 50, temperature: 0.5, x_custom: [1] });
  assert.equal((await json(await chat(gw, request))).choices[0].message.content, 'forward me');
  await stream(request);
  const [plain, streamed] = mock.requests;
  assert.equal(plain.path, '/v1/chat/completions');
  assert.equal(plain.headers.authorization, `Bearer ${MOCK_PROVIDER_KEY}`);
  assert.deepEqual(plain.body, { ...request, model: 'gpt-mock;echo=1' });
  assert.deepEqual(streamed.body, { ...request, model: 'gpt-mock;echo=1', stream: true, stream_options: { include_usage: true } });
});

test('anthropic: the upstream gets a Messages request with its key and version', async () => {
  mock.clear();
  const request = {
    model: 'anthropic-echo',
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'forward me' }],
    max_tokens: 50,
    temperature: 0.5,
    stop: 'END',
    tools: [TOOLS[0]],
    tool_choice: 'required',
  };
  assert.equal((await json(await chat(gw, request))).choices[0].message.content, 'forward me');
  await stream(request);
  const [plain, streamed] = mock.requests;
  assert.equal(plain.path, '/v1/messages');
  assert.equal(plain.headers['x-api-key'], MOCK_PROVIDER_KEY);
  assert.equal(plain.headers['anthropic-version'], '2023-06-01');
  assert.equal(plain.headers.authorization, undefined);
  assert.deepEqual(plain.body, {
    model: 'claude-mock;echo=1',
    max_tokens: 50,
    system: 'Be brief.',
    messages: [{ role: 'user', content: 'forward me' }],
    temperature: 0.5,
    stop_sequences: ['END'],
    tools: [{ name: 'get_weather', input_schema: TOOLS[0].function.parameters }],
    tool_choice: { type: 'any' },
  });
  assert.equal(streamed.body.stream, true);
  assert.equal(streamed.body.stream_options, undefined);
});

test('gemini: the upstream gets a generateContent request with its key in a header', async () => {
  mock.clear();
  const request = {
    model: 'gemini-echo',
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'forward me' }],
    max_tokens: 50,
    temperature: 0.5,
    stop: 'END',
    tools: [TOOLS[0]],
    tool_choice: 'required',
  };
  assert.equal((await json(await chat(gw, request))).choices[0].message.content, 'forward me');
  await stream(request);
  const [plain, streamed] = mock.requests;
  assert.equal(plain.path, '/v1beta/models/gemini-mock;echo=1:generateContent');
  assert.equal(plain.headers['x-goog-api-key'], MOCK_PROVIDER_KEY);
  assert.deepEqual(plain.query, {}, 'the key is never in the URL');
  assert.deepEqual(plain.body, {
    systemInstruction: { parts: [{ text: 'Be brief.' }] },
    contents: [{ role: 'user', parts: [{ text: 'forward me' }] }],
    tools: [{ functionDeclarations: [{ name: 'get_weather', parametersJsonSchema: TOOLS[0].function.parameters }] }],
    toolConfig: { functionCallingConfig: { mode: 'ANY' } },
    generationConfig: { temperature: 0.5, maxOutputTokens: 50, stopSequences: ['END'] },
  });
  assert.equal(streamed.path, '/v1beta/models/gemini-mock;echo=1:streamGenerateContent');
  assert.deepEqual(streamed.query, { alt: 'sse' });
});

test('anthropic: 529 overloaded is a 502 alone, and fails over to the next target', async () => {
  const res = await chat(gw, ask('anthropic-overloaded'));
  const body = await json(res, 502);
  assert.equal(body.error.type, 'server_error');
  assert.match(body.error.message, /overloaded/i);

  const rescued = await chat(gw, ask('overloaded-then-gemini'));
  assert.equal((await json(rescued)).choices[0].message.content, 'rescued');
  assert.equal(rescued.headers.get('x-gateway-provider'), 'gemini');
  assert.equal(rescued.headers.get('x-gateway-attempts'), '2');
  const events = await stream(ask('overloaded-then-gemini'));
  assertWellFormed(events);
  assert.equal(streamText(events), 'rescued');
});

/** base64 of little-endian float32s -> numbers. */
function decodeBase64(b64) {
  const buf = Buffer.from(b64, 'base64');
  assert.equal(buf.length % 4, 0);
  return Array.from(new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4));
}

test('embeddings through an OpenAI-compatible target: floats and base64, passed through', async () => {
  mock.clear();
  const request = { model: 'emb-openai', input: ['first', 'second'], user: 'u-1', dimensions: 8 };
  const res = await embed(request);
  const floats = await json(res);
  assert.equal(res.headers.get('x-gateway-provider'), 'mock');
  assert.equal(floats.object, 'list');
  assert.deepEqual(floats.data.map((d) => [d.object, d.index, d.embedding.length]), [['embedding', 0, 8], ['embedding', 1, 8]]);
  assert.ok(floats.usage.prompt_tokens > 0);
  assert.equal(mock.requests[0].path, '/v1/embeddings');
  assert.equal(mock.requests[0].headers.authorization, `Bearer ${MOCK_PROVIDER_KEY}`);
  assert.deepEqual(mock.requests[0].body, { ...request, model: 'text-embedding-mock' });

  const b64 = await json(await embed({ ...request, encoding_format: 'base64' }));
  assert.equal(mock.requests[1].body.encoding_format, 'base64');
  b64.data.forEach((d, i) => {
    assert.equal(typeof d.embedding, 'string');
    assert.deepEqual(decodeBase64(d.embedding), floats.data[i].embedding.map(Math.fround));
  });
});

test('embeddings through Gemini: embedContent and batchEmbedContents, floats and base64', async () => {
  mock.clear();
  const single = await json(await embed({ model: 'emb-gemini', input: 'hello world', dimensions: 8 }));
  assert.equal(single.object, 'list');
  assert.equal(single.model, 'gemini-embedding-001');
  assert.equal(single.data.length, 1);
  assert.equal(single.data[0].embedding.length, 8);
  // Gemini counts no tokens: the gateway estimates four bytes a token.
  assert.deepEqual(single.usage, { prompt_tokens: 3, total_tokens: 3 });
  const seen = mock.requests[0];
  assert.equal(seen.path, '/v1beta/models/gemini-embedding-001:embedContent');
  assert.equal(seen.headers['x-goog-api-key'], MOCK_PROVIDER_KEY);
  assert.deepEqual(seen.body, { content: { parts: [{ text: 'hello world' }] }, outputDimensionality: 8 });

  const input = ['hello world', 'another text'];
  const batch = await json(await embed({ model: 'emb-gemini', input }));
  assert.deepEqual(batch.data.map((d) => d.index), [0, 1]);
  assert.deepEqual(batch.data[0].embedding, single.data[0].embedding, 'same text, same vector');
  assert.equal(mock.requests[1].path, '/v1beta/models/gemini-embedding-001:batchEmbedContents');
  assert.deepEqual(mock.requests[1].body, {
    requests: input.map((text) => ({ model: 'models/gemini-embedding-001', content: { parts: [{ text }] } })),
  });

  const b64 = await json(await embed({ model: 'emb-gemini', input, encoding_format: 'base64' }));
  b64.data.forEach((d, i) => assert.deepEqual(decodeBase64(d.embedding), batch.data[i].embedding.map(Math.fround)));
});

test('embeddings: a model served only by Anthropic is a 400 naming model; the demo model embeds', async () => {
  mock.clear();
  const body = await json(await embed({ model: 'emb-claude', input: 'x' }), 400);
  assert.equal(body.error.type, 'invalid_request_error');
  assert.equal(body.error.param, 'model');
  assert.match(body.error.message, /emb-claude.*does not support embeddings/);
  assert.equal(mock.requests.length, 0, 'nothing was sent');

  const demo = await json(await embed({ model: 'emb-demo', input: ['a', 'b'], encoding_format: 'base64' }));
  assert.equal(demo.data.length, 2);
  assert.equal(decodeBase64(demo.data[0].embedding).length, 8);

  const bad = await json(await embed({ model: 'emb-openai', input: [] }), 400);
  assert.equal(bad.error.param, 'input');
  const tokens = await json(await embed({ model: 'emb-gemini', input: [1, 2, 3] }), 400);
  assert.equal(tokens.error.param, 'input');
  const wrongMethod = await fetch(`${gw.url}/v1/embeddings`, { headers: { authorization: `Bearer ${KEY}` } });
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get('allow'), 'POST');
});

test('embeddings are admitted and settled like chat: key check, scope, spend', async () => {
  const created = await fetch(`${gw.url}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'embedder', allowed_models: ['emb-openai'] }),
  });
  const { key, secret } = await json(created, 201);
  // A virtual key is verified at admission: embeddings must not skip it.
  assert.equal((await embed({ model: 'emb-openai', input: 'x' }, `sk-gw-${key.id}_${'c'.repeat(48)}`)).status, 401);
  mock.clear();
  const outOfScope = await json(await embed({ model: 'emb-gemini', input: 'x' }, secret), 404);
  assert.equal(outOfScope.error.code, 'model_not_found');
  assert.equal(mock.requests.length, 0);

  const ok = await json(await embed({ model: 'emb-openai', input: ['first', 'second'] }, secret));
  assert.equal(ok.usage.prompt_tokens, 3);
  let usage;
  for (let i = 0; i < 100; i++) {
    usage = await json(await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${secret}` } }));
    if (usage.in_flight === 0) break;
    await sleep(50);
  }
  assert.equal(usage.requests, 1);
  assert.equal(usage.spent_total_usd, 0.003, '3 input tokens at $0.001');
  const day = usage.by_day.find((d) => d.model === 'emb-openai');
  assert.deepEqual([day.requests, day.input_tokens, day.output_tokens, day.errors], [1, 3, 0, 0]);
});
