// Two gateway isolates that share one key-object namespace, on plain
// `workerd serve` (the binary wrangler uses): `a` hosts the KeyObject class,
// `b` binds a's class, so a virtual key's one object serves both, as in
// production where many isolates in many locations share it. KV is served
// by tests/bench/kv.js and the Cache API by tests/bench/cache.js (plain
// workerd has neither of its own); Durable Objects are SQLite-backed in a
// temp dir. Everything listens on 127.0.0.1 and is
// stopped by `stop()` (and when the test process exits).

import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ROOT, ADMIN_TOKEN, KEY, MOCK_PROVIDER_KEY, freePort, sleep } from './harness.mjs';

const WORKERD = path.join(ROOT, 'node_modules/@cloudflare/workerd-linux-64/bin/workerd');
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

/**
 * The two isolates running the deployed entry module with `config` kept
 * cached, as in a warm isolate (a request then reaches its provider call in
 * the entry module's first poll), after one request has loaded it.
 */
export async function startDeployed(config) {
  const env = await startTwoIsolates({ config, entry: true, vars: { CONFIG_CACHE_TTL_MS: '600000' } });
  const warm = await fetch(`${env.a.url}/v1/models`, { headers: { authorization: `Bearer ${KEY}` } });
  if (warm.status !== 200) {
    await env.stop();
    throw new Error(`the warm-up request answered ${warm.status}`);
  }
  return env;
}

/** Starts the two isolates with `config` as the routing document. */
export async function startTwoIsolates({ config, vars = {}, entry = false }) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gateway-e2e-workerd-'));
  mkdirSync(path.join(dir, 'do'));
  for (const f of ['index.js', 'index_bg.wasm']) copyFileSync(path.join(ROOT, 'build', f), path.join(dir, f));
  // `entry`: the deployed entry module (src/edge/entry.mjs, which drives a
  // request whose body it reads), not the Rust module's own export.
  if (entry) {
    const source = readFileSync(path.join(ROOT, 'src/edge/entry.mjs'), 'utf8');
    writeFileSync(path.join(dir, 'entry.mjs'), source.replaceAll('../../build/index.js', './index.js'));
  }
  const main = entry ? '(name = "entry.mjs", esModule = embed "entry.mjs"), ' : '';
  copyFileSync(path.join(ROOT, 'tests/bench/kv.js'), path.join(dir, 'kv.js'));
  copyFileSync(path.join(ROOT, 'tests/bench/cache.js'), path.join(dir, 'cache.js'));
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const ports = { a: await freePort(), b: await freePort() };
  const all = {
    GATEWAY_KEYS: KEY,
    ADMIN_TOKEN,
    MOCK_PROVIDER_KEY,
    GATEWAY_TEST_HOOKS: '1',
    CONFIG_CACHE_TTL_MS: '300',
    ...vars,
  };
  const bindings = Object.entries(all).map(([k, v]) => `(name = "${k}", text = ${JSON.stringify(v)}),`).join('\n        ');
  const gateway = (objects) => `(
      modules = [${main}(name = "index.js", esModule = embed "index.js"), (name = "index_bg.wasm", wasm = embed "index_bg.wasm")],
      compatibilityDate = "2026-10-01",
      bindings = [
        (name = "GATEWAY_CONFIG", kvNamespace = (name = "kv")),
        (name = "KEY_OBJECTS", durableObjectNamespace = (className = "KeyObject"${objects ? `, serviceName = "${objects}"` : ''})),
        ${bindings}
      ],
      ${objects ? '' : `durableObjectNamespaces = [(className = "KeyObject", uniqueKey = "e2e-key-objects", enableSql = true)],
      durableObjectStorage = (localDisk = "do-storage"),`}
      globalOutbound = "loopback",
      cacheApiOutbound = "cache",
    )`;
  writeFileSync(path.join(dir, 'workerd.capnp'), `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "a", worker = ${gateway(null)}),
    (name = "b", worker = ${gateway('a')}),
    (name = "kv", worker = (modules = [(name = "kv.js", esModule = embed "kv.js")], compatibilityDate = "2026-10-01",
      bindings = [(name = "CONFIG", text = embed "config.json")])),
    (name = "cache", worker = (modules = [(name = "cache.js", esModule = embed "cache.js")], compatibilityDate = "2026-10-01")),
    (name = "loopback", network = (allow = ["local"])),
    (name = "do-storage", disk = (path = ${JSON.stringify(path.join(dir, 'do'))}, writable = true)),
  ],
  sockets = [
    (name = "a", address = "127.0.0.1:${ports.a}", http = (), service = "a"),
    (name = "b", address = "127.0.0.1:${ports.b}", http = (), service = "b"),
  ],
);
`);
  const child = spawn(WORKERD, ['serve', path.join(dir, 'workerd.capnp')], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const env = {
    a: { url: `http://127.0.0.1:${ports.a}` },
    b: { url: `http://127.0.0.1:${ports.b}` },
    log: () => log,
    async stop() {
      if (running.has(child)) {
        try {
          process.kill(-child.pid, 'SIGTERM');
        } catch {
          // gone
        }
        await Promise.race([exited, sleep(3000)]);
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // gone
        }
        running.delete(child);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + 30_000;
  for (const side of [env.a, env.b]) {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`workerd exited early:\n${log}`);
      if (Date.now() > deadline) {
        await env.stop();
        throw new Error(`workerd did not answer in 30 s:\n${log}`);
      }
      try {
        if ((await fetch(`${side.url}/health`)).ok) break;
      } catch {
        await sleep(100);
      }
    }
  }
  return env;
}
