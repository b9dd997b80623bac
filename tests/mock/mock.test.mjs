// Self-tests of the mock provider, over real HTTP.
// Run: node --test tests/mock/mock.test.mjs

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { createHash, createSign } from 'node:crypto';
import { googleServiceAccount, sigv4Signature, startMock } from './server.mjs';

const DEFAULT_TEXT = 'Hello from the mock provider.';
const SERVER_PATH = fileURLToPath(new URL('./server.mjs', import.meta.url));

// --- helpers ---------------------------------------------------------------

function post(url, body, headers = {}) {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function postJson(url, body, headers) {
  const res = await post(url, body, headers);
  return { res, json: await res.json() };
}

/**
 * Reads a streamed body, splitting it into events on `sep` and stamping each
 * with its arrival time. A broken connection ends the read with `error` set.
 */
async function readEvents(res, sep = '\n\n') {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const events = [];
  let buffer = '';
  let error = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let i;
      while ((i = buffer.indexOf(sep)) !== -1) {
        events.push({ at: performance.now(), raw: buffer.slice(0, i) });
        buffer = buffer.slice(i + sep.length);
      }
    }
  } catch (err) {
    error = err;
  }
  return { events, rest: buffer, error };
}

/** `event: x\ndata: y` -> { event: 'x', data: 'y' } */
function sseFields(raw) {
  const out = {};
  for (const line of raw.split('\n')) {
    const i = line.indexOf(': ');
    out[line.slice(0, i)] = line.slice(i + 2);
  }
  return out;
}

const dataOf = (e) => sseFields(e.raw).data;
const jsonOf = (e) => JSON.parse(dataOf(e));

function userChat(extra = {}) {
  return {
    model: 'gpt-4o',
    messages: [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'What is the weather today?' },
    ],
    ...extra,
  };
}
// Words: "You are terse." (3) + "What is the weather today?" (5) + 1.
const CHAT_PROMPT_TOKENS = 9;

// --- one shared mock for the stateless format tests -------------------------

let mock;
before(async () => {
  mock = await startMock();
});
after(async () => {
  await mock.close();
});

