// The official OpenAI Python SDK against the gateway (tests/sdk/): the mock
// provider in every wire format and behind every regional provider kind
// (Bedrock, Vertex AI for Gemini and Claude, Workers AI), and the built-in
// demo model, through the built worker on workerd. The SDK lives in .venv
// (scripts/setup pins it).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

import { googleServiceAccount, startMock } from '../mock/server.mjs';
import { startGateway, mockConfig, putConfig, ROOT, KEY } from './harness.mjs';

const PYTHON = path.join(ROOT, '.venv/bin/python');
/** Must match SDK_TEXT in tests/sdk/test_openai_sdk.py. */
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
    ['bedrock', 'bedrock', `eu.anthropic.claude-mock-v1:0;aws_secret=${AWS_SECRET},region=eu-central-1`],
    ['vertex-gemini', 'vertex', 'gemini-mock'],
    ['vertex-claude', 'vertex', 'claude-mock'],
    ['workers-ai', 'workers-ai', '@cf/meta/llama-mock'],
  ]) {
    // Directives join with `,` after the model's own `;`.
    const join = (d) => (model.includes(';') ? `${model},${d}` : `${model};${d}`);
    models[`sdk-${format}`] = targets(provider, join(`text=${SDK_TEXT},chunks=5`));
    models[`sdk-${format}-tools`] = targets(provider, join('tools=2,chunks=3'));
  }
  models['sdk-emb-openai'] = targets('mock', 'text-embedding-mock');
  models['sdk-emb-gemini'] = targets('gemini', 'gemini-embedding-001');
  models['sdk-emb-anthropic'] = targets('anthropic', 'claude-mock');
  models['sdk-emb-workers-ai'] = targets('workers-ai', '@cf/baai/bge-mock');
  const config = mockConfig(mock.url, models, {
    providers: {
      anthropic: { kind: 'anthropic', base_url: mock.url, api_key_secret: 'MOCK_PROVIDER_KEY' },
      gemini: { kind: 'gemini', base_url: `${mock.url}/v1beta`, api_key_secret: 'MOCK_PROVIDER_KEY' },
      bedrock: { kind: 'bedrock', region: 'eu-central-1', base_url: mock.url },
      vertex: { kind: 'vertex', region: 'europe-west4', project: 'mock-project', base_url: mock.url },
      'workers-ai': { kind: 'workers-ai', account_id: 'acc0123', base_url: `${mock.url}/client/v4/accounts/acc0123/ai/v1` },
    },
  });
  const res = await putConfig(gw, config);
  assert.equal(res.status, 200, await res.text());
});

after(async () => {
  await gw?.stop();
  await mock?.close();
});

test('the official openai Python SDK works against every wire format and regional provider kind', async () => {
  assert.ok(existsSync(PYTHON), `${PYTHON} is missing: run scripts/setup`);
  const env = { ...process.env, GATEWAY_URL: gw.url, GATEWAY_KEY: KEY, MOCK_URL: mock.url, PYTHONDONTWRITEBYTECODE: '1' };
  const args = ['-m', 'unittest', 'discover', '-v', '-s', path.join(ROOT, 'tests/sdk'), '-t', path.join(ROOT, 'tests/sdk')];
  const { code, output } = await new Promise((resolve) => {
    execFile(PYTHON, args, { cwd: ROOT, env, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? err.signal) : 0, output: `${stdout}${stderr}` });
    });
  });
  if (code !== 0 || process.env.SDK_TEST_VERBOSE) console.log(output);
  assert.equal(code, 0, `python -m unittest failed (exit ${code}):\n${output}`);
  assert.match(output, /\nOK\n/);
  assert.doesNotMatch(output, /skipped/, 'every SDK check ran');
});
