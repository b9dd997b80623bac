// The official `openai` npm package against the gateway: the same chat,
// stream, tools and embeddings checks as tests/sdk/test_openai_sdk.py, and
// the Responses API (`responses.create`, `responses.stream`, a
// function-calling round trip) against an OpenAI target (passed through)
// and translated targets.
//
// Run by tests/e2e/sdk.test.mjs as `node --test tests/sdk/openai_sdk.mjs`,
// with the config that file puts (its model list is in test_openai_sdk.py's
// docstring, plus `sdk-native` and `sdk-<format>-loop`). Environment:
// GATEWAY_URL (required) and GATEWAY_KEY.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import OpenAI from 'openai';

const SDK_TEXT = 'Hello from the SDK check';
const FORMATS = ['openai', 'anthropic', 'gemini'];
const CHAT_MODELS = { ...Object.fromEntries(FORMATS.map((f) => [f, `sdk-${f}`])), demo: 'demo' };
const EMBEDDING_MODELS = { openai: 'sdk-emb-openai', gemini: 'sdk-emb-gemini', demo: 'demo' };
const TOOLS = ['get_weather', 'get_time'].map((name) => ({
  type: 'function',
  function: { name, description: `${name} of a city`, parameters: { type: 'object', properties: { city: { type: 'string' } } } },
}));

const client = new OpenAI({
  baseURL: `${process.env.GATEWAY_URL.replace(/\/$/, '')}/v1`,
  apiKey: process.env.GATEWAY_KEY ?? 'sk-test-1',
  maxRetries: 0,
  timeout: 30_000,
});

function expectedText(fmt, prompt) {
  return fmt === 'demo' ? `Hello from the gateway's built-in demo model. You said: "${prompt}"` : SDK_TEXT;
}

// ---- Chat completions ------------------------------------------------------------

test('chat: completion and usage', async () => {
  for (const [fmt, model] of Object.entries(CHAT_MODELS)) {
    const resp = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'ping' }] });
    const choice = resp.choices[0];
    assert.equal(choice.message.role, 'assistant');
    assert.equal(choice.message.content, expectedText(fmt, 'ping'), fmt);
    assert.equal(choice.finish_reason, 'stop');
    assert.ok(resp.usage.prompt_tokens > 0 && resp.usage.completion_tokens > 0);
    assert.equal(resp.usage.total_tokens, resp.usage.prompt_tokens + resp.usage.completion_tokens);
  }
});

test('chat: a stream concatenates and reports usage only when asked', async () => {
  for (const [fmt, model] of Object.entries(CHAT_MODELS)) {
    const messages = [{ role: 'user', content: 'pong' }];
    const chunks = [];
    for await (const c of await client.chat.completions.create({ model, messages, stream: true })) chunks.push(c);
    assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), expectedText(fmt, 'pong'), fmt);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.ok(chunks.every((c) => !c.usage));
    const withUsage = [];
    const stream = await client.chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true } });
    for await (const c of stream) withUsage.push(c);
    const last = withUsage.at(-1);
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage.completion_tokens > 0, fmt);
  }
});

test('chat: parallel tool calls, whole and through the SDK\'s stream accumulator', async () => {
  for (const fmt of FORMATS) {
    const params = { model: `sdk-${fmt}-tools`, messages: [{ role: 'user', content: 'Weather and time in Paris?' }], tools: TOOLS };
    const whole = await client.chat.completions.create(params);
    const stream = client.chat.completions.stream(params);
    const streamed = await stream.finalChatCompletion();
    for (const resp of [whole, streamed]) {
      const choice = resp.choices[0];
      assert.equal(choice.finish_reason, 'tool_calls', fmt);
      const calls = choice.message.tool_calls;
      assert.equal(calls.length, 2);
      assert.equal(new Set(calls.map((c) => c.id)).size, 2);
      calls.forEach((call, i) => {
        assert.equal(call.function.name, TOOLS[i].function.name);
        assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris', call: i });
      });
    }
  }
});

