// The measuring half of scripts/bench (which installs tools and builds first).
//
// Runs the built gateway as deployed (src/edge/entry.mjs over build/index.js
// and build/index_bg.wasm) on plain `workerd serve`, beside a minimal
// pass-through worker (passthrough.js) in the same workerd process, in
// front of the same loopback upstreams: nginx
// answering a fixed chat.completion for plain JSON, the mock provider
// (tests/mock/server.mjs, in this process) for streams and failover. Prints
// each figure next to its baseline and the command that produced it, then
// writes tests/bench/BENCHMARKS.md. Every child runs in its own process
// group, recorded in $BENCH_PIDFILE, and is stopped on exit or signal.
//
//   node tests/bench/run.mjs [--quick]

import { spawn, execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

import { startMock } from '../mock/server.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const HERE = path.join(ROOT, 'tests/bench');
const BIN = path.join(ROOT, 'node_modules/.bin');
const WORKERD = path.join(ROOT, 'node_modules/@cloudflare/workerd-linux-64/bin/workerd');
const OUT = path.join(HERE, 'BENCHMARKS.md');

const QUICK = process.argv.includes('--quick');
/** Runs per figure; each figure is the median of these, shown with min–max. */
const RUNS = QUICK ? 1 : 3;
/**
 * Fixed-count runs (latency at 1 connection, CPU per request) take as many
 * requests as this many seconds allow at the rate a calibration run
 * measured, within bounds: the whole benchmark then stays within its time
 * budget on a slow or busy machine, and each run still covers a known count.
 */
const FIXED_SECONDS = QUICK ? 1 : 2;
/**
 * Seconds of 16-connection load on a path before its first measurement
 * (steady state). V8 runs new wasm in its baseline compiler (Liftoff) and
 * moves a function to its optimizing one (TurboFan) only once the function
 * has run enough; one called once per request needs tens of thousands of
 * requests. A deployed isolate serving traffic is past that; after the old
 * 2 s warm-up `perf` still found 14 µs a request in Liftoff code plus 7 µs
 * of its frame setup, after 30 s under 1 µs (tests/bench/README.md).
 */
const STEADY_SECONDS = QUICK ? 10 : 20;
/**
 * Section 1a's paired rounds: fixed-count runs at 1 connection, the
 * pass-through and the gateway back to back (the order alternating), each
 * pair's difference taken. This machine's drift moves both sides of a pair
 * together, so the median of the pairs' differences is steadier than the
 * difference of the medians of three runs each (whose spread reached
 * 0.13 ms on one side); both are printed.
 */
const PAIRS = QUICK ? 3 : 9;
const MIN_FIXED = 200;
const MAX_FIXED = 5000;
/** `--only=1a,4`: just those sections (BENCHMARKS.md is then not written). */
const ONLY = process.argv.find((a) => a.startsWith('--only='))?.slice('--only='.length).split(',');
const wanted = (id) => !ONLY || ONLY.includes(String(id));
/** Seconds of each throughput run. */
const DURATION = QUICK ? 1 : 2;
/** The streams: 100 content chunks, this far apart. */
const CHUNKS = 100;
// Section 2's first tokens are timed on short streams, many of them: a
// 100-chunk stream takes half a second, and three of them a path moved the
// figure by more than a millisecond between runs of one build.
const FIRST_MODEL = 'mock-model;chunks=30,interval_ms=0'; // 30: the mock's numbered tokens
const FIRST_ROUNDS = QUICK ? 15 : 40;
const FIRST_WARM = 20;
const INTERVAL_MS = 5;
const LARGE_BODY = 16 * 1024;

const COMPAT_DATE = '2026-10-01';
/** Section 12: the primary's and the backup's time to first byte, and the hedge's delay. */
const HEDGE_PRIMARY_MS = 600;
const HEDGE_BACKUP_MS = 50;
const HEDGE_AFTER_MS = 100;
const HEDGE_TARGETS = [
  { provider: 'mock', model: `slow-primary;first_byte_delay_ms=${HEDGE_PRIMARY_MS},chunks=3` },
  { provider: 'mock', model: `quick-backup;first_byte_delay_ms=${HEDGE_BACKUP_MS},chunks=3` },
];
/** Section 8: every reply of the far gateway's key objects waits this long. */
const FAR_DELAY_MS = 150;
const GATEWAY_KEY = 'sk-bench-gateway-key-0001';
const ADMIN_TOKEN = 'bench-admin-token';
const UPSTREAM_KEY = 'sk-bench-upstream-key-0001';
const AUTH = `Bearer ${GATEWAY_KEY}`;
const NA_ANTHROPIC = 'n/a (provider kind not in this build)';

// ---------------------------------------------------------------------------
// Processes: each child in its own group, all stopped whatever happens
// ---------------------------------------------------------------------------

const children = new Set();

/** Lists the live children's process groups for scripts/bench's trap (only
 * live ones: a finished child's id may be reused by someone else's process). */
function syncPidfile() {
  if (!process.env.BENCH_PIDFILE) return;
  writeFileSync(process.env.BENCH_PIDFILE, [...children].map((c) => `${c.pid}\n`).join(''));
}

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** Starts a child in its own process group; output goes to `logFile`. */
function start(name, cmd, args, { logFile, env, cwd = ROOT } = {}) {
  const child = spawn(cmd, args, {
    cwd,
    env: { ...process.env, ...env },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  syncPidfile();
  child.name = name;
  child.output = '';
  const keep = (d) => {
    child.output += d;
    if (child.output.length > 200_000) child.output = child.output.slice(-100_000);
    if (logFile) appendFileSync(logFile, d);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.exited.then(() => {
    children.delete(child);
    syncPidfile();
  });
  return child;
}

async function stop(child) {
  if (!children.has(child)) return;
  killGroup(child, 'SIGTERM');
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 3000);
  await child.exited;
  clearTimeout(timer);
  killGroup(child, 'SIGKILL'); // grandchildren that outlived their parent
  // ...and wait until they are gone (reaped), so nothing is left behind.
  for (let i = 0; i < 50 && groupPids(child.pid).length > 0; i++) await sleep(100);
}

async function stopAll() {
  await Promise.all([...children].map(stop));
}

/** Temp dirs to remove at the end, whatever the end is. */
const tempDirs = new Set();

function removeTempDirs() {
  for (const dir of tempDirs) {
    if (process.env.BENCH_KEEP_TMP) console.log(`[bench] kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
  tempDirs.clear();
}

process.on('exit', () => {
  for (const child of children) killGroup(child, 'SIGKILL');
  removeTempDirs();
});
let stopping = false;
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    console.error(`\n[bench] ${signal}: stopping everything started`);
    stopAll().finally(() => process.exit(code));
  });
}

/** Runs a command to completion; resolves with its output. */
async function run(name, cmd, args, opts = {}) {
  const child = start(name, cmd, args, opts);
  const { code, signal } = await child.exited;
  if (code !== 0) throw new Error(`${name} failed (${signal ?? `exit ${code}`}):\n${child.output.slice(-4000)}`);
  return child.output;
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
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

async function waitFor(url, child, { timeoutMs = 60_000, init } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && !children.has(child)) throw new Error(`${child.name} exited early:\n${child.output.slice(-4000)}`);
    try {
      const res = await fetch(url, init);
      await res.arrayBuffer();
      if (res.status < 500) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${url} did not answer in ${timeoutMs} ms:\n${child?.output.slice(-4000) ?? ''}`);
    await sleep(100);
  }
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

/** utime+stime of the processes, in ms (all threads, from /proc/PID/stat). */
function cpuMs(pids) {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // fields 14 and 15: utime, stime
    } catch {
      // exited
    }
  }
  return (ticks * 1000) / CLK_TCK;
}

/** The live processes of a process group (wrangler dev is several). */
function groupPids(pgid) {
  const pids = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(f[2]) === pgid) pids.push(Number(entry)); // field 5: pgrp
    } catch {
      // exited
    }
  }
  return pids;
}

