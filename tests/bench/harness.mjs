// What tests/bench/profile.mjs and tests/bench/ab.mjs share: child
// processes in their own process groups (all killed when the script exits),
// free loopback ports, waiting for a server, workerd's CPU time, and the
// nginx upstream that answers every request with one fixed completion.

import { spawn, execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startMock } from '../mock/server.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const HERE = path.join(ROOT, 'tests/bench');
export const WORKERD = path.join(ROOT, 'node_modules/@cloudflare/workerd-linux-64/bin/workerd');
/** The static key and admin token every run is configured with. */
export const KEY = 'sk-bench-gateway-key-0001';
export const ADMIN = 'bench-admin-token';
/** `--name=value` from the command line, or `def`. */
export const arg = (name, def) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? def;

const children = [];

/** Starts `cmd` in its own process group, its output collected. */
export function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  child.output = '';
  child.stdout.on('data', (d) => { child.output += d; });
  child.stderr.on('data', (d) => { child.output += d; });
  child.exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  children.push(child);
  return child;
}

/** Kills every process group started. */
export function stopAll() {
  for (const c of children) {
    try { process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ }
  }
}
process.on('exit', stopAll);
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(1));

export const freePort = () => new Promise((resolve, reject) => {
  const srv = net.createServer();
  srv.on('error', reject);
  srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `url` answers below 500 (30 s at most). */
export async function waitFor(url) {
  for (let i = 0; i < 300; i++) {
    try { if ((await fetch(url)).status < 500) return; } catch { /* not yet */ }
    await sleep(100);
  }
  throw new Error(`${url} never answered`);
}

/** User + system CPU (ms) of process `pid`, all threads. */
export function cpuMs(pid) {
  const tck = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / tck;
}

export const COMPLETION = JSON.stringify({
  id: 'chatcmpl-bench', object: 'chat.completion', created: 1763700000, model: 'bench-model',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from nginx.' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 },
});

/** nginx on 127.0.0.1:`port`, one worker, answering COMPLETION; files in `dir`. */
export function startNginx(dir, port) {
  writeFileSync(path.join(dir, 'nginx.conf'), `daemon off; master_process off; worker_processes 1; pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn; events { worker_connections 1024; }
http { access_log off; client_body_temp_path ${dir}/b; proxy_temp_path ${dir}/p; fastcgi_temp_path ${dir}/f;
  uwsgi_temp_path ${dir}/u; scgi_temp_path ${dir}/s; keepalive_requests 10000000;
  server { listen 127.0.0.1:${port}; location / { default_type application/json; return 200 '${COMPLETION}'; } } }`);
  const nginxBin = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p)) ?? 'nginx';
  return start(nginxBin, ['-p', dir, '-c', path.join(dir, 'nginx.conf')]);
}

/**
 * The capnp service of a gateway build: `modules` (capnp list items), the
 * bindings every run needs, `bindings` more, Durable Object ids prefixed
 * `unique`.
 */
export function gatewayService({ name, modules, key, admin, unique, bindings = [] }) {
  return `(name = "${name}", worker = (
      modules = [${modules.join(', ')}],
      compatibilityDate = "2026-10-01",
      bindings = [
        (name = "GATEWAY_CONFIG", kvNamespace = (name = "kv")),
        (name = "KEY_OBJECTS", durableObjectNamespace = (className = "KeyObject")),
        (name = "ANALYTICS", durableObjectNamespace = (className = "AnalyticsObject")),
        (name = "ALERTS", durableObjectNamespace = (className = "AlertsObject")),
        (name = "GATEWAY_KEYS", text = "${key}"),
        (name = "ADMIN_TOKEN", text = "${admin}"),
        (name = "CONFIG_CACHE_TTL_MS", text = "3600000"),
        (name = "UPSTREAM_KEY", text = "sk-upstream"),${bindings.map((b) => `\n        ${b},`).join('')}
      ],
      durableObjectNamespaces = [(className = "KeyObject", uniqueKey = "${unique}-key-objects", enableSql = true),
        (className = "AnalyticsObject", uniqueKey = "${unique}-analytics", enableSql = true),
        (className = "AlertsObject", uniqueKey = "${unique}-alerts", enableSql = true)],
      durableObjectStorage = (localDisk = "do-storage"),
      globalOutbound = "loopback",
    ))`;
}

/**
 * The routing document both scripts serve from their KV: `bench` on nginx,
 * `stream` (20 chunks) on the mock provider, `stream-translated` the same
 * from the mock's Anthropic Messages endpoint (translated chunk by chunk in
 * Rust). Written to `dir/config.json`.
 */
export function writeConfig(dir, nginxPort, mockPort) {
  const provider = (base_url) => ({ kind: 'openai-compatible', base_url, api_key_secret: 'UPSTREAM_KEY' });
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
    version: 1,
    providers: {
      nginx: provider(`http://127.0.0.1:${nginxPort}/v1`),
      mock: provider(`http://127.0.0.1:${mockPort}/v1`),
      anthropic: { kind: 'anthropic', base_url: `http://127.0.0.1:${mockPort}`, api_key_secret: 'UPSTREAM_KEY' },
    },
    models: {
      bench: { targets: [{ provider: 'nginx', model: 'bench-model' }] },
      stream: { targets: [{ provider: 'mock', model: 'mock-model;chunks=20,interval_ms=0' }] },
      'stream-translated': { targets: [{ provider: 'anthropic', model: 'mock-model;chunks=20,interval_ms=0' }] },
    },
  }));
}

/**
 * A run's world: a temp dir (on tmpfs when `shm`) with the routing
 * document, the KV and pass-through workers and a Durable Object store;
 * the mock provider; nginx; a free port for each of `names`.
 */
export async function prepareRun(prefix, names, { shm = false } = {}) {
  const base = shm && existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = mkdtempSync(path.join(base, prefix));
  const mock = await startMock({ maxRequests: 100 });
  const ports = { nginx: await freePort() };
  for (const name of names) ports[name] = await freePort();
  startNginx(dir, ports.nginx);
  writeConfig(dir, ports.nginx, mock.port);
  mkdirSync(path.join(dir, 'do'));
  for (const f of ['kv.js', 'passthrough.js']) copyFileSync(path.join(HERE, f), path.join(dir, f));
  return { dir, mock, ports };
}

/** A new virtual key with generous limits, from the gateway at `url`. */
export async function virtualKey(url, name) {
  const res = await fetch(`${url}/admin/keys`, {
    method: 'POST', headers: { authorization: `Bearer ${ADMIN}` },
    body: JSON.stringify({ name, limits: { rpm: 1000000, tpm: 1000000000 }, budgets: { total_usd: 1000000 } }),
  });
  return (await res.json()).secret;
}

/** The capnp services beside the gateway: KV, the pass-through (to `upstream`), loopback, storage. */
export function supportServices(dir, upstream) {
  return `(name = "kv", worker = (modules = [(name = "kv.js", esModule = embed "kv.js")], compatibilityDate = "2026-10-01",
      bindings = [(name = "CONFIG", text = embed "config.json")])),
    (name = "pass", worker = (modules = [(name = "passthrough.js", esModule = embed "passthrough.js")], compatibilityDate = "2026-10-01",
      bindings = [(name = "UPSTREAM", text = "${upstream}")], globalOutbound = "loopback")),
    (name = "loopback", network = (allow = ["local"])),
    (name = "do-storage", disk = (path = "${dir}/do", writable = true)),`;
}
