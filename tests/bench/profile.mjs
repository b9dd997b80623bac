// Where the gateway's CPU goes: a V8 CPU profile of the built worker on
// plain workerd, taken through workerd's inspector while wrk drives one
// kind of request, summarised by function (self time) and by request-path
// step (inclusive time of the functions that implement it).
//
//   node tests/bench/profile.mjs [--kind=static|virtual|stream] [--seconds=6] [--top=40]
//
// Needs what scripts/bench needs (built worker, wrk, nginx); prints, writes
// nothing but a temp dir it removes. Loopback only; every process it starts
// is stopped when it ends. Build with `GATEWAY_KEEP_NAMES=1 scripts/build`
// first to see Rust function names (scripts/build strips them by default).

import { spawn, execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startMock } from '../mock/server.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const HERE = path.join(ROOT, 'tests/bench');
const WORKERD = path.join(ROOT, 'node_modules/@cloudflare/workerd-linux-64/bin/workerd');
const arg = (name, def) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? def;
const KIND = arg('kind', 'static');
const SECONDS = Number(arg('seconds', '6'));
const TOP = Number(arg('top', '40'));
const KEY = 'sk-bench-gateway-key-0001';
const ADMIN = 'bench-admin-token';

const children = [];
function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  child.output = '';
  child.stdout.on('data', (d) => { child.output += d; });
  child.stderr.on('data', (d) => { child.output += d; });
  child.exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  children.push(child);
  return child;
}
function stopAll() {
  for (const c of children) {
    try { process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ }
  }
}
process.on('exit', stopAll);
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(1));