// ---------------------------------------------------------------------------
// Statistics and formatting
// ---------------------------------------------------------------------------

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** { med, min, max } of the runs' values. */
function stat(xs) {
  return { med: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

function num(x, digits) {
  if (!Number.isFinite(x)) return 'n/a';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** "0.62 ms (0.60–0.65)": median with the runs' range. */
function fmt(s, unit, digits = 2) {
  if (typeof s === 'string') return s;
  if (s.n === 1) return `${num(s.med, digits)} ${unit}`;
  return `${num(s.med, digits)} ${unit} (${num(s.min, digits)}–${num(s.max, digits)})`;
}

function signed(x, unit, digits = 2) {
  if (!Number.isFinite(x)) return 'n/a';
  return `${x >= 0 ? '+' : '−'}${num(Math.abs(x), digits)} ${unit}`;
}

const verdict = (ok) => (ok ? 'met' : '**missed**');

// ---------------------------------------------------------------------------
// The report: printed as measured, written as markdown at the end
// ---------------------------------------------------------------------------

const sections = [];
let current = null;

function section(id, title, intro) {
  current = { id, title, intro, rows: [], commands: [], notes: [] };
  sections.push(current);
  console.log(`\n\x1b[1m[${id}] ${title}\x1b[0m`);
}

/** One figure: the gateway's value, the baseline's, the difference, the target. */
function row(figure, gateway, baseline = '', added = '', target = '', met = '') {
  current.rows.push({ figure, gateway, baseline, added, target, met });
  const parts = [`  ${figure.padEnd(34)} gateway ${gateway}`];
  if (baseline) parts.push(`baseline ${baseline}`);
  if (added) parts.push(`added ${added}`);
  if (target) parts.push(`target ${target} → ${met.replaceAll('*', '')}`);
  console.log(parts.join(' | '));
}

function command(text) {
  if (!current.commands.includes(text)) current.commands.push(text);
  console.log(`    $ ${text}`);
}

function note(text) {
  current.notes.push(text);
  console.log(`    note: ${text}`);
}

// ---------------------------------------------------------------------------
// Load generation: wrk
// ---------------------------------------------------------------------------

/**
 * One wrk run against `url`. `requests` > 0: a fixed count at `connections`
 * (latency, CPU per request); else `duration` seconds (throughput). Returns
 * wrk's figures and the CPU the processes `cpuPids()` used meanwhile.
 */
async function wrk({ url, connections = 1, requests = 0, duration = DURATION, method = 'GET', bodyFile = '', auth = '', unique = '', cpuPids }) {
  const env = {
    BENCH_METHOD: method,
    BENCH_BODY_FILE: bodyFile,
    BENCH_AUTH: auth,
    BENCH_REQUESTS: String(requests),
    BENCH_UNIQUE: unique,
  };
  const args = ['-t1', `-c${connections}`, `-d${requests > 0 ? 60 : duration}s`, '--timeout', '10s', '-s', path.join(HERE, 'wrk.lua'), url];
  const pids = cpuPids();
  const cpu0 = cpuMs(pids);
  const child = start('wrk', 'wrk', args, { env });
  if (requests > 0) {
    const onData = (d) => {
      if (String(d).includes('BENCH_REACHED')) {
        child.stdout.off('data', onData);
        killGroup(child, 'SIGINT'); // wrk stops, then prints its summary
      }
    };
    child.stdout.on('data', onData);
  }
  const { code, signal } = await child.exited;
  const cpu1 = cpuMs(pids);
  const out = child.output;
  if (code !== 0) throw new Error(`wrk failed (${signal ?? `exit ${code}`}):\n${out.slice(-4000)}`);
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (!line) throw new Error(`wrk printed no result:\n${out}`);
  const r = JSON.parse(line.slice('BENCH_JSON '.length));
  const errors = r.non2xx + r.connect_errors + r.read_errors + r.write_errors + r.timeouts;
  if (errors > 0) {
    console.log(`    WARNING: ${errors} failed requests (${r.non2xx} non-2xx, ${r.connect_errors + r.read_errors + r.write_errors} socket errors, ${r.timeouts} timeouts) from ${url}`);
  }
  return {
    requests: r.requests,
    rps: r.requests / (r.duration_us / 1e6),
    p50: r.p50_us / 1000,
    p99: r.p99_us / 1000,
    cpuPerReq: (cpu1 - cpu0) / r.requests,
    errors,
  };
}

/** The command line a wrk run corresponds to, for the report. */
function wrkCommand({ target, connections, requests = 0, method = 'GET', body = '', unique = false, path: p, comment = '' }) {
  const env = [`BENCH_METHOD=${method}`];
  if (body) env.push(`BENCH_BODY_FILE=${body}`);
  if (unique) env.push('BENCH_UNIQUE=$RUN');
  env.push(`BENCH_AUTH='Bearer $KEY'`);
  if (requests) env.push(`BENCH_REQUESTS=${requests}`);
  const d = requests ? '-d60s' : `-d${DURATION}s`;
  const notes = [requests ? 'SIGINT after BENCH_REACHED' : '', comment].filter(Boolean).join('; ');
  return `${env.join(' ')} wrk -t1 -c${connections} ${d} --timeout 10s -s tests/bench/wrk.lua ${target}${p}${notes ? `   # ${notes}` : ''}`;
}

// ---------------------------------------------------------------------------
// The set-up: nginx, mock, one workerd with every worker
// ---------------------------------------------------------------------------

/** A realistic chat body of about `size` bytes. */
function chatBody(model, size, extra = {}) {
  const messages = [{ role: 'system', content: 'You are a helpful assistant. Answer briefly.' }];
  let i = 0;
  const text = () => `Turn ${i}: the quick brown fox jumps over the lazy dog, "quoted" and café too.`;
  do {
    messages.push({ role: i % 2 ? 'assistant' : 'user', content: text() });
    i++;
  } while (JSON.stringify({ model, messages, ...extra }).length < size);
  return JSON.stringify({ model, messages, temperature: 0.2, max_tokens: 256, ...extra });
}

/** What nginx answers to every request: a fixed OpenAI chat.completion. */
const COMPLETION = JSON.stringify({
  id: 'chatcmpl-bench',
  object: 'chat.completion',
  created: 1763700000,
  model: 'bench-model',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from nginx.' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 },
});

function nginxConf(dir, port) {
  return `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/nginx-body;
  proxy_temp_path ${dir}/nginx-proxy;
  fastcgi_temp_path ${dir}/nginx-fastcgi;
  uwsgi_temp_path ${dir}/nginx-uwsgi;
  scgi_temp_path ${dir}/nginx-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_max_body_size 16m;
  client_body_buffer_size 128k;
  server {
    listen 127.0.0.1:${port};
    location / {
      default_type application/json;
      return 200 '${COMPLETION}';
    }
  }
}
`;
}

function gatewayConfig({ nginx, mock }) {
  const provider = (base_url) => ({ kind: 'openai-compatible', base_url, api_key_secret: 'UPSTREAM_KEY' });
  return {
    version: 1,
    revision: 'bench',
    providers: {
      nginx: provider(`http://127.0.0.1:${nginx}/v1`),
      mock: provider(`http://127.0.0.1:${mock}/v1`),
      'mock-503': provider(`http://127.0.0.1:${mock}/_mock/status=503/v1`),
      demo: { kind: 'mock' },
    },
    models: {
      bench: { targets: [{ provider: 'nginx', model: 'bench-model' }] },
      stream: { targets: [{ provider: 'mock', model: `mock-model;chunks=${CHUNKS},interval_ms=${INTERVAL_MS}` }] },
      // Section 2's first tokens: many short streams.
      first: { targets: [{ provider: 'mock', model: FIRST_MODEL }] },
      // A 20-chunk stream as fast as the mock writes it: the cost per chunk.
      stream20: { targets: [{ provider: 'mock', model: 'mock-model;chunks=20,interval_ms=0' }] },
      // Answered inside the worker: admission without an upstream's cost.
      demo: { targets: [{ provider: 'demo', model: 'demo-1' }] },
      healthy: { targets: [{ provider: 'mock', model: 'mock-model' }] },
      failover: {
        targets: [
          { provider: 'mock-503', model: 'mock-model' },
          { provider: 'mock', model: 'mock-model' },
        ],
      },
      // Section 11: nginx's answer, cached per key.
      cached: { targets: [{ provider: 'nginx', model: 'bench-model' }], cache: { ttl_s: 3600, scope: 'key' } },
      // Section 12: a primary slow to its first token, a quick backup.
      hedged: { targets: HEDGE_TARGETS, hedge: { after_ms: HEDGE_AFTER_MS, max_extra: 1 } },
      unhedged: { targets: HEDGE_TARGETS },
    },
    limits: { max_body_bytes: 8 * 1024 * 1024 },
  };
}

/** A separate document: if this build lacks the kind, only it is rejected. */
function anthropicConfig({ mock }) {
  return {
    version: 1,
    revision: 'bench-anthropic',
    providers: {
      anthropic: { kind: 'anthropic', base_url: `http://127.0.0.1:${mock}`, api_key_secret: 'UPSTREAM_KEY' },
    },
    models: {
      'stream-anthropic': { targets: [{ provider: 'anthropic', model: `mock-model;chunks=${CHUNKS},interval_ms=${INTERVAL_MS}` }] },
      'first-anthropic': { targets: [{ provider: 'anthropic', model: FIRST_MODEL }] },
    },
  };
}

const capnpStr = (s) => JSON.stringify(s);

function workerdCapnp(p) {
  // `objects`: the KeyObject namespace to bind, hosted here or by another
  // service (two gateway instances sharing one key's object).
  const gateway = (kv, { objects = null, extra = [], cache = false } = {}) => `(
    modules = [
      (name = "entry.mjs", esModule = embed "entry.mjs"),
      (name = "index.js", esModule = embed "index.js"),
      (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
    ],
    compatibilityDate = "${COMPAT_DATE}",
    bindings = [
      (name = "GATEWAY_CONFIG", kvNamespace = (name = "${kv}")),
      (name = "KEY_OBJECTS", durableObjectNamespace = (className = "KeyObject"${objects ? `, serviceName = "${objects}"` : ''})),
      (name = "ANALYTICS", durableObjectNamespace = (className = "AnalyticsObject"${objects ? `, serviceName = "${objects}"` : ''})),
      (name = "ALERTS", durableObjectNamespace = (className = "AlertsObject"${objects ? `, serviceName = "${objects}"` : ''})),
      (name = "GATEWAY_KEYS", text = ${capnpStr(GATEWAY_KEY)}),
      (name = "ADMIN_TOKEN", text = ${capnpStr(ADMIN_TOKEN)}),
      (name = "CONFIG_CACHE_TTL_MS", text = "3600000"),
      (name = "UPSTREAM_KEY", text = ${capnpStr(UPSTREAM_KEY)}),
      (name = "GATEWAY_TEST_HOOKS", text = "1"),
      ${extra.map(([k, v]) => `(name = "${k}", text = ${capnpStr(v)}),`).join('\n      ')}
    ],
    ${objects ? '' : `durableObjectNamespaces = [
      (className = "KeyObject", uniqueKey = "bench-${kv}-key-objects", enableSql = true),
      (className = "AnalyticsObject", uniqueKey = "bench-${kv}-analytics", enableSql = true),
      (className = "AlertsObject", uniqueKey = "bench-${kv}-alerts", enableSql = true),
    ],
    durableObjectStorage = (localDisk = "do-storage"),`}
    globalOutbound = "loopback",${cache ? '\n    cacheApiOutbound = "cache",' : ''}
  )`;
  const passthrough = (upstream) => `(
    modules = [(name = "passthrough.js", esModule = embed "passthrough.js")],
    compatibilityDate = "${COMPAT_DATE}",
    bindings = [(name = "UPSTREAM", text = "${upstream}")],
    globalOutbound = "loopback",
  )`;
  const kv = (file) => `(
    modules = [(name = "kv.js", esModule = embed "kv.js")],
    compatibilityDate = "${COMPAT_DATE}",
    bindings = [(name = "CONFIG", text = embed "${file}")],
  )`;
  const socket = (name, port) => `(name = "${name}", address = "127.0.0.1:${port}", http = (), service = "${name}")`;
  return `# Generated by tests/bench/run.mjs: the gateway, its baselines and a KV
# service on plain workerd, one process.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "gateway", worker = ${gateway('kv', { cache: true })}),
    (name = "gateway-b", worker = ${gateway('kv', { objects: 'gateway' })}),
    (name = "gateway-far", worker = ${gateway('kv-far', { extra: [['GATEWAY_TEST_KEY_DELAY_MS', String(FAR_DELAY_MS)]] })}),
    (name = "gateway-anthropic", worker = ${gateway('kv-anthropic')}),
    (name = "pass-nginx", worker = ${passthrough(`http://127.0.0.1:${p.nginx}`)}),
    (name = "pass-mock", worker = ${passthrough(`http://127.0.0.1:${p.mock}`)}),
    (name = "do-floor", worker = (
      modules = [(name = "do-floor.js", esModule = embed "do-floor.js")],
      compatibilityDate = "${COMPAT_DATE}",
      bindings = [(name = "FLOOR_OBJECTS", durableObjectNamespace = (className = "FloorObject"))],
      durableObjectNamespaces = [(className = "FloorObject", uniqueKey = "bench-floor-objects", enableSql = true)],
      durableObjectStorage = (localDisk = "do-storage"),
    )),
    (name = "kv", worker = ${kv('config.json')}),
    (name = "kv-far", worker = ${kv('config.json')}),
    (name = "kv-anthropic", worker = ${kv('config-anthropic.json')}),
    (name = "cache", worker = (
      modules = [(name = "cache.js", esModule = embed "cache.js")],
      compatibilityDate = "${COMPAT_DATE}",
    )),
    (name = "loopback", network = (allow = ["local"])),
    (name = "do-storage", disk = (path = ${capnpStr(p.doDir)}, writable = true)),
  ],
  sockets = [
    ${socket('gateway', p.gateway)},
    ${socket('gateway-b', p.gatewayB)},
    ${socket('gateway-far', p.gatewayFar)},
    ${socket('gateway-anthropic', p.gatewayAnthropic)},
    ${socket('pass-nginx', p.passNginx)},
    ${socket('pass-mock', p.passMock)},
    ${socket('do-floor', p.doFloor)},
  ],
);
`;
}

// ---------------------------------------------------------------------------
// Streams: a node:http client that timestamps every `data:` line
// ---------------------------------------------------------------------------

// The mock runs in this process, so its writes and the client's reads share
// one clock: each content chunk's transit time (written by the upstream ->
// read by the client) is exact, and so is any gap the path adds.
const tokWrites = new Map();
const originalWrite = http.ServerResponse.prototype.write;
http.ServerResponse.prototype.write = function write(chunk, ...rest) {
  if (typeof chunk === 'string' && chunk.includes('tok')) {
    const t = performance.now();
    for (const m of chunk.matchAll(/tok(\d+)/g)) tokWrites.set(Number(m[1]), t);
  }
  return originalWrite.call(this, chunk, ...rest);
};

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

/** POSTs `body` and reads the answer; times the first `data:` line and every token. */
function streamOnce(url, body, headers = {}) {
  tokWrites.clear();
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.request(url, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let buf = '';
      let firstData = null;
      const arrive = new Map();
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        const t = performance.now();
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.startsWith('data:')) continue;
          firstData ??= t;
          for (const m of line.matchAll(/tok(\d+)/g)) if (!arrive.has(Number(m[1]))) arrive.set(Number(m[1]), t);
        }
      });
      res.on('error', reject);
      res.on('end', () => {
        const writes = new Map(tokWrites);
        // Time to first token: when `tok0` arrived. The gateway holds a
        // role-only first chunk back until the first token (so a provider
        // failing before it can still be replaced unseen), while a raw
        // upstream's first `data:` line is its first event; first token to
        // first token is the fair comparison.
        const ttft = arrive.has(0) ? arrive.get(0) - t0 : NaN;
        resolve({ status: res.statusCode, headers: res.headers, ttfd: firstData === null ? NaN : firstData - t0, ttft, total: performance.now() - t0, arrive, writes });
      });
    });
    req.end(body);
  });
}

/** Per-stream figures: first data line, largest transit, largest added gap. */
function streamFigures(r) {
  const transits = [];
  let maxAddedGap = 0;
  let beforeNext = 0;
  for (let i = 0; i < CHUNKS; i++) {
    const a = r.arrive.get(i);
    const w = r.writes.get(i);
    if (a === undefined || w === undefined) return { ...r, complete: false };
    const transit = a - w;
    if (i > 0) maxAddedGap = Math.max(maxAddedGap, transit - transits[i - 1]);
    transits.push(transit);
    // Passed on before the upstream even wrote its successor: not held back.
    if (i + 1 < CHUNKS && a < r.writes.get(i + 1)) beforeNext++;
  }
  return {
    ttfd: r.ttfd,
    ttft: r.ttft,
    medianTransit: median(transits),
    maxTransit: Math.max(...transits),
    maxAddedGap,
    beforeNextPct: (100 * beforeNext) / (CHUNKS - 1),
    complete: true,
  };
}

/** A whole request/response time (the upstream's own round trip). */
function roundTrip(url, body) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } });
    req.on('error', reject);
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - t0 }));
    });
    req.end(body);
  });
}

// ---------------------------------------------------------------------------
// The measurements
// ---------------------------------------------------------------------------

async function nativeCore() {
  section(5, 'Pure core, natively (no runtime)', 'The sans-IO core compiled for the host, timed in-process: parse → route → build the upstream request, and translating a 100-chunk stream.');
  const args = ['test', '--release', '--lib', 'bench', '--', '--ignored', '--nocapture', '--test-threads=1'];
  command(`cargo ${args.join(' ')}`);
  const out = await run('cargo', 'cargo', args, { env: { CARGO_TERM_COLOR: 'never' } });
  const results = new Map();
  for (const line of out.split('\n')) {
    const m = line.match(/BENCH (\S+) (.*)/);
    if (!m) continue;
    const kv = Object.fromEntries(m[2].split(' ').map((p) => p.split('=')).map(([k, v]) => [k, Number(v)]));
    results.set(m[1], kv);
  }
  const show = (name, label) => {
    const r = results.get(name);
    if (!r) return row(label, 'n/a (not printed by the bench)');
    row(label, `${num(r.us_per_op, 2)} µs/op (${num(r.min, 2)}–${num(r.max, 2)}), ${num(r.mb_per_s, 0)} MB/s of ${num(r.bytes, 0)} B`);
  };
  show('parse_route_build_small', 'parse → route → build, 266 B body');
  show('parse_route_build_16k', 'parse → route → build, 16 KB body');
  show('stream_openai_passthrough_100_chunks', 'OpenAI stream, 100 chunks, pass-through');
  note('Median of 7 timed batches (min–max across batches) after a warm-up; native x86-64, not wasm on V8. The Anthropic translation joins this bench once that adapter is in the tree.');
}

function sizes() {
  section(6, 'Size', 'The release wasm worker-build produced, raw and gzip -9.');
  const wasm = path.join(ROOT, 'build/index_bg.wasm');
  const js = path.join(ROOT, 'build/index.js');
  const raw = readFileSync(wasm).length;
  const gz = gzipSync(readFileSync(wasm), { level: 9 }).length;
  const jsGz = gzipSync(readFileSync(js), { level: 9 }).length;
  command('wc -c build/index_bg.wasm; gzip -9 -c build/index_bg.wasm | wc -c');
  row('wasm raw', `${num(raw / 1024, 1)} KiB (${raw} B)`);
  row('wasm gzip', `${num(gz / 1024, 1)} KiB (${gz} B)`, '', '', '≤ 800 KB gzip', verdict(gz <= 800 * 1000));
  row('JS glue (index.js) gzip', `${num(jsGz / 1024, 1)} KiB`);
  return { raw, gz };
}

/** Non-stream cost, gateway vs pass-through, through nginx. */
/** Warms a path up (JIT, wasm tier-up, connection pools) and sizes its fixed-count runs. */
async function warmAndSize(common, url, { c16 = true, steady = false } = {}) {
  if (steady) await wrk({ ...common, url, connections: 16, duration: STEADY_SECONDS });
  else if (c16) await wrk({ ...common, url, connections: 16, duration: 1 });
  const calibration = await wrk({ ...common, url, connections: 1, duration: 1 });
  return Math.max(MIN_FIXED, Math.min(MAX_FIXED, Math.round(calibration.rps * FIXED_SECONDS)));
}

async function nonStream(env, { label, bodyFile }) {
  const bodyBytes = readFileSync(bodyFile).length;
  section(label.id, `Non-stream cost, ${label.name} (${num(bodyBytes, 0)} B request body)`,
    'POST /v1/chat/completions through the gateway vs the pass-through worker, both on the same workerd process, both to the same nginx answering a fixed chat.completion.');
  const targets = [
    { key: 'pass', url: `http://127.0.0.1:${env.ports.passNginx}/v1/chat/completions` },
    { key: 'gw', url: `http://127.0.0.1:${env.ports.gateway}/v1/chat/completions` },
  ];
  const common = { method: 'POST', bodyFile, auth: AUTH, cpuPids: () => [env.workerd.pid] };
  const fixed = {};
  // The first section to run warms both to steady state (STEADY_SECONDS).
  for (const t of targets) fixed[t.key] = await warmAndSize(common, t.url, { steady: label.id === '1a' });
  const runs = { pass: [], gw: [] };
  for (let r = 0; r < RUNS; r++) {
    for (const t of targets) {
      const one = await wrk({ ...common, url: t.url, connections: 1, requests: fixed[t.key] });
      const c16 = await wrk({ ...common, url: t.url, connections: 16 });
      const c64 = await wrk({ ...common, url: t.url, connections: 64 });
      runs[t.key].push({ one, c16, c64 });
    }
  }
  const s = (key, f) => stat(runs[key].map(f));
  const p50 = { gw: s('gw', (x) => x.one.p50), pass: s('pass', (x) => x.one.p50) };
  const p99 = { gw: s('gw', (x) => x.one.p99), pass: s('pass', (x) => x.one.p99) };
  const cpu = { gw: s('gw', (x) => x.one.cpuPerReq), pass: s('pass', (x) => x.one.cpuPerReq) };
  const small = label.id === '1a';
  row('CPU per request (workerd, 1 conn), static key', fmt(cpu.gw, 'ms', 3), fmt(cpu.pass, 'ms', 3), signed(cpu.gw.med - cpu.pass.med, 'ms', 3), small ? '≤ +0.25 ms' : '', small ? verdict(cpu.gw.med - cpu.pass.med <= 0.25) : '');
  if (small) {
    const pairs = { pass: [], gw: [], added: [] };
    for (let r = 0; r < PAIRS; r++) {
      const order = r % 2 ? [targets[1], targets[0]] : targets;
      const got = {};
      for (const t of order) got[t.key] = (await wrk({ ...common, url: t.url, connections: 1, requests: fixed[t.key] })).cpuPerReq;
      pairs.pass.push(got.pass);
      pairs.gw.push(got.gw);
      pairs.added.push(got.gw - got.pass);
    }
    const added = stat(pairs.added);
    row(`same, ${PAIRS} paired runs: median of the pairs' differences`, fmt(stat(pairs.gw), 'ms', 3), fmt(stat(pairs.pass), 'ms', 3), `${signed(added.med, 'ms', 3)} (${signed(added.min, 'ms', 3)} to ${signed(added.max, 'ms', 3)})`, '≤ +0.25 ms', verdict(added.med <= 0.25));
  }
  row('p50 latency, 1 connection', fmt(p50.gw, 'ms', 3), fmt(p50.pass, 'ms', 3), signed(p50.gw.med - p50.pass.med, 'ms', 3));
  row('p99 latency, 1 connection', fmt(p99.gw, 'ms', 3), fmt(p99.pass, 'ms', 3), signed(p99.gw.med - p99.pass.med, 'ms', 3));
  for (const [k, c] of [['one', 1], ['c16', 16], ['c64', 64]]) {
    const gw = s('gw', (x) => x[k].rps);
    const pass = s('pass', (x) => x[k].rps);
    const ratio = gw.med / pass.med;
    const target = small && c === 16;
    row(`throughput, ${c} connection${c > 1 ? 's' : ''}`, fmt(gw, 'req/s', 0), fmt(pass, 'req/s', 0), `${num(ratio, 2)}×`, target ? '≥ 0.5×' : '', target ? verdict(ratio >= 0.5) : '');
  }
  for (const [k, c] of [['c16', 16], ['c64', 64]]) {
    const gw = s('gw', (x) => x[k].cpuPerReq);
    const pass = s('pass', (x) => x[k].cpuPerReq);
    row(`CPU per request, ${c} connections`, fmt(gw, 'ms', 3), fmt(pass, 'ms', 3), signed(gw.med - pass.med, 'ms', 3));
  }
  const rel = path.relative(ROOT, bodyFile).replace(/^.*\//, '$TMP/');
  command(wrkCommand({ target: '$GATEWAY', connections: 1, requests: fixed.gw, method: 'POST', body: rel, path: '/v1/chat/completions', comment: 'and $PASSTHROUGH; CPU = Δ(utime+stime) of workerd / requests' }));
  command(wrkCommand({ target: '$GATEWAY', connections: 16, method: 'POST', body: rel, path: '/v1/chat/completions', comment: 'and -c64; and $PASSTHROUGH' }));
  note(`${small ? `After ${STEADY_SECONDS} s at 16 connections on each (steady state: the gateway's hot wasm past V8's baseline compiler), ${RUNS}` : RUNS} runs, alternating pass-through and gateway; each value is the median run (min–max). Fixed-count runs at 1 connection: ${fixed.gw} requests through the gateway, ${fixed.pass} through the pass-through (about ${FIXED_SECONDS} s each at the rate a calibration run measured).${small ? ` Then ${PAIRS} more such runs of each in pairs, back to back (the order alternating): each pair's difference is the gateway's added CPU with the machine's drift taken out; the second row gives the median of those differences (min to max), the first the difference of the medians.` : ''} A static key: no admission; its usage reaches its object in one batch a second, whose CPU is in the figures (same process). For reference, Portkey's Workers build measured on this machine by the issue: +0.31 ms at 1 connection, 0.44× at 16.`);
  const errors = Object.values(runs).flat().reduce((n, x) => n + x.one.errors + x.c16.errors + x.c64.errors, 0);
  if (errors) note(`${errors} requests failed during these runs; the figures above are suspect.`);
}

/** A virtual key on gateway `url` (POST /admin/keys); its `Bearer` header. */
async function createKey(url, settings) {
  const res = await fetch(`${url}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'bench', ...settings }),
  });
  if (res.status !== 201) throw new Error(`POST /admin/keys answered ${res.status}: ${await res.text()}`);
  const { key, secret } = await res.json();
  return { id: key.id, auth: `Bearer ${secret}` };
}

