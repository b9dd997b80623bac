// The regional providers end to end, against the mock provider: Amazon
// Bedrock (SigV4 verified with the secret key), Google Vertex AI (Gemini and
// Claude, with a service account whose RS256 JWT the mock's token endpoint
// verifies, then the token it issued) and Workers AI's OpenAI-compatible REST
// endpoint. Streamed and not, tool calls, and what the upstream received.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { googleServiceAccount, startMock } from '../mock/server.mjs';
import { startGateway, chat, ask, readSSE, streamText, putConfig } from './harness.mjs';

let mock;
let gw;
let account;

const AWS_SECRET = 'mock-aws-secret-key/EXAMPLEKEY';
const CF_TOKEN = 'cf-mock-api-token-0123456789';
const TEXT = 'Hello from a regional provider';

/** Public model -> [provider, provider-side model]. */
const MODELS = {
  bedrock: ['bedrock-eu', `eu.anthropic.claude-sonnet-4-5-20250929-v1:0;text=${TEXT},chunks=4,region=eu-central-1,aws_secret=${AWS_SECRET}`],
  'vertex-gemini': ['vertex-eu', `gemini-2.5-flash;text=${TEXT},chunks=4`],
  'vertex-claude': ['vertex-eu', `claude-sonnet-4-5@20250929;text=${TEXT},chunks=4`],
  'vertex-global': ['vertex-global', `gemini-2.5-pro;text=${TEXT}`],
  'workers-ai': ['workers-ai', `@cf/meta/llama-3.3-70b-instruct-fp8-fast;text=${TEXT},chunks=4`],
};