test('embeddings: base64 underneath, floats for the caller', async () => {
  const inputs = ['first text', 'second text'];
  for (const [fmt, model] of Object.entries(EMBEDDING_MODELS)) {
    const byDefault = await client.embeddings.create({ model, input: inputs });
    const floats = await client.embeddings.create({ model, input: inputs, encoding_format: 'float' });
    assert.deepEqual(byDefault.data.map((d) => d.index), [0, 1], fmt);
    byDefault.data.forEach((d, i) => {
      assert.ok(Array.isArray(d.embedding) && d.embedding.length > 0);
      d.embedding.forEach((v, j) => assert.ok(Math.abs(v - floats.data[i].embedding[j]) <= 1e-6 * Math.max(1, Math.abs(v))));
    });
    assert.ok(byDefault.usage.prompt_tokens > 0);
  }
  await assert.rejects(client.embeddings.create({ model: 'sdk-emb-anthropic', input: 'x' }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'model');
});

test('errors are the SDK\'s exceptions', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found',
  );
  const bad = new OpenAI({ baseURL: client.baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: 'demo', messages: [{ role: 'user', content: 'x' }] }), OpenAI.AuthenticationError);
});

// ---- Responses (once /v1/responses is wired) --------------------------------------

/** OpenAI's own Responses API (passed through), and translated targets. */
const RESPONSES_MODELS = { native: 'sdk-native', openai: 'sdk-openai', anthropic: 'sdk-anthropic', gemini: 'sdk-gemini' };
const FUNCTION_TOOL = {
  type: 'function',
  name: 'get_weather',
  description: 'Weather of a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  strict: false,
};

{
  test('responses.create: plain text over every target', async () => {
    for (const [target, model] of Object.entries(RESPONSES_MODELS)) {
      const r = await client.responses.create({ model, input: 'ping', instructions: 'Be brief.' });
      assert.equal(r.object, 'response', target);
      assert.equal(r.status, 'completed');
      assert.equal(r.output_text, SDK_TEXT, target);
      assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
    }
  });

  test('responses.stream: deltas, events and the final response', async () => {
    for (const [target, model] of Object.entries(RESPONSES_MODELS)) {
      const stream = client.responses.stream({ model, input: 'pong' });
      let text = '';
      const kinds = [];
      stream.on('response.output_text.delta', (e) => { text += e.delta; });
      stream.on('event', (e) => kinds.push(e.type));
      const final = await stream.finalResponse();
      assert.equal(text, SDK_TEXT, target);
      assert.equal(final.output_text, SDK_TEXT);
      assert.equal(kinds[0], 'response.created');
      assert.equal(kinds.at(-1), 'response.completed');
    }
  });

  test('responses: a function-calling round trip, created and streamed', async () => {
    for (const [target, base] of Object.entries(RESPONSES_MODELS)) {
      const model = `${base}-loop`;
      const question = { role: 'user', content: 'Weather in Paris?' };
      const first = await client.responses.create({ model, input: [question], tools: [FUNCTION_TOOL] });
      const call = first.output.find((o) => o.type === 'function_call');
      assert.ok(call, `${target}: ${JSON.stringify(first.output)}`);
      assert.equal(call.name, 'get_weather');
      assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris', call: 0 });
      // Streamed: the arguments arrive as deltas and add up.
      const stream = client.responses.stream({ model, input: [question], tools: [FUNCTION_TOOL] });
      let args = '';
      stream.on('response.function_call_arguments.delta', (e) => { args += e.delta; });
      const streamed = await stream.finalResponse();
      assert.deepEqual(JSON.parse(args), { city: 'Paris', call: 0 }, target);
      assert.ok(streamed.output.some((o) => o.type === 'function_call'));
      const second = await client.responses.create({
        model,
        tools: [FUNCTION_TOOL],
        input: [
          question,
          { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments },
          { type: 'function_call_output', call_id: call.call_id, output: 'sunny' },
        ],
      });
      assert.equal(second.output_text, 'Tool result: sunny', target);
    }
  });

  test('responses: errors are the SDK\'s exceptions', async () => {
    const bad = new OpenAI({ baseURL: client.baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
    await assert.rejects(bad.responses.create({ model: 'sdk-native', input: 'x' }), OpenAI.AuthenticationError);
    await assert.rejects(
      client.responses.create({ model: 'sdk-anthropic', input: 'x', previous_response_id: 'resp_1' }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === 'previous_response_id',
    );
  });
}