/** What one gateway isolate asked of key objects so far (`/__test/stats`). */
async function isolateStats(url) {
  return (await fetch(`${url}/__test/stats`)).json();
}

async function durableObject(env, bodyFile) {
  section(4, 'Virtual keys: admission from leases, batched accounting',
    'A virtual key with rpm, tpm and a budget under steady load. Its isolate admits from a lease on the key\'s limits, granted by the key\'s object and renewed in the background, and reports usage in one batch a second: no object call on the request path in steady state. Beside it: the pass-through (what the key costs over nothing at all) and the static key (what admission costs over no admission). The object is SQLite-backed in the same workerd process, so its CPU is in the figures. Also one object read (`GET /v1/usage`) and the runtime\'s floor for a Durable Object read and write from a minimal JavaScript worker ([`do-floor.js`](do-floor.js)).');
  const gw = `http://127.0.0.1:${env.ports.gateway}`;
  const floor = `http://127.0.0.1:${env.ports.doFloor}`;
  const key = await createKey(gw, {
    limits: { rpm: 100000000, tpm: 100000000000 },
    budgets: { total_usd: 1000000 },
  });
  // Its own key for the usage read: a read sends the isolate's batch first.
  const reader = await createKey(gw, { budgets: { total_usd: 1000000 } });
  const cpuPids = () => [env.workerd.pid];
  const endpoints = {
    pass: { url: `http://127.0.0.1:${env.ports.passNginx}/v1/chat/completions`, auth: AUTH, method: 'POST', bodyFile },
    chatStatic: { url: `${gw}/v1/chat/completions`, auth: AUTH, method: 'POST', bodyFile },
    chatVirtual: { url: `${gw}/v1/chat/completions`, auth: key.auth, method: 'POST', bodyFile },
    health: { url: `${gw}/health`, auth: AUTH },
    usage: { url: `${gw}/v1/usage`, auth: reader.auth },
    floorHealth: { url: `${floor}/health`, auth: AUTH },
    floorUsage: { url: `${floor}/usage`, auth: AUTH },
    floorAdmit: { url: `${floor}/admit`, auth: AUTH },
  };
  const fixed = {};
  // The virtual key's path (leases, batches) to steady state too.
  for (const [k, e] of Object.entries(endpoints)) fixed[k] = await warmAndSize({ ...e, cpuPids }, e.url, { c16: false, steady: k === 'chatVirtual' });
  const runs = Object.fromEntries(Object.keys(endpoints).map((k) => [k, []]));
  // Calls to key objects during the virtual key's runs only.
  const calls = { from_lease: 0, serial: 0, overlapped: 0, syncs: 0 };
  let virtualRequests = 0;
  for (let r = 0; r < RUNS; r++) {
    for (const [k, e] of Object.entries(endpoints)) {
      const before = k === 'chatVirtual' ? await isolateStats(gw) : null;
      const one = await wrk({ ...e, cpuPids, connections: 1, requests: fixed[k] });
      if (before) {
        const after = await isolateStats(gw);
        for (const c of Object.keys(calls)) calls[c] += after[c] - before[c];
        virtualRequests += one.requests;
      }
      runs[k].push({ one });
    }
  }
  const s = (k, f) => stat(runs[k].map(f));
  const fig = (k) => ({ p50: s(k, (x) => x.one.p50), p99: s(k, (x) => x.one.p99), cpu: s(k, (x) => x.one.cpuPerReq) });
  const f = Object.fromEntries(Object.keys(endpoints).map((k) => [k, fig(k)]));
  const v = f.chatVirtual;
  row('CPU per request, virtual key (rpm, tpm, budget), 1 conn', fmt(v.cpu, 'ms', 3), `${fmt(f.pass.cpu, 'ms', 3)} (pass-through)`, signed(v.cpu.med - f.pass.cpu.med, 'ms', 3), '≤ +0.35 ms', verdict(v.cpu.med - f.pass.cpu.med <= 0.35));
  row('CPU per request, virtual key vs static key', fmt(v.cpu, 'ms', 3), `${fmt(f.chatStatic.cpu, 'ms', 3)} (static key)`, signed(v.cpu.med - f.chatStatic.cpu.med, 'ms', 3));
  row('p50, virtual key vs static key', fmt(v.p50, 'ms', 3), `${fmt(f.chatStatic.p50, 'ms', 3)} (static key)`, signed(v.p50.med - f.chatStatic.p50.med, 'ms', 3));
  row('p99, virtual key vs static key', fmt(v.p99, 'ms', 3), `${fmt(f.chatStatic.p99, 'ms', 3)} (static key)`, signed(v.p99.med - f.chatStatic.p99.med, 'ms', 3));
  const d = (name) => calls[name];
  const onPath = d('serial') + d('overlapped');
  const admitted = d('from_lease') + onPath;
  const share = admitted ? (100 * d('from_lease')) / admitted : 0;
  row('requests with no object call on the request path', `${num(share, 2)} % (${d('from_lease')} of ${admitted}: ${d('serial')} admitted by a call first, ${d('overlapped')} overlapped with the upstream)`, '', '', '≥ 95 %', verdict(share >= 95));
  row('object calls off the path (batches, lease renewals)', `${d('syncs')} for ${admitted} requests (${num((1000 * d('syncs')) / Math.max(1, admitted), 1)} per 1,000)`);
  const h = f.health;
  row('GET /v1/usage (one object read): p50', fmt(f.usage.p50, 'ms', 3), `${fmt(h.p50, 'ms', 3)} (/health)`, signed(f.usage.p50.med - h.p50.med, 'ms', 3));
  row('GET /v1/usage: CPU per request', fmt(f.usage.cpu, 'ms', 3), `${fmt(h.cpu, 'ms', 3)} (/health)`, signed(f.usage.cpu.med - h.cpu.med, 'ms', 3));
  const fh = f.floorHealth;
  for (const [k, label] of [['floorUsage', 'runtime floor (JS): DO read'], ['floorAdmit', 'runtime floor (JS): DO write']]) {
    const x = f[k];
    row(`${label}: p50 / CPU`, `${fmt(x.p50, 'ms', 3)} / ${fmt(x.cpu, 'ms', 3)}`, `${fmt(fh.p50, 'ms', 3)} / ${fmt(fh.cpu, 'ms', 3)} (JS, no DO)`, signed(x.cpu.med - fh.cpu.med, 'ms', 3));
  }
  command(wrkCommand({ target: '$GATEWAY', connections: 1, requests: fixed.chatVirtual, method: 'POST', body: '$TMP/small.json', path: '/v1/chat/completions', comment: 'with the virtual key; with the static key; and $PASSTHROUGH' }));
  command('GET $GATEWAY/__test/stats   # before and after: admissions from leases, by a call, overlapped; batches sent (test hooks on)');
  note(`${RUNS} runs; medians (min–max); fixed-count runs of about ${FIXED_SECONDS} s at 1 connection (${fixed.chatVirtual} requests a run with the virtual key). Leases are the default (\`limits.lease_ttl_ms\` 10 s); the calls are counted over the measured runs with the virtual key (${virtualRequests} requests), warm-up excluded.`);
}

