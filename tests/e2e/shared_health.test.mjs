// Health shared within a location: two gateway isolates (two workers of one
// dev session, whose Cache API is one cache, as one Cloudflare location's
// is), reached through a tiny router worker by the `x-isolate` header. When
// isolate A sees a target fail past its breaker threshold, isolate B skips
// that target without sending it a request.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { startMock } from '../mock/server.mjs';
import { CONFIG, ROOT, startGateway, chat, ask, putConfig, sleep } from './harness.mjs';

let mock;
let gw;
let dir;

/** Writes the router and two copies of the test config, named apart. */
async function isolateConfigs() {
  dir = await mkdtemp(path.join(os.tmpdir(), 'gateway-isolates-'));
  const base = (await readFile(CONFIG, 'utf8'))
    .replace(/^main = .*$/m, `main = ${JSON.stringify(path.join(ROOT, 'build/worker/shim.mjs'))}`)
    // The dashboard's static files are not what these workers are about.
    .replace(/^\[assets\]\ndirectory = .*$/m, '');
  const configs = [];
  await writeFile(path.join(dir, 'router.js'), `export default {
  fetch(request, env) {
    return (request.headers.get('x-isolate') === 'b' ? env.B : env.A).fetch(request);
  },
};
`);
  await writeFile(path.join(dir, 'router.toml'), `name = "isolate-router"
main = "router.js"
compatibility_date = "2026-10-01"
services = [{ binding = "A", service = "gateway-a" }, { binding = "B", service = "gateway-b" }]
`);
  configs.push(path.join(dir, 'router.toml'));
  for (const which of ['a', 'b']) {
    const file = path.join(dir, `gateway-${which}.toml`);
    await writeFile(file, base.replace(/^name = .*$/m, `name = "gateway-${which}"`));
    configs.push(file);
  }
  return configs;
}

function provider(directives) {
  return {
    kind: 'openai-compatible',
    base_url: `${mock.url}/_mock/${directives}/v1`,
    api_key_secret: 'MOCK_PROVIDER_KEY',
  };
}

before(async () => {
  mock = await startMock();
  gw = await startGateway({ configs: await isolateConfigs() });
  const res = await putConfig(gw, {
    version: 1,
    revision: 'shared-health-e2e',
    providers: {
      down: provider('status=503,tag=down'),
      unseen: provider('status=503,tag=unseen'),
      up: provider('tag=up'),
    },
    models: {
      shared: { targets: [{ provider: 'down', model: 'm' }, { provider: 'up', model: 'm' }] },
      control: { targets: [{ provider: 'unseen', model: 'm' }, { provider: 'up', model: 'm' }] },
      warm: { targets: [{ provider: 'up', model: 'w' }] },
    },
    failover: { breaker: { failures: 2, window_ms: 60000, cooldown_ms: 60000 } },
  });
  assert.equal(res.status, 200, await res.text());
  // Both isolates serve the new config (each caches it for 300 ms).
  await sleep(700);
});

after(async () => {
  await gw?.stop();
  await mock?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const on = (isolate) => ({ headers: { 'x-isolate': isolate } });
const hits = (tag) => mock.requests.filter((r) => r.directives.tag === tag).length;

test('the two isolates are two workers: A and B answer apart', async () => {
  for (const isolate of ['a', 'b']) {
    const res = await chat(gw, ask('warm'), on(isolate));
    assert.equal(res.status, 200, await res.text());
    assert.equal(res.headers.get('x-gateway-provider'), 'up');
  }
});

test('after isolate A opens a breaker, isolate B skips that target without a request', async () => {
  // B is serving traffic (a request every 100 ms) while A meets the outage.
  let busy = true;
  const traffic = (async () => {
    while (busy) {
      const res = await chat(gw, ask('warm'), on('b'));
      await res.arrayBuffer();
      await sleep(100);
    }
  })();
  try {
    for (let i = 0; i < 2; i++) {
      const res = await chat(gw, ask('shared'), on('a'));
      assert.equal(res.status, 200, await res.text());
      assert.equal(res.headers.get('x-gateway-attempts'), '2', 'A fails over from the down target');
    }
    assert.equal(hits('down'), 2, 'A sent both failures');
    // A's breaker is open; the location hears of it within a second.
    await sleep(1000);
  } finally {
    busy = false;
    await traffic;
  }
  for (let i = 0; i < 5; i++) {
    const res = await chat(gw, ask('shared'), on('b'));
    assert.equal(res.status, 200, await res.text());
    assert.equal(res.headers.get('x-gateway-provider'), 'up');
    assert.equal(res.headers.get('x-gateway-attempts'), '1', 'B went straight to the healthy target');
  }
  assert.equal(hits('down'), 2, 'B never sent the down target a request');
});

test('control: a target no isolate has seen fail is still tried by B', async () => {
  const res = await chat(gw, ask('control'), on('b'));
  assert.equal(res.status, 200, await res.text());
  assert.equal(res.headers.get('x-gateway-attempts'), '2');
  assert.equal(hits('unseen'), 1);
});
