// The other client protocols end to end: Anthropic Messages (`/v1/messages`,
// `/v1/messages/count_tokens`) and OpenAI Responses (`/v1/responses`), each
// over every wire format the mock speaks (OpenAI-compatible, Anthropic,
// Gemini, and OpenAI's own Responses API), through the built worker on
// workerd: create, stream, tool loops, images, errors in the client's shape,
// invisible failover, residency, budgets with cache tokens, and a Claude Code
// request passed through byte for byte.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { startMock } from '../mock/server.mjs';
import { startGateway, mockConfig, putConfig, sleep, ROOT, KEY, ADMIN_TOKEN, MOCK_PROVIDER_KEY } from './harness.mjs';

const it = test;

const TEXT = 'Hello from every ingress';
/** Per wire format: its provider in the config and its provider-side model. */
const FORMATS = {
  openai: { provider: 'mock', model: 'gpt-mock' },
  anthropic: { provider: 'anthropic', model: 'claude-mock' },
  gemini: { provider: 'gemini', model: 'gemini-mock' },
};
/** Responses targets: OpenAI's own API (passed through) and the others (translated). */
const RESPONSES_TARGETS = { native: { provider: 'openai', model: 'gpt-native' }, ...FORMATS };
const EU = JSON.stringify({ country: 'DE', continent: 'EU', eu: true, lat: 50.1, lon: 8.7, colo: 'FRA' });
const US = JSON.stringify({ country: 'US', continent: 'NA', eu: false, lat: 40.7, lon: -74.0, colo: 'EWR' });
/** Claude Sonnet's prices; cache writes left to the Anthropic default (1.25 × input). */
const SONNET = { input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3 };
const PRICED_MODEL = 'claude-priced;cache_write=1000,cached=2000';
const CC_MODEL = 'claude-cc;cache_write=1500,cached=9000';
/** A 1×1 PNG. */
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';

let mock;
let gw;