/** Item 2b: what a streamed answer costs, per stream and per chunk. */
async function streamCost(env) {
  section('2b', 'Streaming cost: a 20-chunk OpenAI stream, passed through',
    'CPU of the workerd process per 20-chunk streamed answer (the mock writes the chunks at once), through the gateway and through the pass-through; the per-chunk cost is the stream\'s CPU less a non-streamed request\'s, over 20 chunks. After its first token the gateway hands the rest of such a stream to the runtime to pipe (src/edge/pipe.rs): no chunk crosses into wasm.');
  const user = [{ role: 'user', content: 'Count to twenty.' }];
  const dir = env.dir;
  const gwBody = path.join(dir, 'stream20.json');
  const passBody = path.join(dir, 'stream20-pass.json');
  writeFileSync(gwBody, JSON.stringify({ model: 'stream20', stream: true, messages: user }));
  writeFileSync(passBody, JSON.stringify({ model: 'mock-model;chunks=20,interval_ms=0', stream: true, messages: user }));
  const cpuPids = () => [env.workerd.pid];
  const paths = {
    gw: { url: `http://127.0.0.1:${env.ports.gateway}/v1/chat/completions`, bodyFile: gwBody },
    pass: { url: `http://127.0.0.1:${env.ports.passMock}/v1/chat/completions`, bodyFile: passBody },
    gwOne: { url: `http://127.0.0.1:${env.ports.gateway}/v1/chat/completions`, bodyFile: env.small },
    passOne: { url: `http://127.0.0.1:${env.ports.passNginx}/v1/chat/completions`, bodyFile: env.small },
  };
  for (const p of Object.values(paths)) await wrk({ ...p, method: 'POST', auth: AUTH, cpuPids, connections: 16, duration: 1 });
  const runs = Object.fromEntries(Object.keys(paths).map((k) => [k, []]));
  for (let r = 0; r < RUNS; r++) {
    for (const [k, p] of Object.entries(paths)) {
      runs[k].push({
        c16: await wrk({ ...p, method: 'POST', auth: AUTH, cpuPids, connections: 16 }),
        c1: await wrk({ ...p, method: 'POST', auth: AUTH, cpuPids, connections: 1 }),
      });
    }
  }
  const s = (k, c) => stat(runs[k].map((x) => x[c].cpuPerReq));
  for (const c of ['c16', 'c1']) {
    const n = c === 'c16' ? 16 : 1;
    const gw = s('gw', c);
    const pass = s('pass', c);
    row(`CPU per 20-chunk stream, ${n} conn${n > 1 ? 's' : ''}`, fmt(gw, 'ms', 3), fmt(pass, 'ms', 3), signed(gw.med - pass.med, 'ms', 3), n === 16 ? '≤ +1.5 ms' : '', n === 16 ? verdict(gw.med - pass.med <= 1.5) : '');
    const perChunk = (stream, one) => (stream.med - one.med) / 20;
    const gwChunk = perChunk(gw, s('gwOne', c));
    const passChunk = perChunk(pass, s('passOne', c));
    row(`CPU per chunk, ${n} conn${n > 1 ? 's' : ''}`, `${num(gwChunk * 1000, 1)} µs`, `${num(passChunk * 1000, 1)} µs`, signed((gwChunk - passChunk) * 1000, 'µs', 1));
  }
  command('BENCH_METHOD=POST BENCH_BODY_FILE=$TMP/stream20.json BENCH_AUTH=\'Bearer $KEY\' wrk -t1 -c16 -d2s --timeout 10s -s tests/bench/wrk.lua $GATEWAY/v1/chat/completions   # model "stream20" → mock "mock-model;chunks=20,interval_ms=0"; and -c1');
  command('the same with $TMP/stream20-pass.json to $PASSTHROUGH_MOCK; per chunk: (stream CPU − small non-stream CPU) / 20, the non-stream request through nginx ($TMP/small.json)');
  note(`${RUNS} runs of ${DURATION} s each; medians (min–max). For reference, the issue measured Portkey at +2.9 ms per stream and this gateway at +3.56 ms before this work (16 connections).`);
}