const freePort = () => new Promise((resolve, reject) => {
  const srv = net.createServer();
  srv.on('error', reject);
  srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(url) {
  for (let i = 0; i < 300; i++) {
    try { if ((await fetch(url)).status < 500) return; } catch { /* not yet */ }
    await sleep(100);
  }
  throw new Error(`${url} never answered`);
}

const COMPLETION = JSON.stringify({
  id: 'chatcmpl-bench', object: 'chat.completion', created: 1763700000, model: 'bench-model',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from nginx.' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 },
});

async function main() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gateway-profile-'));
  const mock = await startMock({ maxRequests: 100 });
  try {
    const ports = { nginx: await freePort(), gateway: await freePort(), pass: await freePort(), inspector: await freePort() };
    writeFileSync(path.join(dir, 'nginx.conf'), `daemon off; master_process off; worker_processes 1; pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn; events { worker_connections 1024; }
http { access_log off; client_body_temp_path ${dir}/b; proxy_temp_path ${dir}/p; fastcgi_temp_path ${dir}/f;
  uwsgi_temp_path ${dir}/u; scgi_temp_path ${dir}/s; keepalive_requests 10000000;
  server { listen 127.0.0.1:${ports.nginx}; location / { default_type application/json; return 200 '${COMPLETION}'; } } }`);
    const nginxBin = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p)) ?? 'nginx';
    start(nginxBin, ['-p', dir, '-c', path.join(dir, 'nginx.conf')]);
    const provider = (base_url) => ({ kind: 'openai-compatible', base_url, api_key_secret: 'UPSTREAM_KEY' });
    writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
      version: 1,
      providers: { nginx: provider(`http://127.0.0.1:${ports.nginx}/v1`), mock: provider(`http://127.0.0.1:${mock.port}/v1`) },
      models: {
        bench: { targets: [{ provider: 'nginx', model: 'bench-model' }] },
        stream: { targets: [{ provider: 'mock', model: 'mock-model;chunks=20,interval_ms=0' }] },
      },
    }));
    mkdirSync(path.join(dir, 'do'));
    for (const f of ['index.js', 'index_bg.wasm']) copyFileSync(path.join(ROOT, 'build', f), path.join(dir, f));
    copyFileSync(path.join(HERE, 'kv.js'), path.join(dir, 'kv.js'));
    copyFileSync(path.join(HERE, 'passthrough.js'), path.join(dir, 'passthrough.js'));
    writeFileSync(path.join(dir, 'workerd.capnp'), `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "gateway", worker = (
      modules = [(name = "index.js", esModule = embed "index.js"), (name = "index_bg.wasm", wasm = embed "index_bg.wasm")],
      compatibilityDate = "2026-10-01",
      bindings = [
        (name = "GATEWAY_CONFIG", kvNamespace = (name = "kv")),
        (name = "KEY_OBJECTS", durableObjectNamespace = (className = "KeyObject")),
        (name = "ANALYTICS", durableObjectNamespace = (className = "AnalyticsObject")),
        (name = "ALERTS", durableObjectNamespace = (className = "AlertsObject")),
        (name = "GATEWAY_KEYS", text = "${KEY}"),
        (name = "ADMIN_TOKEN", text = "${ADMIN}"),
        (name = "CONFIG_CACHE_TTL_MS", text = "3600000"),
        (name = "UPSTREAM_KEY", text = "sk-upstream"),
        (name = "GATEWAY_TEST_HOOKS", text = "1"),
      ],
      durableObjectNamespaces = [(className = "KeyObject", uniqueKey = "profile-key-objects", enableSql = true),
        (className = "AnalyticsObject", uniqueKey = "profile-analytics", enableSql = true),
        (className = "AlertsObject", uniqueKey = "profile-alerts", enableSql = true)],
      durableObjectStorage = (localDisk = "do-storage"),
      globalOutbound = "loopback",
    )),
    (name = "kv", worker = (modules = [(name = "kv.js", esModule = embed "kv.js")], compatibilityDate = "2026-10-01",
      bindings = [(name = "CONFIG", text = embed "config.json")])),
    (name = "pass", worker = (modules = [(name = "passthrough.js", esModule = embed "passthrough.js")], compatibilityDate = "2026-10-01",
      bindings = [(name = "UPSTREAM", text = "${KIND === 'stream' ? `http://127.0.0.1:${mock.port}` : `http://127.0.0.1:${ports.nginx}`}")], globalOutbound = "loopback")),
    (name = "loopback", network = (allow = ["local"])),
    (name = "do-storage", disk = (path = "${dir}/do", writable = true)),
  ],
  sockets = [
    (name = "gateway", address = "127.0.0.1:${ports.gateway}", http = (), service = "gateway"),
    (name = "pass", address = "127.0.0.1:${ports.pass}", http = (), service = "pass"),
  ],
);`);
    // The inspector costs CPU even unused: only when profiling.
    const inspector = process.argv.includes('--compare') ? [] : [`--inspector-addr=127.0.0.1:${ports.inspector}`];
    const workerd = start(WORKERD, ['serve', path.join(dir, 'workerd.capnp'), ...inspector]);
    const gw = `http://127.0.0.1:${ports.gateway}`;
    await waitFor(`${gw}/health`);
    await waitFor(`http://127.0.0.1:${ports.nginx}/`);

    let auth = `Bearer ${KEY}`;
    if (KIND === 'virtual') {
      const res = await fetch(`${gw}/admin/keys`, {
        method: 'POST', headers: { authorization: `Bearer ${ADMIN}` },
        body: JSON.stringify({ name: 'profile', limits: { rpm: 1000000, tpm: 1000000000 }, budgets: { total_usd: 1000000 } }),
      });
      auth = `Bearer ${(await res.json()).secret}`;
    }
    const body = path.join(dir, 'body.json');
    writeFileSync(body, JSON.stringify({
      model: KIND === 'stream' ? 'stream' : 'bench', stream: KIND === 'stream',
      messages: [{ role: 'system', content: 'You are a helpful assistant.' }, { role: 'user', content: 'Hello there, how are you?' }],
      temperature: 0.2, max_tokens: 256,
    }));
    const wrk = (seconds, url = `${gw}/v1/chat/completions`, conns = 1) => {
      const c = start('wrk', ['-t1', `-c${conns}`, `-d${seconds}s`, '--timeout', '10s', '-s', path.join(HERE, 'wrk.lua'), url], {
        env: { ...process.env, BENCH_METHOD: 'POST', BENCH_BODY_FILE: body, BENCH_AUTH: auth, BENCH_REQUESTS: '0' },
      });
      return c.exited.then(() => JSON.parse(c.output.split('\n').find((l) => l.startsWith('BENCH_JSON ')).slice(11)));
    };
    await wrk(2); // warm up: JIT, wasm tier-up, leases
    if (process.argv.includes('--compare')) {
      // No profiler: user and system CPU and context switches per request,
      // gateway beside the pass-through, 1 and 16 connections.
      const pass = `http://127.0.0.1:${ports.pass}/v1/chat/completions`;
      if (KIND === 'stream') {
        // The pass-through forwards the body as is: ask the mock for the
        // same 20 chunks the gateway's model maps to.
        writeFileSync(body, readFileSync(body, 'utf8').replace('"model":"stream"', '"model":"mock-model;chunks=20,interval_ms=0"'));
      }
      await wrk(2, pass);
      for (const conns of [1, 16]) {
        for (const [label, url] of [['pass-through', pass], ['gateway', `${gw}/v1/chat/completions`]]) {
          if (KIND === 'stream') {
            const model = label === 'gateway' ? 'stream' : 'mock-model;chunks=20,interval_ms=0';
            writeFileSync(body, readFileSync(body, 'utf8').replace(/"model":"[^"]*"/, `"model":"${model}"`));
          }
          const a = procStats(workerd.pid);
          const r = await wrk(SECONDS, url, conns);
          const b = procStats(workerd.pid);
          const per = (k) => ((b[k] - a[k]) / r.requests);
          console.log(`${label.padEnd(12)} c${conns}: ${r.requests} req, user ${per('user').toFixed(3)} ms, sys ${per('sys').toFixed(3)} ms, ctx switches ${per('ctx').toFixed(2)} per request`);
        }
      }
      return;
    }
    if (process.env.IDLE_CHECK) {
      // CPU burnt while no request arrives: should be ~0.
      for (let i = 0; i < 3; i++) {
        const a = cpuMs(workerd.pid);
        await sleep(2000);
        console.log(`idle 2 s: ${(cpuMs(workerd.pid) - a).toFixed(1)} ms CPU`);
      }
    }

    const targets = await (await fetch(`http://127.0.0.1:${ports.inspector}/json/list`)).json();
    const target = targets.find((t) => /gateway/.test(t.title ?? t.url ?? '')) ?? targets[0];
    const ws = new WebSocket(target.webSocketDebuggerUrl);
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
    let id = 0;
    const pending = new Map();
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.id && pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
    };
    const send = (method, params = {}) => new Promise((r) => { const i = ++id; pending.set(i, r); ws.send(JSON.stringify({ id: i, method, params })); });
    await send('Profiler.enable');
    await send('Profiler.setSamplingInterval', { interval: 50 });
    const cpu0 = cpuMs(workerd.pid);
    await send('Profiler.start');
    const result = await wrk(SECONDS);
    const { result: { profile } } = await send('Profiler.stop');
    const cpu1 = cpuMs(workerd.pid);
    ws.close();
    report(profile, result, (cpu1 - cpu0) / result.requests);
    console.log(`\nisolate stats (GATEWAY_TEST_HOOKS): ${await (await fetch(`${gw}/__test/stats`)).text()}`);
    const problems = workerd.output.split("\n").filter((l) => !l.startsWith("{\"event\"") && /error|not sent|panick/i.test(l));
    if (problems.length) console.log(`workerd reported ${problems.length} problems, first: ${problems.slice(0, 3).join('\n')}`);
  } finally {
    stopAll();
    await mock.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** User and system CPU (ms) and context switches of every thread of `pid`. */
function procStats(pid) {
  const tck = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  let user = 0, sys = 0, ctx = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const f = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
    user += (Number(f[11]) * 1000) / tck;
    sys += (Number(f[12]) * 1000) / tck;
    const st = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    ctx += Number(st.match(/voluntary_ctxt_switches:\s+(\d+)/)[1]) + Number(st.match(/nonvoluntary_ctxt_switches:\s+(\d+)/)[1]);
  }
  return { user, sys, ctx };
}