before(async () => {
  mock = await startMock();
  gw = await startGateway();
  const models = {};
  const one = (provider, model) => ({ targets: [{ provider, model }] });
  for (const [f, { provider, model }] of Object.entries(RESPONSES_TARGETS)) {
    models[`${f}-text`] = one(provider, `${model};text=${TEXT},chunks=4`);
    models[`${f}-tools`] = one(provider, `${model};tools=1,tools_once=1,chunks=3`);
    models[`${f}-echo`] = one(provider, `${model};echo=1`);
    models[`${f}-broken`] = one(provider, `${model};error_after=1,chunks=4`);
  }
  models['upstream-limited'] = one('anthropic', 'claude-mock;status=429,retry_after=3');
  models.overloaded = {
    targets: [
      { provider: 'anthropic', model: 'claude-mock;status=529' },
      { provider: 'mock', model: 'gpt-mock;status=503' },
    ],
  };
  models.failover = {
    targets: [
      { provider: 'anthropic', model: 'claude-mock;status=503' },
      { provider: 'anthropic', model: `claude-mock;text=${TEXT},chunks=4` },
    ],
  };
  models.regional = { targets: [{ provider: 'us-gpt', model: 'gpt-us' }, { provider: 'eu-claude', model: 'claude-eu' }] };
  models.priced = one('anthropic', PRICED_MODEL);
  models.cc = one('anthropic', CC_MODEL);
  const config = mockConfig(mock.url, models, {
    providers: {
      anthropic: {
        kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY',
        models: { [PRICED_MODEL]: SONNET, [CC_MODEL]: SONNET },
      },
      gemini: { kind: 'gemini', base_url: `${mock.url}/v1beta`, api_key_secret: 'MOCK_PROVIDER_KEY' },
      openai: { kind: 'openai', base_url: `${mock.url}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY' },
      'eu-claude': { kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY', jurisdiction: 'eu', region: 'eu-central-1' },
      'us-gpt': { kind: 'openai-compatible', base_url: `${mock.url}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY', jurisdiction: 'us', region: 'us-east-1' },
    },
  });
  config.residency = [{ origin: { eu: true }, jurisdictions: ['eu'] }];
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

// ---- helpers -----------------------------------------------------------------------

/** POST to a gateway path with a key (`x-api-key`, as the Anthropic SDKs send it, or Bearer). */
function post(path, body, { key = KEY, bearer = false, headers = {} } = {}) {
  const auth = key === null ? {} : bearer ? { authorization: `Bearer ${key}` } : { 'x-api-key': key };
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', ...auth, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

const messages = (body, opts) => post('/v1/messages', body, opts);
const responses = (body, opts) => post('/v1/responses', body, { bearer: true, ...opts });

async function json(res, status = 200) {
  const text = await res.text();
  assert.equal(res.status, status, text);
  return JSON.parse(text);
}

/** A minimal Messages body. */
function ask(model, content = 'hi', extra = {}) {
  return { model, max_tokens: 200, messages: [{ role: 'user', content }], ...extra };
}

/** The named SSE events of a response: `{ event, data, json }` each. */
async function readEvents(res) {
  const text = await res.text();
  return text.split('\n\n').filter((b) => b.trim()).map((block) => {
    let event = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
    }
    const joined = data.join('\n');
    return { event, data: joined, json: JSON.parse(joined) };
  });
}

/** Checks a Messages stream's grammar; returns its text, tool inputs and final delta. */
function messageStream(events) {
  assert.equal(events[0].event, 'message_start');
  assert.equal(events.at(-1).event, 'message_stop');
  for (const e of events) assert.equal(e.json.type, e.event, 'every event named after its type');
  const blocks = [];
  let text = '';
  for (const { event, json: j } of events) {
    if (event === 'content_block_start') blocks[j.index] = { ...j.content_block, partial: '' };
    if (event === 'content_block_delta' && j.delta.type === 'text_delta') text += j.delta.text;
    if (event === 'content_block_delta' && j.delta.type === 'input_json_delta') blocks[j.index].partial += j.delta.partial_json;
  }
  const tools = blocks.filter((b) => b?.type === 'tool_use').map((b) => ({ ...b, input: JSON.parse(b.partial || '{}') }));
  const delta = events.find((e) => e.event === 'message_delta').json;
  return { text, tools, delta, start: events[0].json.message };
}

/** Checks a Responses stream's grammar; returns its text and the final response. */
function responseStream(events) {
  assert.equal(events[0].event, 'response.created');
  for (const e of events) assert.equal(e.json.type, e.event, 'every event named after its type');
  const text = events.filter((e) => e.event === 'response.output_text.delta').map((e) => e.json.delta).join('');
  const done = events.at(-1);
  return { text, done };
}

function admin(p, { method = 'GET', body } = {}) {
  return fetch(`${gw.url}${p}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function createKey(settings = {}) {
  const res = await admin('/admin/keys', { method: 'POST', body: { name: 'ingress', ...settings } });
  assert.equal(res.status, 201, await res.clone().text());
  return res.json();
}

/** The key's usage once nothing is in flight. */
async function settled(secret) {
  for (let i = 0; i < 100; i++) {
    const res = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${secret}` } });
    const u = await json(res);
    if (u.in_flight === 0 && u.requests > 0) return u;
    await sleep(100);
  }
  throw new Error('requests never settled');
}

/** What the mock received since `since` (a seq), in order. */
const received = (since) => mock.requests.filter((r) => r.seq > since);
const lastSeq = () => mock.requests.at(-1)?.seq ?? 0;

// ---- Anthropic Messages ------------------------------------------------------------------

it('Messages: create and stream over every wire format', async () => {
  for (const f of Object.keys(FORMATS)) {
    const msg = await json(await messages(ask(`${f}-text`)));
    assert.equal(msg.type, 'message', f);
    assert.equal(msg.role, 'assistant');
    assert.match(msg.id, /^msg_/);
    assert.deepEqual(msg.content, [{ type: 'text', text: TEXT }], f);
    assert.equal(msg.stop_reason, 'end_turn');
    assert.ok(msg.usage.input_tokens > 0 && msg.usage.output_tokens > 0, f);

    const res = await messages(ask(`${f}-text`, 'hi', { stream: true }));
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    const { text, delta, start } = messageStream(await readEvents(res));
    assert.equal(text, TEXT, f);
    assert.equal(delta.delta.stop_reason, 'end_turn');
    assert.ok(delta.usage.output_tokens > 0);
    assert.ok(start.usage.input_tokens > 0);
  }
});