/** Item 8: the key's object far away (a test delay on its every reply). */
async function farObject(env) {
  section(8, `A far-away key object: ${FAR_DELAY_MS} ms on every reply`,
    `A gateway whose key objects answer every call ${FAR_DELAY_MS} ms late (\`GATEWAY_TEST_KEY_DELAY_MS\`, honoured with test hooks only), as an object on another continent would. In steady state a virtual key is admitted from its lease and its usage travels in background batches, so its requests should not wait for the object at all: the virtual key beside the static key, same gateway, same upstream.`);
  const url = `http://127.0.0.1:${env.ports.gatewayFar}`;
  const key = await createKey(url, { limits: { rpm: 100000000, tpm: 100000000000 }, budgets: { total_usd: 1000000 } });
  const cpuPids = () => [env.workerd.pid];
  const chat = `${url}/v1/chat/completions`;
  // Warm up: the first request waits for the object; leases follow.
  for (let i = 0; i < 3; i++) await wrk({ url: chat, method: 'POST', bodyFile: env.small, auth: key.auth, cpuPids, connections: 1, duration: 1 });
  await wrk({ url: chat, method: 'POST', bodyFile: env.small, auth: AUTH, cpuPids, connections: 1, duration: 1 });
  const runs = { static: [], virtual: [] };
  const ttft = { static: [], virtual: [] };
  const user = [{ role: 'user', content: 'Count to twenty.' }];
  const streamBody = JSON.stringify({ model: 'stream20', stream: true, messages: user });
  for (let r = 0; r < RUNS; r++) {
    runs.static.push(await wrk({ url: chat, method: 'POST', bodyFile: env.small, auth: AUTH, cpuPids, connections: 1 }));
    runs.virtual.push(await wrk({ url: chat, method: 'POST', bodyFile: env.small, auth: key.auth, cpuPids, connections: 1 }));
    for (let i = 0; i < 5; i++) {
      ttft.static.push((await streamOnce(chat, streamBody, { authorization: AUTH })).ttfd);
      ttft.virtual.push((await streamOnce(chat, streamBody, { authorization: key.auth })).ttfd);
    }
  }
  const p50 = { s: stat(runs.static.map((x) => x.p50)), v: stat(runs.virtual.map((x) => x.p50)) };
  const p99 = { s: stat(runs.static.map((x) => x.p99)), v: stat(runs.virtual.map((x) => x.p99)) };
  const t = { s: stat(ttft.static), v: stat(ttft.virtual) };
  row('non-stream p50, virtual key vs static key', fmt(p50.v, 'ms', 3), fmt(p50.s, 'ms', 3), signed(p50.v.med - p50.s.med, 'ms', 3), '≤ +5 ms', verdict(p50.v.med - p50.s.med <= 5));
  row('non-stream p99, virtual key vs static key', fmt(p99.v, 'ms', 3), fmt(p99.s, 'ms', 3), signed(p99.v.med - p99.s.med, 'ms', 3));
  row('stream: first data: line, virtual vs static', fmt(t.v, 'ms', 2), fmt(t.s, 'ms', 2), signed(t.v.med - t.s.med, 'ms', 2), '≤ +5 ms', verdict(t.v.med - t.s.med <= 5));
  const st = await isolateStats(url);
  row('admissions on this gateway: from a lease / by a call / overlapped', `${st.from_lease} / ${st.serial} / ${st.overlapped}`);
  command('POST $GATEWAY_FAR/v1/chat/completions ($TMP/small.json) with the virtual key, then the static key: wrk -c1 as in 1a; streams: model "stream20", 5 a run, interleaved');
  note(`${RUNS} runs after a 3 s warm-up with the virtual key; medians (min–max). The p99 includes the odd request that finds its lease used up before the renewal (asked when half is used, ${FAR_DELAY_MS} ms away) came back: it waits for one round trip.`);
}

/** Item 9: one hot key served by two gateway instances. */
async function hotKey(env) {
  section(9, 'One hot key, two gateway instances',
    'Two gateway services (two isolates) in one workerd process, the second binding the first\'s key-object class, both under load (16 connections each) with the same virtual key, model `demo` (answered inside the worker, so admission is what is measured). Admitted requests per second, both instances together: with leases (the default) and with `strict_admission` (every request admitted by the key\'s object, as before this work).');
  const a = `http://127.0.0.1:${env.ports.gateway}`;
  const b = `http://127.0.0.1:${env.ports.gatewayB}`;
  const limits = { rpm: 1000000000, tpm: 1000000000000 };
  const leased = await createKey(a, { limits, budgets: { total_usd: 1000000 } });
  const strict = await createKey(a, { limits, budgets: { total_usd: 1000000 }, strict_admission: true });
  const bodyFile = path.join(env.dir, 'demo.json');
  writeFileSync(bodyFile, chatBody('demo', 0));
  const cpuPids = () => [env.workerd.pid];
  const both = async (key) => {
    const run = (url) => wrk({ url: `${url}/v1/chat/completions`, method: 'POST', bodyFile, auth: key.auth, cpuPids, connections: 16 });
    const [x, y] = await Promise.all([run(a), run(b)]);
    const ok = x.requests + y.requests - x.errors - y.errors;
    return ok / DURATION;
  };
  await both(leased);
  await both(strict);
  const rates = { leased: [], strict: [] };
  for (let r = 0; r < RUNS; r++) {
    rates.leased.push(await both(leased));
    rates.strict.push(await both(strict));
  }
  const l = stat(rates.leased);
  const st = stat(rates.strict);
  row('admitted per second, both instances, leases', fmt(l, '/s', 0), `${fmt(st, '/s', 0)} (strict: per-request admission)`, `${num(l.med / st.med, 2)}×`, '≥ 2×', verdict(l.med / st.med >= 2));
  command('BENCH_METHOD=POST BENCH_BODY_FILE=$TMP/demo.json BENCH_AUTH=\'Bearer $VIRTUAL_KEY\' wrk -t1 -c16 -d2s -s tests/bench/wrk.lua $GATEWAY/v1/chat/completions & (the same to $GATEWAY_B)');
  note(`${RUNS} runs of ${DURATION} s; medians (min–max); successful answers only. Both services share this machine's two cores with the load generators, so the leases' figure is bounded by the workers' own request cost, not by the object.`);
}

/** Item 10: a decision on a busy key costs what it costs on a fresh one. */
async function decisionCost(env) {
  section(10, 'Decision cost: a busy key vs a fresh key',
    'Two keys with `strict_admission` (every request decided by the key\'s object), model `demo`: a fresh key, and a key filled (`/__test/seed`, test hooks only) with 92 days × 20 models of usage rollups and a full minute window at rpm 50,000 (45,000 admissions in the last 60 s). The object stores its state as rows (src/limits/store.rs): a decision writes the same few rows for both.');
  const gw = `http://127.0.0.1:${env.ports.gateway}`;
  const settings = { limits: { rpm: 50000, tpm: 100000000000 }, budgets: { total_usd: 1000000 }, strict_admission: true };
  const fresh = await createKey(gw, settings);
  const busy = await createKey(gw, settings);
  const seeded = await fetch(`${gw}/__test/seed?key=${busy.id}&days=92&models=20&rpm=45000`, { method: 'POST' });
  if (seeded.status !== 200) throw new Error(`seeding answered ${seeded.status}: ${await seeded.text()}`);
  const bodyFile = path.join(env.dir, 'demo.json');
  writeFileSync(bodyFile, chatBody('demo', 0));
  const cpuPids = () => [env.workerd.pid];
  const chat = `${gw}/v1/chat/completions`;
  const fixed = {};
  for (const [k, key] of [['fresh', fresh], ['busy', busy]]) fixed[k] = Math.min(await warmAndSize({ method: 'POST', bodyFile, auth: key.auth, cpuPids }, chat, { c16: false }), 1500);
  const n = Math.min(fixed.fresh, fixed.busy);
  const runs = { fresh: [], busy: [] };
  for (let r = 0; r < RUNS; r++) {
    runs.fresh.push(await wrk({ url: chat, method: 'POST', bodyFile, auth: fresh.auth, cpuPids, connections: 1, requests: n }));
    runs.busy.push(await wrk({ url: chat, method: 'POST', bodyFile, auth: busy.auth, cpuPids, connections: 1, requests: n }));
  }
  const cpu = { f: stat(runs.fresh.map((x) => x.cpuPerReq)), b: stat(runs.busy.map((x) => x.cpuPerReq)) };
  const p50 = { f: stat(runs.fresh.map((x) => x.p50)), b: stat(runs.busy.map((x) => x.p50)) };
  const ratio = cpu.b.med / cpu.f.med;
  row('CPU per request (decided by the object), busy vs fresh key', fmt(cpu.b, 'ms', 3), fmt(cpu.f, 'ms', 3), `${signed(cpu.b.med - cpu.f.med, 'ms', 3)} (${num((ratio - 1) * 100, 1)} %)`, 'within 10 %', verdict(Math.abs(ratio - 1) <= 0.1));
  row('p50, busy vs fresh key', fmt(p50.b, 'ms', 3), fmt(p50.f, 'ms', 3), signed(p50.b.med - p50.f.med, 'ms', 3));
  command('POST $GATEWAY/__test/seed?key=$BUSY&days=92&models=20&rpm=45000; then wrk -c1 with each key, model "demo", strict_admission keys');
  note(`${RUNS} runs of ${n} requests each, alternating; medians (min–max). Before this work a key's whole state was one JSON row rewritten on every decision: its minute log alone held an entry per admission (45,000 here).`);
}

