// The official SDKs against the gateway (tests/sdk/): the OpenAI Python SDK
// and the `openai` npm package over chat completions and embeddings, the
// `anthropic` Python SDK over `/v1/messages`, and the npm package's
// Responses API — the mock provider in
// every wire format and behind every regional provider kind (Bedrock, Vertex
// AI for Gemini and Claude, Workers AI), and the built-in demo model, through
// the built worker on workerd. The Python SDKs live in .venv and the npm
// package in node_modules (scripts/setup pins both).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

import { googleServiceAccount, startMock } from '../mock/server.mjs';
import { startGateway, mockConfig, putConfig, ROOT, KEY } from './harness.mjs';

const PYTHON = path.join(ROOT, '.venv/bin/python');
/** Must match SDK_TEXT in tests/sdk/. */
const SDK_TEXT = 'Hello from the SDK check';

let mock;
let gw;

const AWS_SECRET = 'sdk-mock-aws-secret';

before(async () => {
  mock = await startMock();
  const account = googleServiceAccount(`${mock.url}/token`);
  mock.addGoogleKey(account.email, account.publicKey);
  gw = await startGateway({
    vars: {
      AWS_ACCESS_KEY_ID: 'AKIASDKMOCK',
      AWS_SECRET_ACCESS_KEY: AWS_SECRET,
      GOOGLE_SERVICE_ACCOUNT_JSON: account.json,
      CLOUDFLARE_API_TOKEN: 'cf-sdk-mock-token',
    },
  });
  const targets = (provider, model) => ({ targets: [{ provider, model }] });
  const models = { demo: targets('demo', 'demo-1') };
  for (const [format, provider, model] of [
    ['openai', 'mock', 'gpt-mock'],
    ['anthropic', 'anthropic', 'claude-mock'],
    ['gemini', 'gemini', 'gemini-mock'],
    ['native', 'openai', 'gpt-native'],
    ['bedrock', 'bedrock', `eu.anthropic.claude-mock-v1:0;aws_secret=${AWS_SECRET},region=eu-central-1`],
    ['vertex-gemini', 'vertex', 'gemini-mock'],
    ['vertex-claude', 'vertex', 'claude-mock'],
    ['workers-ai', 'workers-ai', '@cf/meta/llama-mock'],
  ]) {
    // Directives join with `,` after the model's own `;`.
    const join = (d) => (model.includes(';') ? `${model},${d}` : `${model};${d}`);
    models[`sdk-${format}`] = targets(provider, join(`text=${SDK_TEXT},chunks=5`));
    models[`sdk-${format}-tools`] = targets(provider, join('tools=2,chunks=3'));
    models[`sdk-${format}-loop`] = targets(provider, join('tools=1,tools_once=1,chunks=3'));
  }
  models['sdk-emb-openai'] = targets('mock', 'text-embedding-mock');
  models['sdk-emb-gemini'] = targets('gemini', 'gemini-embedding-001');
  models['sdk-emb-anthropic'] = targets('anthropic', 'claude-mock');
  models['sdk-emb-workers-ai'] = targets('workers-ai', '@cf/baai/bge-mock');
  models['sdk-limited'] = targets('anthropic', 'claude-mock;status=429,retry_after=1');
  models['sdk-overloaded'] = targets('anthropic', 'claude-mock;status=529');
  models['sdk-failover'] = {
    targets: [
      { provider: 'anthropic', model: 'claude-mock;status=503' },
      { provider: 'anthropic', model: `claude-mock;text=${SDK_TEXT},chunks=5` },
    ],
  };
  const config = mockConfig(mock.url, models, {
    providers: {
      anthropic: { kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY' },
      gemini: { kind: 'gemini', base_url: `${mock.url}/v1beta`, api_key_secret: 'MOCK_PROVIDER_KEY' },
      bedrock: { kind: 'bedrock', region: 'eu-central-1', base_url: mock.url },
      vertex: { kind: 'vertex', region: 'europe-west4', project: 'mock-project', base_url: mock.url },
      'workers-ai': { kind: 'workers-ai', account_id: 'acc0123', base_url: `${mock.url}/client/v4/accounts/acc0123/ai/v1` },
      openai: { kind: 'openai', base_url: `${mock.url}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY' },
    },
  });
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

function env() {
  // Without NODE_TEST_CONTEXT, which would make the child `node --test`
  // think it is nested in this run and skip its file.
  const { NODE_TEST_CONTEXT: _nested, ...inherited } = process.env;
  return {
    ...inherited,
    GATEWAY_URL: gw.url,
    GATEWAY_KEY: KEY,
    MOCK_URL: mock.url,
    PYTHONDONTWRITEBYTECODE: '1',
  };
}

function run(cmd, args) {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: ROOT, env: env(), timeout: 180_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? err.signal) : 0, output: `${stdout}${stderr}` });
    });
  });
}

test('the official Python SDKs work against every wire format', async () => {
  assert.ok(existsSync(PYTHON), `${PYTHON} is missing: run scripts/setup`);
  const sdk = path.join(ROOT, 'tests/sdk');
  const pattern = 'test_*.py';
  const { code, output } = await run(PYTHON, ['-m', 'unittest', 'discover', '-v', '-s', sdk, '-t', sdk, '-p', pattern]);
  if (code !== 0 || process.env.SDK_TEST_VERBOSE) console.log(output);
  assert.equal(code, 0, `python -m unittest failed (exit ${code}):\n${output}`);
  assert.match(output, /\nOK\n/);
  assert.doesNotMatch(output, /skipped/, 'every SDK check ran');
  assert.match(output, /test_anthropic_sdk/, 'the anthropic SDK checks ran');
});

test('the official openai npm package works against every wire format', async () => {
  assert.ok(existsSync(path.join(ROOT, 'node_modules/openai/package.json')), 'the openai npm package is missing: run scripts/setup');
  // The SDK needs Node 22: the one scripts/setup installs, which runs this.
  const { code, output } = await run(process.execPath, ['--test', '--test-reporter=spec', path.join(ROOT, 'tests/sdk/openai_sdk.mjs')]);
  if (code !== 0 || process.env.SDK_TEST_VERBOSE) console.log(output);
  assert.equal(code, 0, `node --test tests/sdk/openai_sdk.mjs failed (exit ${code}):\n${output}`);
  assert.match(output, /ℹ fail 0/);
  assert.match(output, /ℹ skipped 0/);
  assert.match(output, /responses\.create/, 'the Responses checks ran');
});