describe('OpenAI chat completions', () => {
  test('non-stream response shape, usage and model without directives', async () => {
    const { res, json } = await postJson(`${mock.url}/v1/chat/completions`, userChat({ model: 'gpt-4o;chunks=3' }));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/json');
    const seq = Number(res.headers.get('x-mock-seq'));
    assert.ok(Number.isInteger(json.created) && Math.abs(json.created - Date.now() / 1000) < 5);
    assert.deepEqual(json, {
      id: `chatcmpl-mock-${seq}`,
      object: 'chat.completion',
      created: json.created,
      model: 'gpt-4o',
      system_fingerprint: 'fp_mock',
      choices: [{ index: 0, message: { role: 'assistant', content: DEFAULT_TEXT, refusal: null }, logprobs: null, finish_reason: 'stop' }],
      usage: {
        prompt_tokens: CHAT_PROMPT_TOKENS,
        completion_tokens: 3,
        total_tokens: CHAT_PROMPT_TOKENS + 3,
        prompt_tokens_details: { cached_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: 0 },
      },
    });
    assert.deepEqual(Object.keys(json), ['id', 'object', 'created', 'model', 'system_fingerprint', 'choices', 'usage']);
  });

  test('routes any base-URL prefix ending in /chat/completions', async () => {
    for (const path of ['/openai/deployments/my-dep/chat/completions?api-version=2024-10-21', '/openai/v1/chat/completions', '/api/v1/chat/completions']) {
      const { res, json } = await postJson(mock.url + path, userChat());
      assert.equal(res.status, 200, path);
      assert.equal(json.object, 'chat.completion', path);
    }
  });

  test('stream with include_usage: exact chunk sequence then [DONE]', async () => {
    const res = await post(`${mock.url}/v1/chat/completions`, userChat({ stream: true, stream_options: { include_usage: true } }));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const { events, rest, error } = await readEvents(res);
    assert.equal(error, null);
    assert.equal(rest, '');
    assert.equal(dataOf(events.at(-1)), '[DONE]');
    const chunks = events.slice(0, -1).map(jsonOf);
    assert.equal(chunks.length, 1 + 4 + 1 + 1);
    const { id, created } = chunks[0];
    assert.match(id, /^chatcmpl-mock-\d+$/);
    for (const c of chunks) {
      assert.equal(c.id, id);
      assert.equal(c.created, created);
      assert.equal(c.model, 'gpt-4o');
      assert.equal(c.object, 'chat.completion.chunk');
      assert.ok('usage' in c);
    }
    assert.deepEqual(chunks[0].choices, [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
    assert.deepEqual(chunks.slice(1, 5).map((c) => c.choices[0].delta), [{ content: 'Hello f' }, { content: 'rom the' }, { content: ' mock p' }, { content: 'rovider.' }]);
    assert.deepEqual(chunks[5].choices, [{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }]);
    assert.equal(chunks[5].usage, null);
    assert.deepEqual(chunks[6].choices, []);
    assert.equal(chunks[6].usage.prompt_tokens, CHAT_PROMPT_TOKENS);
    assert.equal(chunks[6].usage.completion_tokens, 4);
  });

  test('stream without include_usage has no usage fields', async () => {
    const res = await post(`${mock.url}/v1/chat/completions`, userChat({ stream: true }));
    const { events } = await readEvents(res);
    const chunks = events.slice(0, -1).map(jsonOf);
    assert.equal(chunks.length, 6);
    assert.ok(chunks.every((c) => !('usage' in c) && c.choices.length === 1));
  });

  test('tool calls, non-stream: names cycle over request tools', async () => {
    const tools = [{ type: 'function', function: { name: 'lookup' } }, { type: 'function', function: { name: 'search' } }];
    const { json } = await postJson(`${mock.url}/v1/chat/completions`, userChat({ tools }), { 'x-mock-tools': '3' });
    const choice = json.choices[0];
    assert.equal(choice.finish_reason, 'tool_calls');
    assert.equal(choice.message.content, null);
    assert.deepEqual(choice.message.tool_calls, [
      { id: 'call_mock_0', type: 'function', function: { name: 'lookup', arguments: '{"city":"Paris","call":0}' } },
      { id: 'call_mock_1', type: 'function', function: { name: 'search', arguments: '{"city":"Paris","call":1}' } },
      { id: 'call_mock_2', type: 'function', function: { name: 'lookup', arguments: '{"city":"Paris","call":2}' } },
    ]);
    assert.equal(json.usage.completion_tokens, 3 * 4); // 4 argument pieces per call
  });

  test('tool calls, stream: header delta then id-less argument fragments', async () => {
    const res = await post(`${mock.url}/v1/chat/completions`, userChat({ model: 'gpt-4o;tools=2', stream: true }));
    const { events } = await readEvents(res);
    const deltas = events.slice(0, -1).map((e) => jsonOf(e).choices[0]);
    assert.deepEqual(deltas[0].delta, { role: 'assistant', content: null });
    assert.equal(deltas.at(-1).finish_reason, 'tool_calls');
    const calls = [];
    for (const { delta } of deltas.slice(1, -1)) {
      assert.equal(delta.tool_calls.length, 1);
      const tc = delta.tool_calls[0];
      if (tc.id !== undefined) {
        assert.equal(tc.index, calls.length);
        assert.deepEqual(tc, { index: tc.index, id: `call_mock_${tc.index}`, type: 'function', function: { name: 'get_weather', arguments: '' } });
        calls.push({ fragments: [] });
      } else {
        assert.deepEqual(Object.keys(tc), ['index', 'function']);
        assert.deepEqual(Object.keys(tc.function), ['arguments']);
        assert.equal(tc.index, calls.length - 1);
        calls.at(-1).fragments.push(tc.function.arguments);
      }
    }
    assert.equal(calls.length, 2);
    calls.forEach((c, i) => {
      assert.ok(c.fragments.length >= 2);
      assert.deepEqual(JSON.parse(c.fragments.join('')), { city: 'Paris', call: i });
    });
  });

  test('error statuses carry OpenAI error bodies', async () => {
    const expected = {
      400: ['invalid_request_error', 'invalid_request_error'],
      401: ['invalid_request_error', 'invalid_api_key'],
      429: ['requests', 'rate_limit_exceeded'],
      500: ['server_error', 'server_error'],
      503: ['server_error', 'server_error'],
    };
    for (const [status, [type, code]] of Object.entries(expected)) {
      const { res, json } = await postJson(`${mock.url}/v1/chat/completions`, userChat(), { 'x-mock-status': status });
      assert.equal(res.status, Number(status));
      assert.equal(res.headers.get('retry-after'), null);
      assert.deepEqual(Object.keys(json.error), ['message', 'type', 'param', 'code']);
      assert.equal(json.error.type, type);
      assert.equal(json.error.code, code);
      assert.equal(json.error.param, null);
    }
  });

  test('status with retry_after from a path prefix sets Retry-After', async () => {
    const { res, json } = await postJson(`${mock.url}/_mock/status=429,retry_after=2/v1/chat/completions`, userChat());
    assert.equal(res.status, 429);
    assert.equal(res.headers.get('retry-after'), '2');
    assert.equal(json.error.code, 'rate_limit_exceeded');
  });

  test('finish, usage=0, text=, echo=1, cached=, chunks beyond text length', async () => {
    const url = `${mock.url}/v1/chat/completions`;
    let { json } = await postJson(url, userChat({ model: 'gpt-4o;finish=length,usage=0,text=Short reply' }));
    assert.equal(json.choices[0].finish_reason, 'length');
    assert.equal(json.choices[0].message.content, 'Short reply');
    assert.equal('usage' in json, false);

    ({ json } = await postJson(url, userChat({ model: 'gpt-4o;echo=1' })));
    assert.equal(json.choices[0].message.content, 'What is the weather today?');
    const parts = { role: 'user', content: [{ type: 'text', text: 'part one, ' }, { type: 'image_url', image_url: { url: 'x' } }, { type: 'text', text: 'part two' }] };
    ({ json } = await postJson(url, { model: 'm;echo=1', messages: [parts] }));
    assert.equal(json.choices[0].message.content, 'part one, part two');

    ({ json } = await postJson(url, userChat({ model: 'gpt-4o;cached=5' })));
    assert.equal(json.usage.prompt_tokens_details.cached_tokens, 5);

    const res = await post(url, userChat({ model: 'gpt-4o;text=ab,chunks=4', stream: true }));
    const { events } = await readEvents(res);
    const pieces = events.slice(1, -2).map((e) => jsonOf(e).choices[0].delta.content);
    assert.deepEqual(pieces, ['tok0', ' tok1', ' tok2', ' tok3']);
  });
});

describe('continuations (resume=1)', () => {
  test('the rest of the text from the start of the word the assistant turn ended in', async () => {
    const url = `${mock.url}/v1/chat/completions`;
    const turns = (said, extra = []) => [{ role: 'user', content: 'Go' }, { role: 'assistant', content: said }, ...extra];
    let { json } = await postJson(url, { model: 'm;resume=1', messages: turns('Hello from th') });
    assert.equal(json.choices[0].message.content, 'the mock provider.');
    // A prompt after the assistant turn (OpenAI-compatible continuation).
    ({ json } = await postJson(url, { model: 'm;resume=1', messages: turns('Hello from ', [{ role: 'user', content: 'Continue' }]) }));
    assert.equal(json.choices[0].message.content, 'from the mock provider.');
    // Not a start of the text: the whole text.
    ({ json } = await postJson(url, { model: 'm;resume=1', messages: turns('Goodbye') }));
    assert.equal(json.choices[0].message.content, DEFAULT_TEXT);
    // Anthropic's prefill, and Gemini's model turn.
    ({ json } = await postJson(`${mock.url}/v1/messages`, { model: 'm;resume=1', max_tokens: 10, messages: turns('Hello fr') }));
    assert.equal(json.content[0].text, 'from the mock provider.');
    ({ json } = await postJson(`${mock.url}/v1beta/models/m;resume=1:generateContent`, {
      contents: [{ role: 'user', parts: [{ text: 'Go' }] }, { role: 'model', parts: [{ text: 'Hello from the mock' }] }],
    }));
    assert.equal(json.candidates[0].content.parts[0].text, 'mock provider.');
  });
});

describe('OpenAI embeddings and models', () => {
  test('embeddings: string and array input, deterministic vectors', async () => {
    const url = `${mock.url}/v1/embeddings`;
    const { res, json } = await postJson(url, { model: 'text-embedding-3-small', input: ['one two', 'three'] });
    assert.equal(res.status, 200);
    assert.equal(json.object, 'list');
    assert.equal(json.model, 'text-embedding-3-small');
    assert.deepEqual(json.usage, { prompt_tokens: 4, total_tokens: 4 });
    assert.equal(json.data.length, 2);
    json.data.forEach((d, i) => {
      assert.deepEqual(Object.keys(d), ['object', 'index', 'embedding']);
      assert.equal(d.object, 'embedding');
      assert.equal(d.index, i);
      assert.equal(d.embedding.length, 8);
      assert.ok(d.embedding.every((v) => typeof v === 'number' && v >= -1 && v <= 1));
    });
    assert.notDeepEqual(json.data[0].embedding, json.data[1].embedding);

    const single = (await postJson(url, { model: 'e', input: 'three' })).json;
    assert.equal(single.data.length, 1);
    assert.deepEqual(single.data[0].embedding, json.data[1].embedding);

    const b64 = (await postJson(url, { model: 'e', input: 'three', encoding_format: 'base64' })).json;
    const bytes = Buffer.from(b64.data[0].embedding, 'base64');
    const floats = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    assert.deepEqual(Array.from(floats), json.data[1].embedding.map(Math.fround));
  });

  test('GET /models lists the mock model', async () => {
    const res = await fetch(`${mock.url}/v1/models`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { object: 'list', data: [{ id: 'mock-model', object: 'model', created: 0, owned_by: 'mock' }] });
  });

  test('unknown routes get an OpenAI-shaped 404', async () => {
    const { res, json } = await postJson(`${mock.url}/v1/nope`, {});
    assert.equal(res.status, 404);
    assert.equal(json.error.type, 'invalid_request_error');
    assert.equal(json.error.code, 'unknown_url');
    assert.equal((await fetch(`${mock.url}/v1/chat/completions`)).status, 404); // GET
  });
});

describe('Anthropic Messages', () => {
  const anthropicBody = (extra = {}) => ({
    model: 'claude-sonnet-4',
    max_tokens: 100,
    system: [{ type: 'text', text: 'Be brief.' }],
    messages: [{ role: 'user', content: [{ type: 'text', text: 'Say hi please' }] }],
    ...extra,
  });
  const PROMPT = 2 + 3 + 1;

  test('non-stream message', async () => {
    const { res, json } = await postJson(`${mock.url}/v1/messages`, anthropicBody({ model: 'claude-sonnet-4;cached=7' }));
    assert.equal(res.status, 200);
    assert.deepEqual(json, {
      id: `msg_mock_${res.headers.get('x-mock-seq')}`,
      type: 'message',
      role: 'assistant',
      model: 'claude-sonnet-4',
      content: [{ type: 'text', text: DEFAULT_TEXT }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: PROMPT, output_tokens: 4, cache_creation_input_tokens: 0, cache_read_input_tokens: 7 },
    });
  });

  test('tool use with an explicit text block, and finish mapping', async () => {
    const tools = [{ name: 'lookup', input_schema: { type: 'object' } }];
    const { json } = await postJson(`${mock.url}/v1/messages`, anthropicBody({ tools }), { 'x-mock-tools': '2', 'x-mock-text': 'Let me check.' });
    assert.equal(json.stop_reason, 'tool_use');
    assert.deepEqual(json.content, [
      { type: 'text', text: 'Let me check.' },
      { type: 'tool_use', id: 'toolu_mock_0', name: 'lookup', input: { city: 'Paris', call: 0 } },
      { type: 'tool_use', id: 'toolu_mock_1', name: 'lookup', input: { city: 'Paris', call: 1 } },
    ]);
    for (const [finish, stop] of [['length', 'max_tokens'], ['stop', 'end_turn'], ['content_filter', 'refusal']]) {
      const r = await postJson(`${mock.url}/v1/messages`, anthropicBody(), { 'x-mock-finish': finish });
      assert.equal(r.json.stop_reason, stop);
    }
    const noUsage = (await postJson(`${mock.url}/v1/messages`, anthropicBody({ model: 'c;usage=0' }))).json;
    assert.deepEqual(noUsage.usage, { input_tokens: PROMPT, output_tokens: 4 });
  });

  test('stream: exact event sequence', async () => {
    const res = await post(`${mock.url}/v1/messages`, anthropicBody({ stream: true, model: 'claude-sonnet-4;chunks=2,tools=1,echo=1' }));
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const { events, error, rest } = await readEvents(res);
    assert.equal(error, null);
    assert.equal(rest, '');
    const parsed = events.map((e) => sseFields(e.raw));
    for (const p of parsed) assert.equal(JSON.parse(p.data).type, p.event);
    assert.deepEqual(parsed.map((p) => p.event), [
      'message_start', 'ping',
      'content_block_start', 'content_block_delta', 'content_block_delta', 'content_block_stop',
      'content_block_start', 'content_block_delta', 'content_block_delta', 'content_block_stop',
      'message_delta', 'message_stop',
    ]);
    const data = parsed.map((p) => JSON.parse(p.data));
    assert.deepEqual(data[0].message, {
      id: data[0].message.id, type: 'message', role: 'assistant', model: 'claude-sonnet-4', content: [], stop_reason: null, stop_sequence: null,
      usage: { input_tokens: PROMPT, output_tokens: 1, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 },
    });
    assert.deepEqual(data[2], { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } });
    assert.equal(data[3].delta.text + data[4].delta.text, 'Say hi please');
    assert.deepEqual(data[3].delta, { type: 'text_delta', text: 'Say hi' });
    assert.deepEqual(data[5], { type: 'content_block_stop', index: 0 });
    assert.deepEqual(data[6], { type: 'content_block_start', index: 1, content_block: { type: 'tool_use', id: 'toolu_mock_0', name: 'get_weather', input: {} } });
    assert.equal(data[7].delta.type, 'input_json_delta');
    assert.deepEqual(JSON.parse(data[7].delta.partial_json + data[8].delta.partial_json), { city: 'Paris', call: 0 });
    assert.deepEqual(data[10], { type: 'message_delta', delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: { output_tokens: 4 } });
  });

  test('errors: 529 overloaded, 429 rate limit, 401 authentication', async () => {
    for (const [status, type] of [[529, 'overloaded_error'], [429, 'rate_limit_error'], [401, 'authentication_error'], [500, 'api_error'], [404, 'not_found_error']]) {
      const { res, json } = await postJson(`${mock.url}/v1/messages`, anthropicBody({ model: `claude;status=${status}` }));
      assert.equal(res.status, status);
      assert.equal(json.type, 'error');
      assert.equal(json.error.type, type);
      assert.equal(typeof json.error.message, 'string');
    }
  });

  test('error_after emits an in-stream error event and ends', async () => {
    const res = await post(`${mock.url}/v1/messages`, anthropicBody({ stream: true }), { 'x-mock-error-after': '2' });
    const { events, error } = await readEvents(res);
    assert.equal(error, null);
    assert.deepEqual(events.map((e) => sseFields(e.raw).event), ['message_start', 'ping', 'content_block_start', 'content_block_delta', 'content_block_delta', 'error']);
    assert.equal(events.at(-1).raw, 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}');
  });
});

describe('Anthropic headers, cache usage, count_tokens and tool loops', () => {
  const body = (model, extra = {}) => ({ model, max_tokens: 50, messages: [{ role: 'user', content: 'Say hi please' }], ...extra });

  test('records and echoes anthropic-version and anthropic-beta', async () => {
    const headers = { 'anthropic-version': '2023-06-01', 'anthropic-beta': 'prompt-caching-2024-07-31,context-1m-2025-08-07' };
    const { res, json } = await postJson(`${mock.url}/v1/messages`, body('c;echo_headers=1'), headers);
    assert.equal(json.content[0].text, 'anthropic-version=2023-06-01 anthropic-beta=prompt-caching-2024-07-31,context-1m-2025-08-07');
    const seq = Number(res.headers.get('x-mock-seq'));
    const rec = mock.requests.find((r) => r.seq === seq);
    assert.equal(rec.rawBody, JSON.stringify(body('c;echo_headers=1')));
    assert.equal(rec.headers['anthropic-version'], '2023-06-01');
    assert.equal(rec.headers['anthropic-beta'], headers['anthropic-beta']);
    const bare = await postJson(`${mock.url}/v1/messages`, body('c;echo_headers=1'));
    assert.equal(bare.json.content[0].text, 'anthropic-version= anthropic-beta=');
  });

  test('cache_write and cached report cache creation and reads, streamed or not', async () => {
    const { json } = await postJson(`${mock.url}/v1/messages`, body('c;cache_write=1200,cached=300'));
    assert.deepEqual(json.usage, { input_tokens: 4, output_tokens: 4, cache_creation_input_tokens: 1200, cache_read_input_tokens: 300 });
    const res = await post(`${mock.url}/v1/messages`, body('c;cache_write=1200,cached=300', { stream: true }));
    const { events } = await readEvents(res);
    const start = jsonOf(events[0]);
    assert.equal(start.message.usage.cache_creation_input_tokens, 1200);
    assert.equal(start.message.usage.cache_read_input_tokens, 300);
  });

  test('count_tokens answers the prompt token count, errors in Anthropic\'s shape', async () => {
    const { res, json } = await postJson(`${mock.url}/v1/messages/count_tokens`, { model: 'c', system: 'Be brief.', messages: [{ role: 'user', content: 'Say hi please' }] });
    assert.equal(res.status, 200);
    assert.deepEqual(json, { input_tokens: 2 + 3 + 1 });
    const failed = await postJson(`${mock.url}/v1/messages/count_tokens`, { model: 'c;status=529', messages: [] });
    assert.equal(failed.res.status, 529);
    assert.equal(failed.json.error.type, 'overloaded_error');
    assert.equal(mock.requests.at(-1).format, 'anthropic-count');
  });

  test('tools_once: tool calls until a tool result arrives, then text quoting it', async () => {
    const first = await postJson(`${mock.url}/v1/messages`, body('c;tools=1,tools_once=1'));
    assert.equal(first.json.stop_reason, 'tool_use');
    const call = first.json.content[0];
    const second = await postJson(`${mock.url}/v1/messages`, body('c;tools=1,tools_once=1', {
      messages: [
        { role: 'user', content: 'weather?' },
        { role: 'assistant', content: [call] },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: 'sunny, 21 C' }] },
      ],
    }));
    assert.equal(second.json.stop_reason, 'end_turn');
    assert.deepEqual(second.json.content, [{ type: 'text', text: 'Tool result: sunny, 21 C' }]);
    // The same in the other formats.
    const openai = await postJson(`${mock.url}/v1/chat/completions`, {
      model: 'g;tools=1,tools_once=1',
      messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'a', type: 'function', function: { name: 'f', arguments: '{}' } }] }, { role: 'tool', tool_call_id: 'a', content: 'done' }],
    });
    assert.equal(openai.json.choices[0].message.content, 'Tool result: done');
    const gemini = await postJson(`${mock.url}/v1beta/models/gm;tools=1,tools_once=1:generateContent`, {
      contents: [{ role: 'user', parts: [{ text: 'x' }] }, { role: 'model', parts: [{ functionCall: { name: 'f', args: {} } }] }, { role: 'user', parts: [{ functionResponse: { name: 'f', response: { ok: true } } }] }],
    });
    assert.equal(gemini.json.candidates[0].content.parts[0].text, 'Tool result: {"ok":true}');
    const responses = await postJson(`${mock.url}/v1/responses`, {
      model: 'r;tools=1,tools_once=1',
      input: [{ role: 'user', content: 'x' }, { type: 'function_call', call_id: 'c1', name: 'f', arguments: '{}' }, { type: 'function_call_output', call_id: 'c1', output: '42' }],
    });
    assert.equal(responses.json.output[0].content[0].text, 'Tool result: 42');
  });
});