async function streaming(env) {
  section(2, `Streaming: ${CHUNKS} chunks, ${INTERVAL_MS} ms apart`, 'Time to the first `data:` line, and the largest gap the path adds between two chunks: for each chunk, transit = read by the client − written by the mock (one clock: the mock runs in the driver process); added gap = max over chunks of (transit − previous chunk\'s transit).');
  const mockUrl = `http://127.0.0.1:${env.ports.mock}`;
  const model = `mock-model;chunks=${CHUNKS},interval_ms=${INTERVAL_MS}`;
  const user = [{ role: 'user', content: 'Count to one hundred.' }];
  const openaiBody = JSON.stringify({ model, stream: true, messages: user });
  const anthropicBody = JSON.stringify({ model, max_tokens: 256, stream: true, messages: user });
  const anthropicHeaders = { 'x-api-key': UPSTREAM_KEY, 'anthropic-version': '2023-06-01' };
  const gwHeaders = { authorization: AUTH };
  const firstOpenai = JSON.stringify({ model: FIRST_MODEL, stream: true, messages: user });
  const firstAnthropic = JSON.stringify({ model: FIRST_MODEL, max_tokens: 256, stream: true, messages: user });

  // Is the anthropic kind in this build? Its config document is rejected if not.
  const probe = await streamOnce(`http://127.0.0.1:${env.ports.gatewayAnthropic}/v1/chat/completions`,
    JSON.stringify({ model: 'stream-anthropic', max_tokens: 256, stream: true, messages: user }), gwHeaders);
  const anthropicOk = probe.status === 200 && streamFigures(probe).complete;
  if (!anthropicOk) {
    const status = await fetch(`http://127.0.0.1:${env.ports.gatewayAnthropic}/admin/config`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
      .then((r) => r.json()).catch(() => null);
    const why = status?.rejected?.errors?.join('; ') ?? `chat answered ${probe.status}`;
    console.log(`    the anthropic config was not accepted: ${why}`);
  }

  const formats = [
    {
      name: 'OpenAI format, passed through',
      paths: {
        direct: () => streamOnce(`${mockUrl}/v1/chat/completions`, openaiBody),
        pass: () => streamOnce(`http://127.0.0.1:${env.ports.passMock}/v1/chat/completions`, openaiBody),
        gw: () => streamOnce(`http://127.0.0.1:${env.ports.gateway}/v1/chat/completions`, JSON.stringify({ model: 'stream', stream: true, messages: user }), gwHeaders),
      },
      first: {
        direct: () => streamOnce(`${mockUrl}/v1/chat/completions`, firstOpenai),
        pass: () => streamOnce(`http://127.0.0.1:${env.ports.passMock}/v1/chat/completions`, firstOpenai),
        gw: () => streamOnce(`http://127.0.0.1:${env.ports.gateway}/v1/chat/completions`, JSON.stringify({ model: 'first', stream: true, messages: user }), gwHeaders),
      },
    },
    {
      name: 'Anthropic format, translated',
      available: anthropicOk,
      paths: {
        direct: () => streamOnce(`${mockUrl}/v1/messages`, anthropicBody, anthropicHeaders),
        pass: () => streamOnce(`http://127.0.0.1:${env.ports.passMock}/v1/messages`, anthropicBody, anthropicHeaders),
        gw: () => streamOnce(`http://127.0.0.1:${env.ports.gatewayAnthropic}/v1/chat/completions`, JSON.stringify({ model: 'stream-anthropic', max_tokens: 256, stream: true, messages: user }), gwHeaders),
      },
      first: {
        direct: () => streamOnce(`${mockUrl}/v1/messages`, firstAnthropic, anthropicHeaders),
        pass: () => streamOnce(`http://127.0.0.1:${env.ports.passMock}/v1/messages`, firstAnthropic, anthropicHeaders),
        gw: () => streamOnce(`http://127.0.0.1:${env.ports.gatewayAnthropic}/v1/chat/completions`, JSON.stringify({ model: 'first-anthropic', max_tokens: 256, stream: true, messages: user }), gwHeaders),
      },
    },
  ];
  const streamRuns = Math.max(RUNS, 3);
  for (const f of formats) {
    const order = f.available === false ? ['direct', 'pass'] : ['direct', 'pass', 'gw'];
    for (const k of order) await f.paths[k](); // warm-up
    const runs = { direct: [], pass: [], gw: [] };
    for (let r = 0; r < streamRuns; r++) {
      for (const k of order) {
        const res = await f.paths[k]();
        const fig = streamFigures(res);
        if (res.status !== 200 || !fig.complete) throw new Error(`${f.name} via ${k}: status ${res.status}, ${fig.complete ? 'complete' : 'incomplete'} stream`);
        runs[k].push(fig);
      }
    }
    // First tokens: short streams, FIRST_WARM of each path first, then
    // FIRST_ROUNDS rounds of one stream a path, the order rotating.
    const first = { direct: [], pass: [], gw: [] };
    for (let i = 0; i < FIRST_WARM; i++) for (const k of order) await f.first[k]();
    for (let r = 0; r < FIRST_ROUNDS; r++) {
      for (const k of [...order.slice(r % order.length), ...order.slice(0, r % order.length)]) {
        const res = await f.first[k]();
        if (res.status !== 200 || !Number.isFinite(res.ttft)) throw new Error(`${f.name} via ${k}: status ${res.status}, no first token`);
        first[k].push(res);
      }
    }
    const s = (k, field) => stat(runs[k].map((x) => x[field]));
    const fs = (k, field) => stat(first[k].map((x) => x[field]));
    const label = f.name.split(',')[0];
    if (f.available === false) {
      row(`${label}: first data: line`, NA_ANTHROPIC, `${fmt(fs('pass', 'ttfd'), 'ms', 2)} (direct ${fmt(fs('direct', 'ttfd'), 'ms', 2)})`, '', '≤ +1 ms', 'n/a');
      row(`${label}: largest added gap`, NA_ANTHROPIC, fmt(s('pass', 'maxAddedGap'), 'ms', 2), '', '≤ +1 ms', 'n/a');
      continue;
    }
    const ttfd = { gw: fs('gw', 'ttfd'), pass: fs('pass', 'ttfd'), direct: fs('direct', 'ttfd') };
    const ttft = { gw: fs('gw', 'ttft'), pass: fs('pass', 'ttft'), direct: fs('direct', 'ttft') };
    const paired = stat(first.gw.map((g, i) => g.ttft - first.pass[i].ttft));
    const gap = { gw: s('gw', 'maxAddedGap'), pass: s('pass', 'maxAddedGap'), direct: s('direct', 'maxAddedGap') };
    const transit = { gw: s('gw', 'medianTransit'), pass: s('pass', 'medianTransit') };
    const maxTransit = { gw: s('gw', 'maxTransit'), pass: s('pass', 'maxTransit') };
    const before = { gw: s('gw', 'beforeNextPct'), pass: s('pass', 'beforeNextPct') };
    row(`${f.name}: first token`, fmt(ttft.gw, 'ms', 2), `${fmt(ttft.pass, 'ms', 2)} (direct ${fmt(ttft.direct, 'ms', 2)})`, signed(ttft.gw.med - ttft.pass.med, 'ms', 2), '≤ +1 ms', verdict(ttft.gw.med - ttft.pass.med <= 1));
    row(`${label}: first token, median of the rounds' differences`, '', '', `${signed(paired.med, 'ms', 2)} (${signed(paired.min, 'ms', 2)} to ${signed(paired.max, 'ms', 2)})`);
    row(`${label}: first data: line`, fmt(ttfd.gw, 'ms', 2), `${fmt(ttfd.pass, 'ms', 2)} (direct ${fmt(ttfd.direct, 'ms', 2)})`, signed(ttfd.gw.med - ttfd.pass.med, 'ms', 2));
    row(`${label}: largest added gap`, fmt(gap.gw, 'ms', 2), `${fmt(gap.pass, 'ms', 2)} (direct ${fmt(gap.direct, 'ms', 2)})`, signed(gap.gw.med - gap.pass.med, 'ms', 2), '≤ +1 ms', verdict(gap.gw.med - gap.pass.med <= 1));
    row(`${label}: median chunk transit`, fmt(transit.gw, 'ms', 2), fmt(transit.pass, 'ms', 2), signed(transit.gw.med - transit.pass.med, 'ms', 2));
    row(`${label}: largest chunk transit`, fmt(maxTransit.gw, 'ms', 2), fmt(maxTransit.pass, 'ms', 2), signed(maxTransit.gw.med - maxTransit.pass.med, 'ms', 2));
    // Buffering would hold chunks until later ones arrive; noise on a busy
    // machine delays the odd chunk on either path alike.
    row(`${label}: chunks out before the next was written`, fmt(before.gw, '%', 0), fmt(before.pass, '%', 0), signed(before.gw.med - before.pass.med, 'points', 0), 'never buffered', verdict(before.gw.med >= 95));
  }
  command(`POST $GATEWAY/v1/chat/completions {"model":"stream","stream":true,...}   # gateway model "stream" → mock "${model}"`);
  command(`POST $PASSTHROUGH_MOCK/v1/chat/completions {"model":"${model}","stream":true,...}; direct: the same to $MOCK`);
  command(`POST $GATEWAY_ANTHROPIC/v1/chat/completions {"model":"stream-anthropic",...}; baseline: POST $PASSTHROUGH_MOCK/v1/messages (Anthropic events, untranslated)`);
  command(`first tokens and first data: lines: the same with model "first" / "first-anthropic" → mock "${FIRST_MODEL}" (baselines: that model)`);
  note(`First token and first data: line: ${FIRST_ROUNDS} rounds of one ${FIRST_MODEL.split(';')[1]} stream per path after ${FIRST_WARM} of each, the order rotating each round; median (min–max), and the median of each round's gateway − pass-through. The other rows: ${streamRuns} streams of ${CHUNKS} chunks per path (median, min–max), client: node:http in tests/bench/run.mjs. A buffering path would show chunks leaving only after later ones were written (the last row far below 100 %) and transit times of many intervals; "never buffered" is met at ≥ 95 % (the rest is scheduling noise, visible on the baseline too).`);
}

async function failover(env) {
  section(3, 'Failover', 'Time to the first `data:` line when the first target answers 503 at once and the second is healthy, against the same request to a model whose only target is the healthy one; the difference is what the failed attempt cost. Target: at most one upstream round trip (the mock\'s own 503, timed directly) + 1 ms.');
  const gw = `http://127.0.0.1:${env.ports.gateway}/v1/chat/completions`;
  const user = [{ role: 'user', content: 'hello' }];
  const body = (model) => JSON.stringify({ model, stream: true, messages: user });
  const direct503 = `http://127.0.0.1:${env.ports.mock}/_mock/status=503/v1/chat/completions`;
  const direct503Body = JSON.stringify({ model: 'mock-model', stream: true, messages: user });
  const headers = { authorization: AUTH };
  for (let i = 0; i < 3; i++) {
    await streamOnce(gw, body('failover'), headers);
    await streamOnce(gw, body('healthy'), headers);
    await roundTrip(direct503, direct503Body);
  }
  const reps = QUICK ? 3 : 9;
  const t = { failover: [], healthy: [], rtt: [], added: [] };
  let attempts = null;
  for (let r = 0; r < reps; r++) {
    const f = await streamOnce(gw, body('failover'), headers);
    if (f.status !== 200) throw new Error(`failover model answered ${f.status}`);
    attempts = f.headers['x-gateway-attempts'];
    t.failover.push(f.ttfd);
    t.healthy.push((await streamOnce(gw, body('healthy'), headers)).ttfd);
    t.added.push(t.failover.at(-1) - t.healthy.at(-1));
    const rt = await roundTrip(direct503, direct503Body);
    if (rt.status !== 503) throw new Error(`mock status=503 answered ${rt.status}`);
    t.rtt.push(rt.ms);
  }
  const f = stat(t.failover);
  const h = stat(t.healthy);
  const rtt = stat(t.rtt);
  // Each round's difference, then their median: steadier than a difference of medians.
  const added = stat(t.added);
  row('first data: line, 1st target 503', fmt(f, 'ms', 2), `${fmt(h, 'ms', 2)} (healthy target only)`, `${signed(added.med, 'ms', 2)} (${num(added.min, 2)}–${num(added.max, 2)})`, `≤ RTT + 1 ms = ${num(rtt.med + 1, 2)} ms`, verdict(added.med <= rtt.med + 1));
  row('upstream round trip (mock 503, direct)', fmt(rtt, 'ms', 2));
  command(`POST $GATEWAY/v1/chat/completions {"model":"failover","stream":true,...}   # targets: mock /_mock/status=503/v1, then mock /v1`);
  command(`POST $GATEWAY/v1/chat/completions {"model":"healthy","stream":true,...}; RTT: POST $MOCK/_mock/status=503/v1/chat/completions`);
  note(`${reps} rounds, interleaved; medians (min–max); "added" is the median of each round's difference. x-gateway-attempts on the failover answers: ${attempts}.`);
}

async function responseCache(env) {
  section(11, 'Response cache: a hit against a miss',
    'The same small non-stream request to a model with `cache: { ttl_s: 3600, scope: "key" }` (nginx behind it). A hit: the same body every time, answered from the Cache API. A miss: every body different (a counter in the message), so each is looked up, sent to nginx, and its answer stored after the response. Plain workerd has no Cache API of its own: its cache requests go to a small in-memory store in the same process ([`cache.js`](cache.js)), whose CPU is in the figures. Beside them, the pass-through worker to nginx.');
  const url = `http://127.0.0.1:${env.ports.gateway}/v1/chat/completions`;
  const pass = `http://127.0.0.1:${env.ports.passNginx}/v1/chat/completions`;
  const body = (content) => JSON.stringify({ model: 'cached', temperature: 0, max_tokens: 64, messages: [{ role: 'user', content }] });
  const hitFile = path.join(env.dir, 'cache-hit.json');
  const missFile = path.join(env.dir, 'cache-miss.json');
  writeFileSync(hitFile, body('What is the capital of France? Answer in one word.'));
  writeFileSync(missFile, body('What is the capital of France? Answer in one word. (__N__)'));
  // The hit's entry, stored before anything is timed.
  const first = await fetch(url, { method: 'POST', headers: { authorization: AUTH, 'content-type': 'application/json' }, body: readFileSync(hitFile) });
  if (first.status !== 200) throw new Error(`cached model answered ${first.status}: ${await first.text()}`);
  await first.text();
  await sleep(200);
  const check = await fetch(url, { method: 'POST', headers: { authorization: AUTH, 'content-type': 'application/json' }, body: readFileSync(hitFile) });
  await check.text();
  if (check.headers.get('x-gateway-cache') !== 'hit') throw new Error(`no cache hit (x-gateway-cache: ${check.headers.get('x-gateway-cache')}): is cacheApiOutbound set?`);
  const common = { method: 'POST', auth: AUTH, cpuPids: () => [env.workerd.pid] };
  let round = 0;
  const kinds = {
    hit: { ...common, url, bodyFile: hitFile },
    miss: { ...common, url, bodyFile: missFile, unique: () => `r${Date.now()}-${round++}` },
    pass: { ...common, url: pass, bodyFile: hitFile },
  };
  const fixed = {};
  for (const [k, o] of Object.entries(kinds)) fixed[k] = await warmAndSize({ ...o, unique: typeof o.unique === 'function' ? o.unique() : '' }, o.url);
  const runs = { hit: [], miss: [], pass: [] };
  for (let r = 0; r < RUNS; r++) {
    for (const [k, o] of Object.entries(kinds)) {
      runs[k].push(await wrk({ ...o, unique: typeof o.unique === 'function' ? o.unique() : '', connections: 1, requests: fixed[k] }));
    }
  }
  const st = (k, f) => stat(runs[k].map(f));
  const cpu = { hit: st('hit', (x) => x.cpuPerReq), miss: st('miss', (x) => x.cpuPerReq), pass: st('pass', (x) => x.cpuPerReq) };
  const p50 = { hit: st('hit', (x) => x.p50), miss: st('miss', (x) => x.p50), pass: st('pass', (x) => x.p50) };
  const p99 = { hit: st('hit', (x) => x.p99), miss: st('miss', (x) => x.p99), pass: st('pass', (x) => x.p99) };
  row('p50 latency, 1 connection: hit', fmt(p50.hit, 'ms', 3), `${fmt(p50.miss, 'ms', 3)} (miss)`, signed(p50.hit.med - p50.miss.med, 'ms', 3));
  row('p99 latency, 1 connection: hit', fmt(p99.hit, 'ms', 3), `${fmt(p99.miss, 'ms', 3)} (miss)`, signed(p99.hit.med - p99.miss.med, 'ms', 3));
  row('CPU per request (workerd, 1 conn): hit', fmt(cpu.hit, 'ms', 3), `${fmt(cpu.miss, 'ms', 3)} (miss)`, signed(cpu.hit.med - cpu.miss.med, 'ms', 3));
  row('CPU per request: miss over the pass-through', fmt(cpu.miss, 'ms', 3), `${fmt(cpu.pass, 'ms', 3)} (pass-through)`, signed(cpu.miss.med - cpu.pass.med, 'ms', 3));
  row('p50 latency: pass-through to nginx', fmt(p50.pass, 'ms', 3));
  command(wrkCommand({ target: '$GATEWAY', connections: 1, requests: fixed.hit, method: 'POST', body: '$TMP/cache-hit.json', path: '/v1/chat/completions', comment: 'hit: the same body' }));
  command(wrkCommand({ target: '$GATEWAY', connections: 1, requests: fixed.miss, method: 'POST', body: '$TMP/cache-miss.json', unique: true, path: '/v1/chat/completions', comment: 'miss: __N__ replaced by a counter' }));
  note(`${RUNS} runs, alternating; medians (min–max). A hit reads one entry from the Cache API and replays it: no upstream request, no nginx. A miss is a lookup that finds nothing, the upstream request, and the entry written after the response (in waitUntil, its CPU counted). In production the Cache API is Cloudflare's cache in the location, not an in-process store: its read time there is not measured here.`);
}

async function hedging(env) {
  section(12, 'Hedged requests: first token against a slow primary',
    `A streamed request to two targets on the mock: the primary sends its first byte after ${HEDGE_PRIMARY_MS} ms, the backup after ${HEDGE_BACKUP_MS} ms. With \`hedge: { after_ms: ${HEDGE_AFTER_MS} }\` the backup starts when the primary has said nothing for ${HEDGE_AFTER_MS} ms; without, the client waits for the primary. Time to the first content chunk at the client.`);
  const url = `http://127.0.0.1:${env.ports.gateway}/v1/chat/completions`;
  const body = (model) => JSON.stringify({ model, stream: true, messages: [{ role: 'user', content: 'hello' }] });
  const headers = { authorization: AUTH };
  for (let i = 0; i < 2; i++) {
    await streamOnce(url, body('hedged'), headers);
    await streamOnce(url, body('unhedged'), headers);
  }
  const reps = QUICK ? 3 : 9;
  const t = { hedged: [], unhedged: [] };
  let lost = null;
  for (let r = 0; r < reps; r++) {
    const h = await streamOnce(url, body('hedged'), headers);
    if (h.status !== 200) throw new Error(`hedged model answered ${h.status}`);
    lost = h.headers['x-gateway-hedge'];
    t.hedged.push(h.ttfd);
    t.unhedged.push((await streamOnce(url, body('unhedged'), headers)).ttfd);
  }
  const h = stat(t.hedged);
  const u = stat(t.unhedged);
  const ideal = HEDGE_AFTER_MS + HEDGE_BACKUP_MS;
  row('first data: line, hedged', fmt(h, 'ms', 1), `${fmt(u, 'ms', 1)} (no hedge)`, signed(h.med - u.med, 'ms', 1), `≈ after_ms + backup = ${ideal} ms`, verdict(h.med < ideal + 50));
  command(`POST $GATEWAY/v1/chat/completions {"model":"hedged","stream":true,...}   # targets: mock ;first_byte_delay_ms=${HEDGE_PRIMARY_MS}, then ;first_byte_delay_ms=${HEDGE_BACKUP_MS}; hedge.after_ms=${HEDGE_AFTER_MS}`);
  note(`${reps} rounds, interleaved; medians (min–max). x-gateway-hedge on the hedged answers: ${lost}. The primary's fetch is aborted when the backup's first token arrives; its input is charged.`);
}

/** Item 7: the gateway and the pass-through each under `wrangler dev`. */
async function wranglerDev(env, bodyFile) {
  section(7, 'Developer view: under `wrangler dev` (not the runtime\'s cost)', 'The small-body non-stream figures with the same workers under `wrangler dev --local` (which adds a proxy workerd, an inspector and Node logging). CPU is the whole wrangler process group. Labelled as such: do not compare with production.');
  const wranglerEnv = { PATH: `${BIN}:${process.env.PATH}`, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false', CI: 'true', NO_COLOR: '1' };
  const startDev = async (name, args, healthPath) => {
    const port = await freePort();
    const inspector = await freePort();
    const child = start(name, path.join(BIN, 'wrangler'), ['dev', ...args, '--ip', '127.0.0.1', '--port', String(port), '--inspector-port', String(inspector),
      '--local', '--persist-to', path.join(env.dir, `wrangler-${name}`), '--show-interactive-dev-session=false'], { env: wranglerEnv, logFile: path.join(env.dir, `${name}.log`) });
    await waitFor(`http://127.0.0.1:${port}${healthPath}`, child, { timeoutMs: 90_000 });
    return { child, url: `http://127.0.0.1:${port}` };
  };
  const gwArgs = ['-c', 'tests/wrangler.test.toml', '--var', `GATEWAY_KEYS:${GATEWAY_KEY}`, '--var', 'CONFIG_CACHE_TTL_MS:3600000', '--var', `UPSTREAM_KEY:${UPSTREAM_KEY}`, '--var', `ADMIN_TOKEN:${ADMIN_TOKEN}`];
  const passArgs = ['-c', 'tests/bench/wrangler.passthrough.toml', '--var', `UPSTREAM:http://127.0.0.1:${env.ports.nginx}`];
  const results = {};
  for (const [key, name, args, health] of [['pass', 'wrangler-pass', passArgs, '/'], ['gw', 'wrangler-gateway', gwArgs, '/health']]) {
    const dev = await startDev(name, args, health);
    try {
      if (key === 'gw') {
        const res = await fetch(`${dev.url}/admin/config`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: JSON.stringify(gatewayConfig(env.ports)) });
        if (res.status !== 200) throw new Error(`wrangler dev: PUT /admin/config answered ${res.status}: ${await res.text()}`);
      }
      const url = `${dev.url}/v1/chat/completions`;
      const common = { url, method: 'POST', bodyFile, auth: AUTH, cpuPids: () => groupPids(dev.child.pid) };
      const check = await fetch(url, { method: 'POST', headers: { authorization: AUTH, 'content-type': 'application/json' }, body: readFileSync(bodyFile) });
      if (check.status !== 200) throw new Error(`wrangler dev ${key}: ${check.status} ${await check.text()}`);
      const fixed = await warmAndSize(common, url);
      if (key === 'gw') results.fixed = fixed;
      const runs = [];
      for (let r = 0; r < RUNS; r++) {
        const one = await wrk({ ...common, connections: 1, requests: fixed });
        const c16 = await wrk({ ...common, connections: 16 });
        runs.push({ one, c16 });
      }
      results[key] = runs;
    } finally {
      await stop(dev.child);
    }
  }
  const s = (key, f) => stat(results[key].map(f));
  const p50 = { gw: s('gw', (x) => x.one.p50), pass: s('pass', (x) => x.one.p50) };
  const p99 = { gw: s('gw', (x) => x.one.p99), pass: s('pass', (x) => x.one.p99) };
  const rps = { gw: s('gw', (x) => x.c16.rps), pass: s('pass', (x) => x.c16.rps) };
  const cpu = { gw: s('gw', (x) => x.one.cpuPerReq), pass: s('pass', (x) => x.one.cpuPerReq) };
  row('[wrangler dev] p50, 1 connection', fmt(p50.gw, 'ms', 2), fmt(p50.pass, 'ms', 2), signed(p50.gw.med - p50.pass.med, 'ms', 2));
  row('[wrangler dev] p99, 1 connection', fmt(p99.gw, 'ms', 2), fmt(p99.pass, 'ms', 2), signed(p99.gw.med - p99.pass.med, 'ms', 2));
  row('[wrangler dev] throughput, 16 conns', fmt(rps.gw, 'req/s', 0), fmt(rps.pass, 'req/s', 0), `${num(rps.gw.med / rps.pass.med, 2)}×`);
  row('[wrangler dev] CPU per request', fmt(cpu.gw, 'ms', 2), fmt(cpu.pass, 'ms', 2), signed(cpu.gw.med - cpu.pass.med, 'ms', 2));
  command('wrangler dev -c tests/wrangler.test.toml --local --var GATEWAY_KEYS:… --var CONFIG_CACHE_TTL_MS:3600000 …   # config PUT via /admin/config');
  command('wrangler dev -c tests/bench/wrangler.passthrough.toml --local --var UPSTREAM:http://127.0.0.1:$NGINX_PORT');
  command(wrkCommand({ target: '$DEV', connections: 1, requests: results.fixed, method: 'POST', body: '$TMP/small.json', path: '/v1/chat/completions', comment: 'and -c16 -d2s' }));
}

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

function markdown(meta) {
  const esc = (s) => String(s).replaceAll('|', '\\|');
  const lines = [
    '# Benchmarks',
    '',
    `Measured ${meta.date} by \`scripts/bench\` (${meta.elapsed} s) on ${meta.cores} cores (${meta.cpu}), workerd ${meta.workerd}, Node ${process.version}${QUICK ? ', **--quick: one run per figure**' : ''}. Load average before the run ${meta.loadBefore}, after ${meta.loadAfter}${meta.loadBefore >= meta.cores / 2 ? ' (**other work was running: the figures are inflated and noisy**)' : ''}.`,
    '',
    'Each figure is the built gateway (`build/`) on plain `workerd serve`, beside a baseline measured in the same run on the same runtime: a minimal pass-through worker ([`passthrough.js`](passthrough.js)) in front of the same loopback upstream (nginx returning a fixed chat.completion; the mock provider for streams). Values are medians of the runs with min–max in brackets; "added" is gateway minus baseline. On a machine shared with other work the figures are noisy; CPU time per request is the steadiest.',
    '',
    'Placeholders in the commands: `$GATEWAY`, `$PASSTHROUGH` (the pass-through to nginx), `$PASSTHROUGH_MOCK`, `$MOCK`, `$KEY` are the loopback URLs and key of this run; `$TMP` is its temp directory (bodies, the generated `workerd.capnp`). How it is set up: [README.md](README.md).',
    '',
  ];
  for (const s of [...sections].sort((a, b) => String(a.id).localeCompare(String(b.id), 'en', { numeric: true }))) {
    lines.push(`## ${s.id}. ${s.title}`, '', s.intro, '');
    const withBaseline = s.rows.some((r) => r.baseline);
    const withTarget = s.rows.some((r) => r.target);
    const head = ['Figure', withBaseline ? 'Gateway' : 'Value'];
    if (withBaseline) head.push('Baseline', 'Added');
    if (withTarget) head.push('Target', '');
    lines.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
    for (const r of s.rows) {
      const cells = [r.figure, r.gateway];
      if (withBaseline) cells.push(r.baseline, r.added);
      if (withTarget) cells.push(r.target, r.met);
      lines.push(`| ${cells.map(esc).join(' | ')} |`);
    }
    lines.push('');
    for (const n of s.notes) lines.push(`${n}`, '');
    if (s.commands.length) {
      lines.push('```sh', ...s.commands, '```', '');
    }
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

async function main() {
  const t0 = Date.now();
  const meta = {
    date: new Date().toISOString().replace('T', ' ').slice(0, 16) + ' UTC',
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model?.trim() ?? 'unknown CPU',
    workerd: execFileSync(WORKERD, ['--version']).toString().trim().replace(/^workerd\s*/, ''),
    loadBefore: Number(os.loadavg()[0].toFixed(2)),
  };
  console.log(`[bench] ${meta.date}, ${meta.cores} cores (${meta.cpu}), load average ${meta.loadBefore}, workerd ${meta.workerd}, Node ${process.version}${QUICK ? ', --quick' : ''}`);

  if (wanted(5)) await nativeCore();
  if (wanted(6)) sizes();

  const dir = mkdtempSync(path.join(os.tmpdir(), 'gateway-bench-'));
  tempDirs.add(dir);
  const mock = await startMock({ maxRequests: 100 });
  const env = { dir, mock, ports: {} };
  try {
    env.ports = {
      mock: mock.port,
      nginx: await freePort(),
      gateway: await freePort(),
      gatewayB: await freePort(),
      gatewayFar: await freePort(),
      gatewayAnthropic: await freePort(),
      passNginx: await freePort(),
      passMock: await freePort(),
      doFloor: await freePort(),
    };
    // Bodies
    const small = path.join(dir, 'small.json');
    const large = path.join(dir, 'large.json');
    writeFileSync(small, chatBody('bench', 0));
    writeFileSync(large, chatBody('bench', LARGE_BODY));

    // nginx
    writeFileSync(path.join(dir, 'nginx.conf'), nginxConf(dir, env.ports.nginx));
    const nginxBin = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p)) ?? 'nginx';
    env.nginx = start('nginx', nginxBin, ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'nginx-error.log')], { logFile: path.join(dir, 'nginx.log') });
    await waitFor(`http://127.0.0.1:${env.ports.nginx}/`, env.nginx);

    // workerd
    for (const f of ['index.js', 'index_bg.wasm']) copyFileSync(path.join(ROOT, 'build', f), path.join(dir, f));
    // The deployed entry module (the panic wrapper), importing its neighbour.
    writeFileSync(path.join(dir, 'entry.mjs'), readFileSync(path.join(ROOT, 'src/edge/entry.mjs'), 'utf8').replaceAll('../../build/index.js', './index.js'));
    for (const f of ['passthrough.js', 'kv.js', 'do-floor.js', 'cache.js']) copyFileSync(path.join(HERE, f), path.join(dir, f));
    writeFileSync(path.join(dir, 'config.json'), JSON.stringify(gatewayConfig(env.ports)));
    writeFileSync(path.join(dir, 'config-anthropic.json'), JSON.stringify(anthropicConfig(env.ports)));
    // Durable Object storage on tmpfs where there is one: workerd commits
    // each write with an fsync, and on a disk shared with other work that
    // wait (milliseconds, and nothing like production's replicated commit)
    // would swamp the gateway's own cost.
    env.doDir = existsSync('/dev/shm') ? mkdtempSync('/dev/shm/gateway-bench-do-') : path.join(dir, 'do');
    mkdirSync(env.doDir, { recursive: true });
    tempDirs.add(env.doDir);
    writeFileSync(path.join(dir, 'workerd.capnp'), workerdCapnp({ ...env.ports, doDir: env.doDir }));
    console.log(`\n[bench] workerd serve ${path.join(dir, 'workerd.capnp')}   (nginx :${env.ports.nginx}, mock :${env.ports.mock}, gateway :${env.ports.gateway}, pass-through :${env.ports.passNginx})`);
    env.workerd = start('workerd', WORKERD, ['serve', path.join(dir, 'workerd.capnp')], { logFile: path.join(dir, 'workerd.log') });
    await waitFor(`http://127.0.0.1:${env.ports.gateway}/health`, env.workerd);
    await waitFor(`http://127.0.0.1:${env.ports.passNginx}/`, env.workerd);

    // Sanity: both paths answer the same upstream's body.
    const post = (port, body) => fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { authorization: AUTH, 'content-type': 'application/json' }, body });
    const viaGw = await post(env.ports.gateway, readFileSync(small));
    const gwText = await viaGw.text();
    if (viaGw.status !== 200 || viaGw.headers.get('x-gateway-provider') !== 'nginx') {
      throw new Error(`the gateway did not route to nginx: ${viaGw.status} ${gwText}\n${env.workerd.output.slice(-3000)}`);
    }
    const viaPass = await post(env.ports.passNginx, readFileSync(small));
    if (viaPass.status !== 200 || (await viaPass.text()) !== COMPLETION) throw new Error(`the pass-through did not reach nginx: ${viaPass.status}`);

    if (wanted('1a')) await nonStream(env, { label: { id: '1a', name: 'small body' }, bodyFile: small });
    if (wanted('1b')) await nonStream(env, { label: { id: '1b', name: 'large body' }, bodyFile: large });
    env.small = small;
    if (wanted(4)) await durableObject(env, small);
    if (wanted(2)) await streaming(env);
    if (wanted('2b')) await streamCost(env);
    if (wanted(8)) await farObject(env);
    if (wanted(9)) await hotKey(env);
    if (wanted(10)) await decisionCost(env);
    if (wanted(3)) await failover(env);
    if (wanted(11)) await responseCache(env);
    if (wanted(12)) await hedging(env);
    await stop(env.workerd);
    if (wanted(7)) await wranglerDev(env, small);
  } finally {
    await stopAll();
    await mock.close();
    agent.destroy();
    removeTempDirs();
  }

  meta.elapsed = Math.round((Date.now() - t0) / 1000);
  meta.loadAfter = Number(os.loadavg()[0].toFixed(2));
  if (ONLY) {
    console.log(`\n[bench] --only: ${path.relative(ROOT, OUT)} left as it was (${meta.elapsed} s)`);
    return;
  }
  writeFileSync(OUT, markdown(meta));
  console.log(`\n[bench] wrote ${path.relative(ROOT, OUT)} in ${meta.elapsed} s`);
}

main().catch(async (err) => {
  console.error(`\n[bench] failed: ${err.stack ?? err}`);
  await stopAll();
  process.exit(1);
});