it('Messages: a two-turn tool loop with input_json_delta over every wire format', async () => {
  const tools = [{ name: 'get_weather', description: 'Weather of a city', input_schema: { type: 'object', properties: { city: { type: 'string' } } } }];
  for (const f of Object.keys(FORMATS)) {
    const first = messageStream(await readEvents(await messages(ask(`${f}-tools`, 'Weather in Paris?', { tools, stream: true }))));
    assert.equal(first.delta.delta.stop_reason, 'tool_use', f);
    assert.equal(first.tools.length, 1);
    const call = first.tools[0];
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(call.input, { city: 'Paris', call: 0 });
    assert.ok(call.id);
    const second = await json(await messages({
      model: `${f}-tools`,
      max_tokens: 200,
      tools,
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: [{ type: 'tool_use', id: call.id, name: call.name, input: call.input }] },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: 'sunny, 21 C' }] },
      ],
    }));
    assert.equal(second.stop_reason, 'end_turn', f);
    assert.deepEqual(second.content, [{ type: 'text', text: 'Tool result: sunny, 21 C' }], f);
  }
});

it('Messages: image input reaches every wire format in its own shape', async () => {
  const content = [
    { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG } },
    { type: 'text', text: 'What is this?' },
  ];
  for (const f of Object.keys(FORMATS)) {
    const since = lastSeq();
    const msg = await json(await messages(ask(`${f}-text`, content)));
    assert.equal(msg.content[0].text, TEXT);
    const [rec] = received(since);
    const sent = JSON.stringify(rec.body);
    if (f === 'openai') assert.ok(sent.includes(`"url":"data:image/png;base64,${PNG}"`), sent);
    if (f === 'anthropic') assert.deepEqual(rec.body.messages[0].content, content);
    if (f === 'gemini') assert.ok(sent.includes(`"data":"${PNG}"`) && sent.includes('image/png'), sent);
  }
});

it('Messages: errors take Anthropic\'s shape and statuses', async () => {
  const isError = (body, type) => {
    assert.equal(body.type, 'error');
    assert.equal(body.error.type, type);
    assert.equal(typeof body.error.message, 'string');
  };
  // Bad or missing key.
  isError(await json(await messages(ask('anthropic-text'), { key: 'sk-wrong' }), 401), 'authentication_error');
  isError(await json(await messages(ask('anthropic-text'), { key: null }), 401), 'authentication_error');
  // Bearer works too.
  await json(await messages(ask('anthropic-text'), { bearer: true }));
  // The request's own mistakes.
  isError(await json(await messages({ model: 'anthropic-text', messages: [] }), 400), 'invalid_request_error');
  isError(await json(await messages(ask('no-such-model')), 404), 'not_found_error');
  // A target's rate limit, with its Retry-After.
  const limited = await messages(ask('upstream-limited'));
  assert.equal(limited.headers.get('retry-after'), '3');
  isError(await json(limited, 429), 'rate_limit_error');
  // The key's own limit.
  const { secret } = await createKey({ limits: { rpm: 1 } });
  await json(await messages(ask('anthropic-text'), { key: secret }));
  const second = await messages(ask('anthropic-text'), { key: secret });
  assert.ok(Number(second.headers.get('retry-after')) >= 1);
  isError(await json(second, 429), 'rate_limit_error');
  // Every target overloaded: Anthropic's 529.
  isError(await json(await messages(ask('overloaded')), 529), 'overloaded_error');
  // A failure after the first token: one `event: error` ends the stream.
  for (const f of Object.keys(FORMATS)) {
    const events = await readEvents(await messages(ask(`${f}-broken`, 'hi', { stream: true })));
    const last = events.at(-1);
    assert.equal(last.event, 'error', f);
    assert.equal(last.json.type, 'error');
    assert.ok(!events.some((e) => e.event === 'message_stop'), f);
  }
});

it('Messages: a 503 on the first target is invisible on a stream', async () => {
  const since = lastSeq();
  const res = await messages(ask('failover', 'hi', { stream: true }));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-gateway-attempts'), '2');
  const events = await readEvents(res);
  assert.equal(events.filter((e) => e.event === 'message_start').length, 1);
  assert.equal(messageStream(events).text, TEXT);
  assert.deepEqual(received(since).map((r) => r.body.model), ['claude-mock;status=503', `claude-mock;text=${TEXT},chunks=4`]);
});