describe('OpenAI Responses', () => {
  const body = (extra = {}) => ({ model: 'gpt-5', instructions: 'Be brief.', input: 'Say hi please', ...extra });
  const PROMPT = 2 + 3 + 1;

  test('non-stream response: a message item, usage, the request echoed', async () => {
    const { res, json } = await postJson(`${mock.url}/v1/responses`, body({ model: 'gpt-5;cached=2', store: false, metadata: { team: 'a' } }));
    assert.equal(res.status, 200);
    const seq = res.headers.get('x-mock-seq');
    assert.equal(json.id, `resp_mock_${seq}`);
    assert.equal(json.object, 'response');
    assert.equal(json.status, 'completed');
    assert.equal(json.model, 'gpt-5');
    assert.equal(json.instructions, 'Be brief.');
    assert.equal(json.store, false);
    assert.deepEqual(json.metadata, { team: 'a' });
    assert.deepEqual(json.output, [{ id: `msg_mock_${seq}`, type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: DEFAULT_TEXT, annotations: [], logprobs: [] }] }]);
    assert.deepEqual(json.usage, { input_tokens: PROMPT, input_tokens_details: { cached_tokens: 2 }, output_tokens: 4, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: PROMPT + 4 });
    assert.equal(mock.requests.at(-1).format, 'responses');
  });

  test('function calls from the request tools; length makes it incomplete', async () => {
    const tools = [{ type: 'function', name: 'lookup', parameters: { type: 'object' } }];
    const { json } = await postJson(`${mock.url}/v1/responses`, body({ model: 'gpt-5;tools=2', tools }));
    assert.deepEqual(json.output.map((o) => [o.type, o.name, o.call_id, JSON.parse(o.arguments).call]), [
      ['function_call', 'lookup', 'call_mock_0', 0],
      ['function_call', 'lookup', 'call_mock_1', 1],
    ]);
    const cut = (await postJson(`${mock.url}/v1/responses`, body({ model: 'gpt-5;finish=length' }))).json;
    assert.equal(cut.status, 'incomplete');
    assert.deepEqual(cut.incomplete_details, { reason: 'max_output_tokens' });
    const noUsage = (await postJson(`${mock.url}/v1/responses`, body({ model: 'gpt-5;usage=0' }))).json;
    assert.equal(noUsage.usage, null);
  });

  test('stream: named, numbered events from response.created to response.completed', async () => {
    const res = await post(`${mock.url}/v1/responses`, body({ stream: true, model: 'gpt-5;chunks=2,tools=1,echo=1' }));
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const { events, error, rest } = await readEvents(res);
    assert.equal(error, null);
    assert.equal(rest, '');
    const parsed = events.map((e) => sseFields(e.raw));
    const data = parsed.map((p) => JSON.parse(p.data));
    parsed.forEach((p, i) => {
      assert.equal(data[i].type, p.event);
      assert.equal(data[i].sequence_number, i);
    });
    assert.deepEqual(parsed.map((p) => p.event), [
      'response.created', 'response.in_progress',
      'response.output_item.added', 'response.content_part.added',
      'response.output_text.delta', 'response.output_text.delta', 'response.output_text.done',
      'response.content_part.done', 'response.output_item.done',
      'response.output_item.added', 'response.function_call_arguments.delta', 'response.function_call_arguments.delta',
      'response.function_call_arguments.done', 'response.output_item.done',
      'response.completed',
    ]);
    assert.equal(data[0].response.status, 'in_progress');
    assert.equal(data[4].delta + data[5].delta, 'Say hi please');
    assert.equal(data[6].text, 'Say hi please');
    assert.deepEqual(JSON.parse(data[10].delta + data[11].delta), { city: 'Paris', call: 0 });
    const done = data.at(-1).response;
    assert.equal(done.status, 'completed');
    assert.deepEqual(done.output.map((o) => o.type), ['message', 'function_call']);
    assert.equal(done.usage.input_tokens, PROMPT);
  });

  test('errors are OpenAI-shaped; error_after sends an error event and ends', async () => {
    const failed = await postJson(`${mock.url}/v1/responses`, body({ model: 'gpt-5;status=429,retry_after=3' }));
    assert.equal(failed.res.status, 429);
    assert.equal(failed.res.headers.get('retry-after'), '3');
    assert.equal(failed.json.error.code, 'rate_limit_exceeded');
    const res = await post(`${mock.url}/v1/responses`, body({ stream: true }), { 'x-mock-error-after': '1' });
    const { events } = await readEvents(res);
    const last = sseFields(events.at(-1).raw);
    assert.equal(last.event, 'error');
    const err = JSON.parse(last.data);
    assert.equal(err.code, 'server_error');
    assert.equal(err.sequence_number, events.length - 1);
  });
});

