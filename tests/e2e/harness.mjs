// End-to-end harness: runs the built worker (src/edge/entry.mjs over build/) on
// workerd through `wrangler dev` with local KV and Durable Objects, on a free
// loopback port, with its own state directory; and helpers to talk to it.
// Every process it starts is stopped by `stop()`, and also when the test
// process exits, whatever the outcome.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'node_modules/.bin');
const WRANGLER = path.join(BIN, 'wrangler');
export const CONFIG = path.join(ROOT, 'tests/wrangler.test.toml');

// From tests/wrangler.test.toml.
export const KEY = 'sk-test-1';
export const OTHER_KEY = 'sk-test-2';
export const ADMIN_TOKEN = 'admin-test-token';
export const MOCK_PROVIDER_KEY = 'sk-mock-provider-key-123';

const ENV = {
  ...process.env,
  PATH: `${BIN}:${process.env.PATH}`,
  WRANGLER_SEND_METRICS: 'false',
  CLOUDFLARE_CF_FETCH_ENABLED: 'false',
  CI: 'true',
  NO_COLOR: '1',
};

const children = new Set();
process.on('exit', () => {
  for (const child of children) killGroup(child, 'SIGKILL');
});

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts the gateway. `persistDir` keeps KV and Durable Object state; pass
 * the same one to a second start to test persistence across restarts.
 * `configs` replaces the one wrangler config with several (one dev session,
 * the first served on the port, the others reachable by service binding).
 */
export async function startGateway({ persistDir, vars = {}, configs = [CONFIG] } = {}) {
  const ownDir = !persistDir;
  persistDir ??= await mkdtemp(path.join(os.tmpdir(), 'gateway-e2e-'));
  const port = await freePort();
  const inspectorPort = await freePort();
  const args = [
    'dev', ...configs.flatMap((c) => ['-c', c]), '--ip', '127.0.0.1', '--port', String(port),
    '--inspector-port', String(inspectorPort), '--local', '--persist-to', persistDir,
    '--show-interactive-dev-session=false',
  ];
  for (const [k, v] of Object.entries(vars)) args.push('--var', `${k}:${v}`);
  const child = spawn(WRANGLER, args, { cwd: ROOT, env: ENV, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const url = `http://127.0.0.1:${port}`;

  const gw = {
    url,
    port,
    persistDir,
    log: () => log,
    async stop({ keepState = false } = {}) {
      if (children.has(child)) {
        killGroup(child, 'SIGTERM');
        const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
        // workerd children may outlive wrangler by a moment.
        killGroup(child, 'SIGKILL');
        children.delete(child);
      }
      if (ownDir && !keepState) await rm(persistDir, { recursive: true, force: true });
    },
    /** Writes a KV value with `wrangler kv key put --local` (the real KV path). */
    async kvPut(key, value) {
      const file = path.join(persistDir, `kv-${Date.now()}-${Math.random()}.json`);
      await writeFile(file, typeof value === 'string' ? value : JSON.stringify(value));
      await run(WRANGLER, ['kv', 'key', 'put', key, '--path', file, '-c', CONFIG,
        '--binding', 'GATEWAY_CONFIG', '--local', '--persist-to', persistDir]);
      await rm(file, { force: true });
    },
    /** Writes an R2 object with `wrangler r2 object put --local` (the real R2 path). */
    async r2Put(bucket, key, value) {
      const file = path.join(persistDir, `r2-${Date.now()}-${Math.random()}`);
      await writeFile(file, value);
      await run(WRANGLER, ['r2', 'object', 'put', `${bucket}/${key}`, '--file', file, '-c', CONFIG,
        '--local', '--persist-to', persistDir]);
      await rm(file, { force: true });
    },
  };

  const deadline = Date.now() + 90_000;
  let ready = false;
  while (!ready) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited early:\n${log}`);
    if (Date.now() > deadline) {
      await gw.stop();
      throw new Error(`gateway did not become ready in 90 s:\n${log}`);
    }
    try {
      ready = (await fetch(`${url}/health`)).ok;
    } catch {
      await sleep(200);
    }
  }
  return gw;
}

function run(cmd, args) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: ROOT, env: ENV }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${stderr || err.message}`));
      else resolve(stdout);
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** POST /v1/chat/completions; returns the fetch Response. */
export function chat(gw, body, { key = KEY, headers = {} } = {}) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/** A minimal chat body. */
export function ask(model, text = 'hello', extra = {}) {
  return { model, messages: [{ role: 'user', content: text }], ...extra };
}

/**
 * Reads an SSE response incrementally. Returns the events in order, each with
 * `data` (string), `json` (parsed unless [DONE]) and `t` (ms since `t0` when
 * its bytes arrived).
 */
export async function readSSE(res, t0 = performance.now()) {
  const events = [];
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body) {
    const t = performance.now() - t0;
    buf += decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      let json = null;
      if (data !== '[DONE]') json = JSON.parse(data);
      events.push({ data, json, t });
    }
  }
  if (buf.trim()) events.push({ data: buf, json: null, t: performance.now() - t0, partial: true });
  return events;
}

/** The text a stream of OpenAI chunks spells out. */
export function streamText(events) {
  return events.map((e) => e.json?.choices?.[0]?.delta?.content ?? '').join('');
}

/** A routing config whose providers point at the mock. */
export function mockConfig(mockUrl, models, extra = {}) {
  return {
    version: 1,
    revision: extra.revision ?? 'e2e',
    providers: {
      mock: { kind: 'openai-compatible', base_url: `${mockUrl}/v1`, api_key_secret: 'MOCK_PROVIDER_KEY' },
      demo: { kind: 'mock' },
      ...(extra.providers ?? {}),
    },
    models,
    ...(extra.limits ? { limits: extra.limits } : {}),
  };
}

/** PUT /admin/config. */
export function putConfig(gw, config, token = ADMIN_TOKEN) {
  return fetch(`${gw.url}/admin/config`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: typeof config === 'string' ? config : JSON.stringify(config),
  });
}