it('Messages: an EU caller never leaves the EU', async () => {
  const since = lastSeq();
  const eu = await messages(ask('regional', 'hi', { stream: true }), { headers: { 'x-gateway-test-geo': EU } });
  assert.equal(eu.status, 200);
  assert.equal(eu.headers.get('x-gateway-provider'), 'eu-claude');
  messageStream(await readEvents(eu));
  assert.deepEqual(received(since).map((r) => r.format), ['anthropic']);
  // From the US the first target serves, translated.
  const us = await messages(ask('regional'), { headers: { 'x-gateway-test-geo': US } });
  assert.equal(us.headers.get('x-gateway-provider'), 'us-gpt');
  assert.equal((await json(us)).type, 'message');
});

it('Messages: budgets charge cache reads and writes at their prices', async () => {
  const { secret } = await createKey({ budgets: { total_usd: 1 } });
  await json(await messages(ask('priced'), { key: secret }));
  const u = await settled(secret);
  // 2 fresh input tokens ("hi" + 1) × $3/M, 2,000 read × $0.30/M,
  // 1,000 written × $3.75/M, 4 output × $15/M, in picodollars.
  const pico = 2 * 3e6 + 2000 * 0.3e6 + 1000 * 3.75e6 + 4 * 15e6;
  assert.equal(u.spent_total_usd, pico / 1e12);
  const day = u.by_day.find((d) => d.model === 'priced');
  assert.deepEqual([day.input_tokens, day.cached_tokens, day.output_tokens], [3002, 2000, 4]);
});

it('Messages: a Claude Code request reaches Anthropic byte for byte but the model, and is charged its cache tokens', async () => {
  const fixture = readFileSync(path.join(ROOT, 'tests/fixtures/ingress/messages_request_claude_code.anthropic.json'), 'utf8');
  const sent = fixture.replace('"model":"claude-sonnet-4-5-20250929"', '"model":"cc"');
  assert.notEqual(sent, fixture);
  const parsed = JSON.parse(sent);
  assert.equal(parsed.tools.length, 20);
  assert.ok(parsed.stream && parsed.thinking && JSON.stringify(parsed.system).includes('cache_control'));
  const { secret } = await createKey({ budgets: { total_usd: 1 } });
  const beta = 'claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14';
  const since = lastSeq();
  const res = await messages(sent, { key: secret, headers: { 'anthropic-beta': beta, 'user-agent': 'claude-cli/2.0.0 (external, cli)' } });
  assert.equal(res.status, 200);
  messageStream(await readEvents(res));
  const [rec] = received(since);
  assert.equal(rec.path, '/v1/messages');
  assert.equal(rec.rawBody, fixture.replace('"model":"claude-sonnet-4-5-20250929"', JSON.stringify({ model: CC_MODEL }).slice(1, -1)));
  assert.equal(rec.headers['anthropic-version'], '2023-06-01');
  assert.equal(rec.headers['anthropic-beta'], beta);
  assert.equal(rec.headers['x-api-key'], MOCK_PROVIDER_KEY);
  assert.ok(!JSON.stringify(rec.headers).includes(secret), 'the gateway key stays at the gateway');
  assert.notEqual(rec.headers['user-agent'], 'claude-cli/2.0.0 (external, cli)');
  // Input: the mock's word count + 1 fresh, 9,000 read, 1,500 written.
  const u = await settled(secret);
  const day = u.by_day.find((d) => d.model === 'cc');
  const fresh = day.input_tokens - 9000 - 1500;
  const pico = fresh * 3e6 + 9000 * 0.3e6 + 1500 * 3.75e6 + day.output_tokens * 15e6;
  assert.equal(day.cached_tokens, 9000);
  assert.equal(u.spent_total_usd, pico / 1e12);
});