before(async () => {
  mock = await startMock();
  account = googleServiceAccount(`${mock.url}/token`);
  mock.addGoogleKey(account.email, account.publicKey);
  gw = await startGateway({
    vars: {
      AWS_ACCESS_KEY_ID: 'AKIAMOCKEXAMPLE',
      AWS_SECRET_ACCESS_KEY: AWS_SECRET,
      GOOGLE_SERVICE_ACCOUNT_JSON: account.json,
      CLOUDFLARE_API_TOKEN: CF_TOKEN,
    },
  });
  const models = {};
  for (const [name, [provider, model]] of Object.entries(MODELS)) {
    models[name] = { targets: [{ provider, model }] };
    const bare = model.split(';')[0];
    models[`${name}-tools`] = { targets: [{ provider, model: `${bare};tools=2,chunks=3${model.includes('aws_secret') ? `,aws_secret=${AWS_SECRET}` : ''}` }] };
  }
  const res = await putConfig(gw, {
    version: 1,
    revision: 'regional-e2e',
    providers: {
      'bedrock-eu': { kind: 'bedrock', region: 'eu-central-1', base_url: mock.url },
      'vertex-eu': { kind: 'vertex', region: 'europe-west4', project: 'mock-project', base_url: mock.url },
      'vertex-global': { kind: 'vertex', region: 'global', project: 'mock-project', base_url: mock.url },
      'workers-ai': { kind: 'workers-ai', account_id: 'acc0123', base_url: `${mock.url}/client/v4/accounts/acc0123/ai/v1` },
    },
    models,
  });
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

async function body(res, status = 200) {
  const text = await res.text();
  assert.equal(res.status, status, text);
  return JSON.parse(text);
}

const since = () => mock.requests.at(-1)?.seq ?? 0;
const after_ = (seq) => mock.requests.filter((r) => r.seq > seq);

for (const name of Object.keys(MODELS)) {
  test(`${name}: a whole answer, usage and the serving provider`, async () => {
    const res = await chat(gw, ask(name, 'bonjour'));
    const json = await body(res);
    assert.equal(json.object, 'chat.completion');
    assert.equal(json.choices[0].message.content, TEXT);
    assert.equal(json.choices[0].finish_reason, 'stop');
    assert.ok(json.usage.prompt_tokens > 0 && json.usage.completion_tokens > 0, JSON.stringify(json.usage));
    assert.equal(res.headers.get('x-gateway-provider'), MODELS[name][0]);
  });

  test(`${name}: a stream, chunk by chunk, with usage when asked`, async () => {
    const res = await chat(gw, ask(name, 'bonjour', { stream: true, stream_options: { include_usage: true } }));
    assert.equal(res.status, 200);
    const events = await readSSE(res);
    assert.equal(streamText(events), TEXT);
    assert.equal(events.at(-1).data, '[DONE]');
    const usage = events.at(-2).json.usage;
    assert.ok(usage.completion_tokens > 0, JSON.stringify(usage));
  });

  test(`${name}: tool calls come back as OpenAI tool_calls`, async () => {
    const tools = ['get_weather', 'get_time'].map((n) => ({ type: 'function', function: { name: n, parameters: { type: 'object', properties: { city: { type: 'string' } } } } }));
    const json = await body(await chat(gw, ask(`${name}-tools`, 'weather?', { tools })));
    const calls = json.choices[0].message.tool_calls;
    assert.equal(calls.length, 2);
    assert.deepEqual(calls.map((c) => c.function.name), ['get_weather', 'get_time']);
    assert.deepEqual(JSON.parse(calls[1].function.arguments), { city: 'Paris', call: 1 });
    assert.equal(json.choices[0].finish_reason, 'tool_calls');
  });
}

test('vertex: one token exchange (a verified RS256 JWT) serves Gemini and Claude', async () => {
  const tokenRequests = mock.requests.filter((r) => r.format === 'google-token');
  assert.equal(tokenRequests.length, 1, 'the token is cached by the isolate');
  const assertion = new URLSearchParams(tokenRequests[0].body).get('assertion');
  const claims = JSON.parse(Buffer.from(assertion.split('.')[1], 'base64url').toString());
  assert.equal(claims.iss, account.email);
  assert.equal(claims.aud, `${mock.url}/token`);
  assert.equal(claims.scope, 'https://www.googleapis.com/auth/cloud-platform');
  assert.equal(claims.exp - claims.iat, 3600);
});

test('vertex: the upstream sees the regional resource path, the bearer token and the body fields', async () => {
  const seq = since();
  await body(await chat(gw, ask('vertex-claude', 'hi', { max_tokens: 20 })));
  await body(await chat(gw, ask('vertex-gemini', 'hi')));
  await body(await chat(gw, ask('vertex-global', 'hi')));
  const [claude, gemini, global] = after_(seq);
  assert.ok(claude.path.startsWith('/v1/projects/mock-project/locations/europe-west4/publishers/anthropic/models/claude-sonnet-4-5@20250929;'), claude.path);
  assert.ok(claude.path.endsWith(':rawPredict'), claude.path);
  assert.equal(claude.body.anthropic_version, 'vertex-2023-10-16');
  assert.equal(claude.body.model, undefined);
  assert.equal(claude.body.max_tokens, 20);
  assert.match(claude.headers.authorization, /^Bearer ya29\.mock-\d+$/);
  assert.ok(gemini.path.startsWith('/v1/projects/mock-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash'));
  assert.ok(gemini.path.endsWith(':generateContent'));
  assert.equal(gemini.body.contents[0].parts[0].text, 'hi');
  assert.ok(global.path.startsWith('/v1/projects/mock-project/locations/global/publishers/google/'));
});

test('bedrock: the request is SigV4-signed for eu-central-1 and the mock verified it', async () => {
  const seq = since();
  await body(await chat(gw, ask('bedrock', 'hi')));
  const [r] = after_(seq);
  assert.match(r.headers.authorization, /^AWS4-HMAC-SHA256 Credential=AKIAMOCKEXAMPLE\/\d{8}\/eu-central-1\/bedrock\/aws4_request/);
  assert.ok(r.path.endsWith('/converse'));
});

test('workers-ai: the REST preset posts to the account\'s OpenAI-compatible path with the API token', async () => {
  const seq = since();
  await body(await chat(gw, ask('workers-ai', 'hi')));
  const [r] = after_(seq);
  assert.equal(r.path, '/client/v4/accounts/acc0123/ai/v1/chat/completions');
  assert.equal(r.headers.authorization, `Bearer ${CF_TOKEN}`);
  assert.equal(r.body.model, MODELS['workers-ai'][1]);
});

/** POST to another client protocol's endpoint with the test key. */
function post(path, body) {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': 'sk-test-1', authorization: 'Bearer sk-test-1' },
    body: JSON.stringify(body),
  });
}

for (const name of ['bedrock', 'vertex-claude', 'vertex-gemini', 'workers-ai']) {
  test(`${name}: Anthropic Messages and OpenAI Responses clients are served too, streamed and not`, async () => {
    const msg = { model: name, max_tokens: 50, messages: [{ role: 'user', content: 'bonjour' }] };
    const whole = await body(await post('/v1/messages', msg));
    assert.equal(whole.type, 'message');
    assert.equal(whole.content[0].text, TEXT);
    const res = await post('/v1/messages', { ...msg, stream: true });
    assert.equal(res.status, 200);
    const events = await readSSE(res);
    const text = events.map((e) => e.json?.delta?.text ?? '').join('');
    assert.equal(text, TEXT);
    assert.equal(events.at(-1).json.type, 'message_stop');

    const resp = await body(await post('/v1/responses', { model: name, input: 'bonjour' }));
    assert.equal(resp.object, 'response');
    assert.equal(resp.output.at(-1).content[0].text, TEXT);
    const stream = await post('/v1/responses', { model: name, input: 'bonjour', stream: true });
    const revents = await readSSE(stream);
    assert.equal(revents.at(-1).json.type, 'response.completed');
  });
}