describe('Gemini', () => {
  const geminiBody = (extra = {}) => ({
    systemInstruction: { parts: [{ text: 'Be brief.' }] },
    contents: [{ role: 'user', parts: [{ text: 'Say hi please' }] }],
    ...extra,
  });
  const PROMPT = 2 + 3 + 1;

  test('generateContent: model from the path, directives in it', async () => {
    const { res, json } = await postJson(`${mock.url}/v1beta/models/${encodeURIComponent('gemini-2.0-flash;cached=3')}:generateContent`, geminiBody());
    assert.equal(res.status, 200);
    assert.deepEqual(json, {
      candidates: [{ content: { parts: [{ text: DEFAULT_TEXT }], role: 'model' }, finishReason: 'STOP', index: 0 }],
      usageMetadata: { promptTokenCount: PROMPT, candidatesTokenCount: 4, totalTokenCount: PROMPT + 4, cachedContentTokenCount: 3 },
      modelVersion: 'gemini-2.0-flash',
      responseId: `mock-${res.headers.get('x-mock-seq')}`,
    });
  });

  test('function calls, finish mapping, usage=0', async () => {
    const tools = [{ functionDeclarations: [{ name: 'lookup' }, { name: 'search' }] }];
    const url = `${mock.url}/v1beta/models/gemini-pro;tools=2:generateContent`;
    const { json } = await postJson(url, geminiBody({ tools }));
    assert.deepEqual(json.candidates[0].content.parts, [
      { functionCall: { name: 'lookup', args: { city: 'Paris', call: 0 } } },
      { functionCall: { name: 'search', args: { city: 'Paris', call: 1 } } },
    ]);
    assert.equal(json.candidates[0].finishReason, 'STOP');
    const len = (await postJson(`${mock.url}/v1beta/models/g;finish=length,usage=0:generateContent`, geminiBody())).json;
    assert.equal(len.candidates[0].finishReason, 'MAX_TOKENS');
    assert.equal('usageMetadata' in len, false);
    const safety = (await postJson(`${mock.url}/v1beta/models/g:generateContent`, geminiBody(), { 'x-mock-finish': 'content_filter' })).json;
    assert.equal(safety.candidates[0].finishReason, 'SAFETY');
  });

  test('streamGenerateContent?alt=sse: CRLF framing, finishReason and usage only last, no [DONE]', async () => {
    const res = await post(`${mock.url}/v1beta/models/gemini-pro:streamGenerateContent?alt=sse`, geminiBody());
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const { events, rest, error } = await readEvents(res, '\r\n\r\n');
    assert.equal(error, null);
    assert.equal(rest, '');
    assert.equal(events.length, 4);
    const chunks = events.map((e) => {
      assert.ok(e.raw.startsWith('data: '));
      return JSON.parse(e.raw.slice(6));
    });
    assert.equal(chunks.map((c) => c.candidates[0].content.parts[0].text).join(''), DEFAULT_TEXT);
    chunks.slice(0, -1).forEach((c) => {
      assert.equal('finishReason' in c.candidates[0], false);
      assert.equal('usageMetadata' in c, false);
    });
    assert.equal(chunks[3].candidates[0].finishReason, 'STOP');
    assert.deepEqual(chunks[3].usageMetadata, { promptTokenCount: PROMPT, candidatesTokenCount: 4, totalTokenCount: PROMPT + 4 });
    assert.ok(chunks.every((c) => c.modelVersion === 'gemini-pro' && c.candidates[0].content.role === 'model'));
  });

  test('stream with echoed text then a whole function call in the last chunk', async () => {
    const tools = [{ functionDeclarations: [{ name: 'lookup' }] }];
    const res = await post(`${mock.url}/v1beta/models/gemini-pro;echo=1,tools=1,chunks=2:streamGenerateContent?alt=sse`, geminiBody({ tools }));
    const { events } = await readEvents(res, '\r\n\r\n');
    const chunks = events.map((e) => JSON.parse(e.raw.slice(6)));
    assert.deepEqual(chunks.map((c) => c.candidates[0].content.parts), [
      [{ text: 'Say hi' }],
      [{ text: ' please' }],
      [{ functionCall: { name: 'lookup', args: { city: 'Paris', call: 0 } } }],
    ]);
    assert.deepEqual(chunks.map((c) => c.candidates[0].finishReason), [undefined, undefined, 'STOP']);
    assert.equal(chunks[2].usageMetadata.candidatesTokenCount, 3);
  });

  test('streamGenerateContent without alt=sse streams a JSON array', async () => {
    const res = await post(`${mock.url}/v1beta/models/gemini-pro;chunks=3:streamGenerateContent`, geminiBody());
    assert.equal(res.headers.get('content-type'), 'application/json');
    const array = JSON.parse(await res.text());
    assert.equal(array.length, 3);
    assert.equal(array[2].candidates[0].finishReason, 'STOP');
  });

  test('errors and in-stream error', async () => {
    const statuses = { 400: 'INVALID_ARGUMENT', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND', 429: 'RESOURCE_EXHAUSTED', 500: 'INTERNAL', 503: 'UNAVAILABLE' };
    for (const [status, name] of Object.entries(statuses)) {
      const { res, json } = await postJson(`${mock.url}/v1beta/models/g:generateContent`, geminiBody(), { 'x-mock-status': status });
      assert.equal(res.status, Number(status));
      assert.deepEqual(Object.keys(json.error), ['code', 'message', 'status']);
      assert.equal(json.error.code, Number(status));
      assert.equal(json.error.status, name);
    }
    const res = await post(`${mock.url}/v1beta/models/g;error_after=1:streamGenerateContent?alt=sse`, geminiBody());
    const { events } = await readEvents(res, '\r\n\r\n');
    assert.equal(events.length, 2);
    assert.deepEqual(JSON.parse(events[1].raw.slice(6)), { error: { code: 500, message: '[mock] injected stream error', status: 'INTERNAL' } });
  });

  test('embedContent and batchEmbedContents', async () => {
    const one = (await postJson(`${mock.url}/v1beta/models/text-embedding-004:embedContent`, { content: { parts: [{ text: 'three' }] } })).json;
    assert.equal(one.embedding.values.length, 8);
    const batch = (await postJson(`${mock.url}/v1beta/models/text-embedding-004:batchEmbedContents`, {
      requests: [{ content: { parts: [{ text: 'three' }] } }, { content: { parts: [{ text: 'four' }] } }],
    })).json;
    assert.equal(batch.embeddings.length, 2);
    assert.deepEqual(batch.embeddings[0].values, one.embedding.values);
    // Same input, same vector, regardless of provider format.
    const openai = (await postJson(`${mock.url}/v1/embeddings`, { model: 'e', input: 'three' })).json;
    assert.deepEqual(openai.data[0].embedding, one.embedding.values);
  });
});

describe('Amazon Bedrock', () => {
  const bedrockBody = (extra = {}) => ({
    system: [{ text: 'Be brief.' }],
    messages: [{ role: 'user', content: [{ text: 'Say hi please' }] }],
    ...extra,
  });
  const PROMPT = 2 + 3 + 1;
  const MODEL = 'eu.anthropic.claude-sonnet-4-5-20250929-v1:0';
  const CREDS = { id: 'AKIAIOSFODNN7EXAMPLE', secret: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' };

  /** POSTs `body` SigV4-signed as the gateway signs (every header, host from the URL). */
  async function signedPost(url, body, { region = 'eu-central-1', service = 'bedrock', secret = CREDS.secret, token, headers: extra = {} } = {}) {
    const u = new URL(url);
    const text = JSON.stringify(body);
    const date = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
    const headers = {
      'content-type': 'application/json',
      'x-amz-date': date,
      'x-amz-content-sha256': createHash('sha256').update(text).digest('hex'),
      ...extra,
    };
    if (token) headers['x-amz-security-token'] = token;
    const names = [...Object.keys(headers), 'host'].sort();
    const signature = sigv4Signature({
      method: 'POST', rawPath: u.pathname, query: u.search.slice(1), headers: { ...headers, host: u.host },
      body: text, secret, date, region, service, signedHeaders: names.join(';'),
    });
    headers.authorization = `AWS4-HMAC-SHA256 Credential=${CREDS.id}/${date.slice(0, 8)}/${region}/${service}/aws4_request, SignedHeaders=${names.join(';')}, Signature=${signature}`;
    return fetch(url, { method: 'POST', headers, body: text });
  }

  /** An independent event stream decoder: checks both CRCs, keeps string headers. */
  function decodeEventStream(buf) {
    const crc = (b) => {
      let c = ~0;
      for (const x of b) {
        c ^= x;
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
      }
      return ~c >>> 0;
    };
    const out = [];
    let at = 0;
    while (at < buf.length) {
      const total = buf.readUInt32BE(at);
      const hlen = buf.readUInt32BE(at + 4);
      assert.equal(buf.readUInt32BE(at + 8), crc(buf.subarray(at, at + 8)), 'prelude CRC');
      assert.equal(buf.readUInt32BE(at + total - 4), crc(buf.subarray(at, at + total - 4)), 'message CRC');
      const headers = {};
      let h = at + 12;
      while (h < at + 12 + hlen) {
        const n = buf.readUInt8(h);
        const name = buf.toString('utf8', h + 1, h + 1 + n);
        assert.equal(buf.readUInt8(h + 1 + n), 7, 'string header');
        const len = buf.readUInt16BE(h + 2 + n);
        headers[name] = buf.toString('utf8', h + 4 + n, h + 4 + n + len);
        h += 4 + n + len;
      }
      out.push({ headers, payload: buf.toString('utf8', at + 12 + hlen, at + total - 4) });
      at += total;
    }
    return out;
  }

  const converse = (model = MODEL, stream = false) => `${mock.url}/model/${encodeURIComponent(model)}/${stream ? 'converse-stream' : 'converse'}`;

  test('the signer reproduces AWS Signature Version 4 test suite vectors', () => {
    const suite = { secret: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', date: '20150830T123600Z', region: 'us-east-1', service: 'service' };
    const host = 'example.amazonaws.com';
    // get-vanilla-query-order-key-case and post-x-www-form-urlencoded.
    assert.equal(
      sigv4Signature({ ...suite, method: 'GET', rawPath: '/', query: 'Param2=value2&Param1=value1', headers: { host, 'x-amz-date': suite.date }, body: '', signedHeaders: 'host;x-amz-date' }),
      'b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500',
    );
    assert.equal(
      sigv4Signature({
        ...suite, method: 'POST', rawPath: '/', headers: { host, 'x-amz-date': suite.date, 'content-type': 'application/x-www-form-urlencoded' },
        body: 'Param1=value1', signedHeaders: 'content-type;host;x-amz-date',
      }),
      'ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a',
    );
    // The hand-worked Bedrock request of src/aws/sigv4.rs: the model id's
    // encoded ':' is encoded again in the canonical URI.
    const body = '{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}';
    assert.equal(
      sigv4Signature({
        method: 'POST',
        rawPath: '/model/eu.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse',
        headers: {
          accept: 'application/json', 'content-type': 'application/json', host: 'bedrock-runtime.eu-central-1.amazonaws.com',
          'x-amz-content-sha256': createHash('sha256').update(body).digest('hex'), 'x-amz-date': '20261121T093015Z',
          'x-amz-security-token': 'FwoGZXIvYXdzEXAMPLETOKEN',
        },
        body, secret: CREDS.secret, date: '20261121T093015Z', region: 'eu-central-1', service: 'bedrock',
        signedHeaders: 'accept;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token',
      }),
      '5fbc5632e75d319a5065d2580b57661fe0ec6b6ef1a471831b84bce4aaf53065',
    );
  });

  test('converse: answer shape, usage, model id from the encoded path with directives', async () => {
    const res = await signedPost(converse(`${MODEL};cached=7`), bedrockBody());
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/json');
    assert.equal(res.headers.get('x-amzn-requestid'), `mock-${res.headers.get('x-mock-seq')}`);
    assert.deepEqual(await res.json(), {
      output: { message: { role: 'assistant', content: [{ text: DEFAULT_TEXT }] } },
      stopReason: 'end_turn',
      usage: { inputTokens: PROMPT, outputTokens: 4, totalTokens: PROMPT + 4, cacheReadInputTokens: 7, cacheWriteInputTokens: 0 },
      metrics: { latencyMs: 0 },
    });
    const rec = mock.requests.at(-1);
    assert.equal(rec.format, 'bedrock');
    assert.deepEqual(rec.directives, { cached: '7' });
    // An ARN (its ':' and '/' encoded) is one path segment.
    const arn = 'arn:aws:bedrock:eu-central-1:123456789012:inference-profile/eu.amazon.nova-pro-v1:0';
    const r = await signedPost(converse(arn), bedrockBody());
    assert.equal(r.status, 200);
    assert.equal(mock.requests.at(-1).path, `/model/${encodeURIComponent(arn)}/converse`);
  });

  test('tool use from toolConfig, finish mapping, usage=0', async () => {
    const toolConfig = { tools: [{ toolSpec: { name: 'lookup', inputSchema: { json: { type: 'object' } } } }] };
    const res = await signedPost(converse(`${MODEL};tools=2,text=Let me check.`), bedrockBody({ toolConfig }));
    const json = await res.json();
    assert.equal(json.stopReason, 'tool_use');
    assert.deepEqual(json.output.message.content, [
      { text: 'Let me check.' },
      { toolUse: { toolUseId: 'tooluse_mock_0', name: 'lookup', input: { city: 'Paris', call: 0 } } },
      { toolUse: { toolUseId: 'tooluse_mock_1', name: 'lookup', input: { city: 'Paris', call: 1 } } },
    ]);
    for (const [finish, stop] of [['length', 'max_tokens'], ['stop', 'end_turn'], ['content_filter', 'content_filtered']]) {
      const r = await signedPost(converse(`${MODEL};finish=${finish}`), bedrockBody());
      assert.equal((await r.json()).stopReason, stop);
    }
    const noUsage = await (await signedPost(converse(`${MODEL};usage=0`), bedrockBody())).json();
    assert.deepEqual(noUsage.usage, { inputTokens: PROMPT, outputTokens: 4, totalTokens: PROMPT + 4 });
  });

  test('converse-stream: binary event stream, exact event sequence, CRCs valid', async () => {
    const res = await signedPost(converse(`${MODEL};chunks=2,tools=1,echo=1,cached=3`, true), bedrockBody());
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/vnd.amazon.eventstream');
    const messages = decodeEventStream(Buffer.from(await res.arrayBuffer()));
    for (const m of messages) {
      assert.equal(m.headers[':message-type'], 'event');
      assert.equal(m.headers[':content-type'], 'application/json');
    }
    assert.deepEqual(messages.map((m) => m.headers[':event-type']), [
      'messageStart',
      'contentBlockDelta', 'contentBlockDelta', 'contentBlockStop',
      'contentBlockStart', 'contentBlockDelta', 'contentBlockDelta', 'contentBlockStop',
      'messageStop', 'metadata',
    ]);
    const data = messages.map((m) => JSON.parse(m.payload));
    for (const d of data) assert.equal(d.p, 'abcdefgh', 'padded like Bedrock');
    assert.equal(data[0].role, 'assistant');
    assert.equal(data[1].delta.text + data[2].delta.text, 'Say hi please');
    assert.deepEqual(data[4].start, { toolUse: { toolUseId: 'tooluse_mock_0', name: 'get_weather' } });
    assert.equal(data[4].contentBlockIndex, 1);
    assert.deepEqual(JSON.parse(data[5].delta.toolUse.input + data[6].delta.toolUse.input), { city: 'Paris', call: 0 });
    assert.equal(data[8].stopReason, 'tool_use');
    assert.deepEqual(data[9].usage, { inputTokens: PROMPT, outputTokens: 4, totalTokens: PROMPT + 4, cacheReadInputTokens: 3, cacheWriteInputTokens: 0 });
  });

  test('errors: status, x-amzn-errortype and a {message} body', async () => {
    for (const [status, type] of [[429, 'ThrottlingException'], [400, 'ValidationException'], [424, 'ModelErrorException'], [503, 'ServiceUnavailableException'], [500, 'InternalServerException']]) {
      const res = await signedPost(converse(`${MODEL};status=${status},retry_after=3`), bedrockBody());
      assert.equal(res.status, status);
      assert.equal(res.headers.get('x-amzn-errortype'), `${type}:http://internal.amazon.com/coral/com.amazon.bedrock/`);
      assert.equal(res.headers.get('retry-after'), '3');
      assert.deepEqual(Object.keys(await res.json()), ['message']);
    }
  });

  test('SigV4: missing, malformed, wrong service or region are 403s; sigv4=0 skips the check', async () => {
    const unsigned = await post(converse(), bedrockBody());
    assert.equal(unsigned.status, 403);
    assert.match(unsigned.headers.get('x-amzn-errortype'), /^MissingAuthenticationTokenException:/);
    const malformed = await post(converse(), bedrockBody(), { authorization: 'Bearer abc', 'x-amz-date': '20250101T000000Z' });
    assert.equal(malformed.status, 403);
    assert.match(malformed.headers.get('x-amzn-errortype'), /^IncompleteSignatureException:/);
    const wrongService = await signedPost(converse(), bedrockBody(), { service: 's3' });
    assert.equal(wrongService.status, 403);
    assert.match((await wrongService.json()).message, /scoped to correct service: 'bedrock'/);
    // region= pins the credential scope's region.
    const pinned = `${mock.url}/_mock/region=eu-central-1/model/${encodeURIComponent(MODEL)}/converse`;
    assert.equal((await signedPost(pinned, bedrockBody(), { region: 'eu-central-1' })).status, 200);
    const wrongRegion = await signedPost(pinned, bedrockBody(), { region: 'us-east-1' });
    assert.equal(wrongRegion.status, 403);
    assert.match(wrongRegion.headers.get('x-amzn-errortype'), /^InvalidSignatureException:/);
    // Session tokens must be signed; a signed one passes.
    assert.equal((await signedPost(converse(), bedrockBody(), { token: 'FwoGZXIvYXdzEXAMPLE' })).status, 200);
    assert.equal((await post(`${mock.url}/_mock/sigv4=0/model/m/converse`, bedrockBody())).status, 200);
  });

  test('SigV4: with aws_secret the signature itself is verified', async () => {
    const url = `${mock.url}/_mock/aws_secret=${encodeURIComponent(CREDS.secret)},region=eu-central-1/model/${encodeURIComponent(MODEL)}/converse-stream`;
    const good = await signedPost(url, bedrockBody(), { headers: { accept: 'application/vnd.amazon.eventstream' } });
    assert.equal(good.status, 200);
    assert.equal(decodeEventStream(Buffer.from(await good.arrayBuffer())).at(-1).headers[':event-type'], 'metadata');
    const bad = await signedPost(url, bedrockBody(), { secret: 'not-the-secret' });
    assert.equal(bad.status, 403);
    assert.match((await bad.json()).message, /signature we calculated does not match/);
  });

  test('stream faults: error_after sends an exception, malformed a non-JSON event, bad_crc a corrupt frame, cut_after drops', async () => {
    const read = async (directives) => Buffer.from(await (await signedPost(converse(`${MODEL};${directives}`, true), bedrockBody())).arrayBuffer());
    let messages = decodeEventStream(await read('error_after=1'));
    assert.deepEqual(messages.map((m) => m.headers[':event-type'] ?? m.headers[':exception-type']), ['messageStart', 'contentBlockDelta', 'internalServerException']);
    assert.equal(messages.at(-1).headers[':message-type'], 'exception');
    assert.deepEqual(JSON.parse(messages.at(-1).payload), { message: '[mock] injected stream error' });
    messages = decodeEventStream(await read('error_after=0,exception=throttlingException'));
    assert.deepEqual(messages.map((m) => m.headers[':event-type'] ?? m.headers[':exception-type']), ['messageStart', 'throttlingException']);
    messages = decodeEventStream(await read('malformed=1'));
    assert.equal(messages[2].payload, '{"broken json');
    assert.equal(messages.at(-1).headers[':event-type'], 'metadata');
    const corrupt = await read('bad_crc=1');
    assert.throws(() => decodeEventStream(corrupt), /message CRC/);
    const res = await signedPost(converse(`${MODEL};chunks=5,cut_after=2`, true), bedrockBody());
    await assert.rejects(res.arrayBuffer());
  });
});

describe('Google Vertex AI', () => {
  const PROJECT = '/v1/projects/p/locations/europe-west4/publishers';
  let account;
  before(() => {
    account = googleServiceAccount(`${mock.url}/token`);
    mock.addGoogleKey(account.email, account.publicKey);
  });

  /** A JWT as the gateway makes it, signed with `key` (PKCS #8 PEM). */
  function jwt(key, claims = {}) {
    const now = Math.floor(Date.now() / 1000);
    const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const input = `${part({ alg: 'RS256', typ: 'JWT', kid: 'mock-key-1' })}.${part({
      iss: account.email, scope: 'https://www.googleapis.com/auth/cloud-platform',
      aud: `${mock.url}/token`, iat: now, exp: now + 3600, ...claims,
    })}`;
    return `${input}.${createSign('RSA-SHA256').update(input).sign(key).toString('base64url')}`;
  }

  async function exchange(assertion) {
    const res = await fetch(`${mock.url}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `grant_type=${encodeURIComponent('urn:ietf:params:oauth:grant-type:jwt-bearer')}&assertion=${assertion}`,
    });
    return { status: res.status, json: await res.json() };
  }

  test('the token endpoint issues a token for a JWT signed by a registered key', async () => {
    const key = JSON.parse(account.json).private_key;
    const { status, json } = await exchange(jwt(key));
    assert.equal(status, 200);
    assert.match(json.access_token, /^ya29\.mock-\d+$/);
    assert.equal(json.expires_in, 3599);
    assert.equal(json.token_type, 'Bearer');
  });

  test('the token endpoint refuses a foreign signature, a wrong audience or an old JWT', async () => {
    const stranger = JSON.parse(googleServiceAccount('x').json).private_key;
    const own = JSON.parse(account.json).private_key;
    for (const [assertion, why] of [
      [jwt(stranger), 'Invalid JWT Signature.'],
      [jwt(own, { aud: 'https://oauth2.googleapis.com/token' }), 'aud'],
      [jwt(own, { iat: 1, exp: 3601 }), 'short-lived'],
      [jwt(own, { iss: 'nobody@x' }), 'unknown service account'],
    ]) {
      const { status, json } = await exchange(assertion);
      assert.equal(status, 400);
      assert.equal(json.error, 'invalid_grant');
      assert.ok(json.error_description.includes(why), json.error_description);
    }
  });

  test('Vertex routes need an issued token; Gemini and Claude answer with one', async () => {
    const body = { contents: [{ role: 'user', parts: [{ text: 'hi' }] }] };
    const denied = await postJson(`${mock.url}${PROJECT}/google/models/gemini-2.5-flash:generateContent`, body);
    assert.equal(denied.res.status, 401);
    assert.equal(denied.json.error.status, 'UNAUTHENTICATED');

    const { json: token } = await exchange(jwt(JSON.parse(account.json).private_key));
    const auth = { authorization: `Bearer ${token.access_token}` };
    const gemini = await postJson(`${mock.url}${PROJECT}/google/models/gemini-2.5-flash:generateContent`, body, auth);
    assert.equal(gemini.res.status, 200);
    assert.equal(gemini.json.candidates[0].content.parts[0].text, DEFAULT_TEXT);

    const messages = { anthropic_version: 'vertex-2023-10-16', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] };
    const claude = await postJson(`${mock.url}${PROJECT}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict`, messages, auth);
    assert.equal(claude.res.status, 200);
    assert.equal(claude.json.model, 'claude-sonnet-4-5@20250929');
    assert.equal(claude.json.content[0].text, DEFAULT_TEXT);

    const stream = await post(`${mock.url}${PROJECT}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict`, { ...messages, stream: true }, auth);
    assert.equal(stream.headers.get('content-type'), 'text/event-stream');
    const { events } = await readEvents(stream);
    assert.equal(sseFields(events.at(-1).raw).event, 'message_stop');

    for (const [bad, why] of [
      [{ ...messages, anthropic_version: undefined }, 'anthropic_version'],
      [{ ...messages, model: 'claude' }, 'model'],
    ]) {
      const r = await postJson(`${mock.url}${PROJECT}/anthropic/models/claude:rawPredict`, bad, auth);
      assert.equal(r.res.status, 400);
      assert.ok(r.json.error.message.startsWith(why), r.json.error.message);
    }
  });
});

describe('faults', () => {
  const url = () => `${mock.url}/v1/chat/completions`;

  test('cut_after truncates a stream: N content events, no finish, no [DONE]', async () => {
    const res = await post(url(), userChat({ stream: true, model: 'gpt-4o;chunks=5,cut_after=2' }));
    assert.equal(res.status, 200);
    const { events, error } = await readEvents(res);
    assert.ok(error, 'the body must end in a network error');
    assert.deepEqual(events.map((e) => jsonOf(e).choices[0].delta), [{ role: 'assistant', content: '' }, { content: 'Hello' }, { content: ' from ' }]);
  });

  test('cut_after=0 cuts before the first content event', async () => {
    const res = await post(`${mock.url}/v1/messages`, { model: 'c;cut_after=0', stream: true, messages: [] });
    const { events, error } = await readEvents(res);
    assert.ok(error);
    assert.deepEqual(events.map((e) => sseFields(e.raw).event), ['message_start', 'ping', 'content_block_start']);
  });

  test('cut_after on a non-stream response sends half the body and drops', async () => {
    const res = await post(url(), userChat(), { 'x-mock-cut-after': '1' });
    assert.equal(res.status, 200);
    const promised = Number(res.headers.get('content-length'));
    const { events, rest, error } = await readEvents(res);
    assert.ok(error);
    assert.equal(events.length, 0);
    assert.equal(rest.length, promised >> 1);
    assert.ok(rest.startsWith('{"id":"chatcmpl-mock-'));
  });

  test('malformed inserts one broken event after the first content event', async () => {
    const res = await post(url(), userChat({ stream: true }), { 'x-mock-malformed': '1' });
    const { events, error } = await readEvents(res);
    assert.equal(error, null);
    assert.equal(events[2].raw, 'data: {"broken json');
    assert.equal(events.length, 1 + 4 + 1 + 1 + 1);
    assert.equal(dataOf(events.at(-1)), '[DONE]');
  });

  test('invalid_json returns a 200 non-JSON body', async () => {
    const res = await post(url(), userChat(), { 'x-mock-invalid-json': '1' });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/json');
    assert.equal(await res.text(), '{"id": invalid');
  });

  test('error_after in an OpenAI stream: error chunk, no [DONE]', async () => {
    const res = await post(url(), userChat({ stream: true, model: 'gpt-4o;error_after=1' }));
    const { events, error } = await readEvents(res);
    assert.equal(error, null);
    assert.equal(events.length, 3);
    assert.deepEqual(jsonOf(events[2]), { error: { message: '[mock] injected stream error', type: 'server_error', code: null, param: null } });
  });

  test('interval_ms spaces content events in time', async () => {
    // Measured against the request start: a busy client can only see events
    // late, never early, so lower bounds hold even on a loaded machine.
    const interval = 100;
    const start = performance.now();
    const res = await post(url(), userChat({ stream: true, model: `gpt-4o;interval_ms=${interval}` }));
    const { events } = await readEvents(res);
    const offsets = events.slice(1, 5).map((e) => e.at - start);
    assert.ok(offsets[0] < interval, `first content event is not delayed (${offsets[0].toFixed(1)} ms)`);
    offsets.forEach((at, i) => assert.ok(at >= i * interval - 2, `content event ${i} at ${at.toFixed(1)} ms`));
    assert.ok(offsets[3] < 3 * interval + 250, `last content event at ${offsets[3].toFixed(1)} ms`);
  });

  test('headers_delay_ms delays the status line', async () => {
    const start = performance.now();
    const res = await post(url(), userChat(), { 'x-mock-headers-delay-ms': '200' });
    assert.ok(performance.now() - start >= 190);
    assert.equal(res.status, 200);
    await res.json();
  });

  test('first_byte_delay_ms sends headers at once and the body later', async () => {
    const start = performance.now();
    const res = await post(url(), userChat(), { 'x-mock-first-byte-delay-ms': '300' });
    const headersAt = performance.now() - start;
    assert.ok(headersAt < 150, `headers after ${headersAt} ms`);
    await res.json();
    assert.ok(performance.now() - start >= 290);
  });

  test('fail_first fails N times per directive set, reset clears counters', async () => {
    const failing = `${mock.url}/_mock/fail_first=2,status=429,retry_after=1/v1/chat/completions`;
    const statuses = [];
    for (let i = 0; i < 4; i++) {
      const res = await post(failing, userChat());
      statuses.push(res.status);
      if (res.status === 429) assert.equal(res.headers.get('retry-after'), '1');
      await res.arrayBuffer();
    }
    assert.deepEqual(statuses, [429, 429, 200, 200]);
    // A different directive set has its own counter, with 503 as the default status.
    const other = await post(`${mock.url}/_mock/fail_first=1/v1/chat/completions`, userChat());
    assert.equal(other.status, 503);
    await other.arrayBuffer();
    const reset = await fetch(`${mock.url}/_control/reset`, { method: 'POST' });
    assert.deepEqual(await reset.json(), { ok: true });
    const again = await post(failing, userChat());
    assert.equal(again.status, 429);
    await again.arrayBuffer();
  });
});

describe('directives and recording', () => {
  test('precedence: path prefix < model suffix < x-mock-* header', async () => {
    const url = `${mock.url}/_mock/status=500,chunks=2/v1/chat/completions`;
    assert.equal((await post(url, userChat())).status, 500);
    assert.equal((await post(url, userChat({ model: 'gpt-4o;status=429' }))).status, 429);
    const res = await post(url, userChat({ model: 'gpt-4o;status=429' }), { 'x-mock-status': '200' });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).usage.completion_tokens, 2); // chunks still from the path
    const seq = Number(res.headers.get('x-mock-seq'));
    const rec = mock.requests.find((r) => r.seq === seq);
    assert.deepEqual(rec.directives, { status: '200', chunks: '2' });
  });

  test('path directive values are URL-decoded', async () => {
    const res = await post(`${mock.url}/_mock/text=${encodeURIComponent('a, b=c')}/v1/chat/completions`, userChat());
    assert.equal((await res.json()).choices[0].message.content, 'a, b=c');
  });

  test('records every request, including faulted ones, but not control routes', async () => {
    const own = await startMock({ maxRequests: 3 });
    try {
      const res = await post(`${own.url}/_mock/status=503/v1/chat/completions?api-version=1`, userChat(), { 'X-Custom': 'yes' });
      assert.equal(res.status, 503);
      await res.arrayBuffer();
      assert.equal(own.requests.length, 1);
      const rec = own.requests[0];
      assert.deepEqual(Object.keys(rec), ['seq', 't', 'method', 'path', 'rawPath', 'query', 'headers', 'body', 'rawBody', 'directives', 'format']);
      assert.equal(rec.seq, 1);
      assert.ok(Math.abs(rec.t - Date.now()) < 5000);
      assert.equal(rec.method, 'POST');
      assert.equal(rec.path, '/v1/chat/completions');
      assert.equal(rec.rawPath, '/_mock/status=503/v1/chat/completions');
      assert.deepEqual(rec.query, { 'api-version': '1' });
      assert.equal(rec.headers['x-custom'], 'yes');
      assert.deepEqual(rec.body, userChat());
      assert.deepEqual(rec.directives, { status: '503' });
      assert.equal(rec.format, 'openai');

      // Control routes are not recorded; HTTP view matches the in-process one.
      assert.deepEqual(await (await fetch(`${own.url}/_control/health`)).json(), { ok: true });
      assert.deepEqual(await (await fetch(`${own.url}/_control/requests`)).json(), JSON.parse(JSON.stringify(own.requests)));

      // Non-JSON and oversized bodies.
      await (await post(`${own.url}/v1/messages`, 'not json')).arrayBuffer();
      assert.equal(own.requests.at(-1).body, 'not json');
      const big = 'x'.repeat(70 * 1024);
      await (await post(`${own.url}/v1/chat/completions`, { model: 'm', messages: [{ role: 'user', content: big }] })).arrayBuffer();
      assert.equal(own.requests.at(-1).body.truncated, true);
      assert.ok(own.requests.at(-1).body.length > 70 * 1024);

      // Cap drops the oldest; since= filters by seq.
      await (await fetch(`${own.url}/v1/models`)).arrayBuffer();
      assert.deepEqual(own.requests.map((r) => r.seq), [2, 3, 4]);
      const since = await (await fetch(`${own.url}/_control/requests?since=3`)).json();
      assert.deepEqual(since.map((r) => [r.seq, r.format]), [[4, 'models']]);

      // DELETE clears (same array object), seq keeps counting.
      const arrayRef = own.requests;
      assert.deepEqual(await (await fetch(`${own.url}/_control/requests`, { method: 'DELETE' })).json(), { ok: true });
      assert.equal(own.requests, arrayRef);
      assert.equal(own.requests.length, 0);
      await (await fetch(`${own.url}/v1/models`)).arrayBuffer();
      own.clear();
      assert.equal(own.requests.length, 0);
      await (await fetch(`${own.url}/v1/models`)).arrayBuffer();
      assert.equal(own.requests[0].seq, 6);
    } finally {
      await own.close();
    }
  });
});

describe('lifecycle', () => {
  test('drip keeps streaming until close(), which still returns promptly', async () => {
    const own = await startMock();
    try {
      const res = await post(`${own.url}/v1/chat/completions`, userChat({ stream: true, model: 'gpt-4o;drip=1,interval_ms=10' }));
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let text = '';
      while ((text.match(/"content":"/g) ?? []).length < 12) {
        const { value, done } = await reader.read();
        assert.equal(done, false, 'a drip never ends on its own');
        text += decoder.decode(value, { stream: true });
      }
      assert.ok(text.includes('" drip'));
      const start = performance.now();
      await own.close();
      assert.ok(performance.now() - start < 500, 'close() must not wait for the drip');
      await assert.rejects(async () => {
        for (;;) if ((await reader.read()).done) break;
      });
    } finally {
      await own.close();
    }
  });

  test('drip stops its timer when the client disconnects', async () => {
    const own = await startMock();
    try {
      const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
      const baseline = timers();
      const ac = new AbortController();
      const res = await fetch(`${own.url}/v1/messages`, {
        method: 'POST',
        body: JSON.stringify({ model: 'c;drip=1,interval_ms=50', stream: true, messages: [] }),
        signal: ac.signal,
      });
      const reader = res.body.getReader();
      await reader.read();
      assert.ok(timers() > baseline, 'the drip is waiting on a timer');
      ac.abort();
      await reader.read().catch(() => {});
      await sleep(20);
      assert.equal(timers(), baseline, 'the drip timer was cancelled');
    } finally {
      await own.close();
    }
  });

  test('close() ends idle keep-alive connections at once', async () => {
    const own = await startMock();
    await (await fetch(`${own.url}/v1/models`)).arrayBuffer(); // leaves a pooled connection
    const start = performance.now();
    await own.close();
    assert.ok(performance.now() - start < 500);
  });

  test('CLI prints one {"port":N} line and exits cleanly on SIGTERM', async () => {
    const child = spawn(process.execPath, [SERVER_PATH, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let stdout = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (s) => (stdout += s));
      while (!stdout.includes('\n')) await once(child.stdout, 'data');
      const { port } = JSON.parse(stdout);
      assert.ok(Number.isInteger(port) && port > 0);
      assert.deepEqual(await (await fetch(`http://127.0.0.1:${port}/_control/health`)).json(), { ok: true });
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const [code, signal] = await exited;
      assert.equal(code, 0);
      assert.equal(signal, null);
      assert.equal(stdout, `{"port":${port}}\n`);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