it('count_tokens: exact from Anthropic targets, estimated elsewhere, free', async () => {
  const body = { model: 'anthropic-text', system: 'Be brief.', messages: [{ role: 'user', content: 'Count these five words' }] };
  const since = lastSeq();
  const exact = await json(await post('/v1/messages/count_tokens', body));
  assert.deepEqual(exact, { input_tokens: 2 + 4 + 1 });
  const [rec] = received(since);
  assert.equal(rec.path, '/v1/messages/count_tokens');
  const estimate = await json(await post('/v1/messages/count_tokens', { ...body, model: 'openai-text' }));
  assert.ok(Number.isInteger(estimate.input_tokens) && estimate.input_tokens > 0);
  assert.equal(received(since).length, 1, 'no upstream call for an estimate');
  // Nothing reserved, nothing charged: a budget of a millionth of a dollar
  // counts tokens all day.
  const { secret } = await createKey({ budgets: { total_usd: 0.000001 } });
  for (let i = 0; i < 3; i++) await json(await post('/v1/messages/count_tokens', body, { key: secret }));
  const u = await settled(secret);
  assert.equal(u.spent_total_usd, 0);
});

// ---- OpenAI Responses --------------------------------------------------------------------

it('Responses: create and stream over OpenAI (passed through) and every other wire format', async () => {
  for (const f of Object.keys(RESPONSES_TARGETS)) {
    const since = lastSeq();
    const r = await json(await responses({ model: `${f}-text`, input: 'hi', instructions: 'Be brief.', store: false }));
    assert.equal(r.object, 'response', f);
    assert.equal(r.status, 'completed');
    const message = r.output.find((o) => o.type === 'message');
    assert.equal(message.content[0].text, TEXT, f);
    assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
    const [rec] = received(since);
    if (f === 'native') {
      assert.equal(rec.format, 'responses');
      assert.equal(rec.rawBody, JSON.stringify({ model: `gpt-native;text=${TEXT},chunks=4`, input: 'hi', instructions: 'Be brief.', store: false }));
    } else {
      assert.notEqual(rec.format, 'responses');
    }
    const { text, done } = responseStream(await readEvents(await responses({ model: `${f}-text`, input: 'hi', stream: true })));
    assert.equal(text, TEXT, f);
    assert.equal(done.event, 'response.completed');
    assert.ok(done.json.response.usage.output_tokens > 0);
  }
});

it('Responses: a function-calling round trip over every target', async () => {
  const tools = [{ type: 'function', name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } }];
  for (const f of Object.keys(RESPONSES_TARGETS)) {
    const first = await json(await responses({ model: `${f}-tools`, input: 'Weather in Paris?', tools }));
    const call = first.output.find((o) => o.type === 'function_call');
    assert.ok(call, `${f}: ${JSON.stringify(first.output)}`);
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris', call: 0 });
    // Streamed, the arguments arrive in deltas.
    const events = await readEvents(await responses({ model: `${f}-tools`, input: 'Weather in Paris?', tools, stream: true }));
    const args = events.filter((e) => e.event === 'response.function_call_arguments.delta').map((e) => e.json.delta).join('');
    assert.deepEqual(JSON.parse(args), { city: 'Paris', call: 0 }, f);
    const second = await json(await responses({
      model: `${f}-tools`,
      tools,
      input: [
        { role: 'user', content: 'Weather in Paris?' },
        { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments },
        { type: 'function_call_output', call_id: call.call_id, output: 'sunny, 21 C' },
      ],
    }));
    const message = second.output.find((o) => o.type === 'message');
    assert.equal(message.content[0].text, 'Tool result: sunny, 21 C', f);
  }
});

it('Responses: errors keep OpenAI\'s shape; what needs OpenAI goes only to OpenAI', async () => {
  const bad = await json(await responses({ model: 'native-text', input: 'hi' }, { key: 'sk-wrong' }), 401);
  assert.equal(bad.error.code, 'invalid_api_key');
  const cont = { input: 'and then?', previous_response_id: 'resp_123' };
  const refused = await json(await responses({ model: 'anthropic-text', ...cont }), 400);
  assert.equal(refused.error.param, 'previous_response_id');
  const since = lastSeq();
  await json(await responses({ model: 'native-text', ...cont }));
  assert.equal(received(since)[0].body.previous_response_id, 'resp_123');
  // A failure after the first token: an error event, then response.failed
  // for translated targets; OpenAI's own error event as sent.
  for (const f of Object.keys(RESPONSES_TARGETS)) {
    const events = await readEvents(await responses({ model: `${f}-broken`, input: 'hi', stream: true }));
    assert.ok(events.some((e) => e.event === 'error'), f);
    assert.ok(!events.some((e) => e.event === 'response.completed'), f);
  }
});