function cpuMs(pid) {
  const tck = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / tck;
}

/** Self and inclusive time per function, and the share of sampled time. */
function report(profile, result, cpuPerReq) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const counts = new Map();
  for (const s of profile.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
  const total = profile.samples.length;
  const name = (n) => {
    const f = n.callFrame;
    const file = f.url ? path.basename(f.url) : '';
    return `${f.functionName || '(anonymous)'}${file ? ` [${file}]` : ''}`;
  };
  const self = new Map();
  const incl = new Map();
  for (const [nodeId, count] of counts) {
    const n = byId.get(nodeId);
    self.set(name(n), (self.get(name(n)) ?? 0) + count);
    const seen = new Set();
    for (let cur = nodeId; cur !== undefined; cur = parent.get(cur)) {
      const nm = name(byId.get(cur));
      if (seen.has(nm)) continue;
      seen.add(nm);
      incl.set(nm, (incl.get(nm) ?? 0) + count);
    }
  }
  const pct = (c) => `${((100 * c) / total).toFixed(1).padStart(5)} %`;
  console.log(`\n${result.requests} requests in ${SECONDS} s (${KIND}), ${cpuPerReq.toFixed(3)} ms workerd CPU per request; ${total} samples`);
  console.log(`\nself time (top ${TOP}):`);
  for (const [n, c] of [...self].sort((a, b) => b[1] - a[1]).slice(0, TOP)) console.log(`  ${pct(c)}  ${n}`);
  // Who calls the biggest self-time entries (the costliest stack prefixes).
  const callers = new Map();
  for (const [nodeId, count] of counts) {
    const n = byId.get(nodeId);
    const chain = [];
    for (let cur = parent.get(nodeId); cur !== undefined && chain.length < 3; cur = parent.get(cur)) chain.push(name(byId.get(cur)).slice(0, 60));
    const k = `${name(n)}  <-  ${chain.join('  <-  ')}`;
    callers.set(k, (callers.get(k) ?? 0) + count);
  }
  console.log(`\nself time by caller chain (top ${TOP}):`);
  for (const [n, c] of [...callers].sort((a, b) => b[1] - a[1]).slice(0, TOP)) console.log(`  ${pct(c)}  ${n}`);
  console.log(`\ninclusive time (top ${TOP}):`);
  for (const [n, c] of [...incl].sort((a, b) => b[1] - a[1]).slice(0, TOP)) console.log(`  ${pct(c)}  ${n}`);
}

main().catch((e) => { console.error(e); stopAll(); process.exit(1); });
