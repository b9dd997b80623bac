// Where the gateway's CPU goes: a V8 CPU profile of the built worker on
// plain workerd, taken through workerd's inspector while wrk drives one
// kind of request, summarised by function (self time) and by request-path
// step (inclusive time of the functions that implement it).
//
//   node tests/bench/profile.mjs [--kind=static|virtual|stream] [--seconds=6] [--top=40]
//
// PROFILE_OUT=FILE also writes the raw profile (and the request count) as
// JSON, for summaries of one's own.
//
// Needs what scripts/bench needs (built worker, wrk, nginx); prints, writes
// nothing but a temp dir it removes. Loopback only; every process it starts
// is stopped when it ends. Build with `GATEWAY_KEEP_NAMES=1 scripts/build`
// first to see Rust function names (scripts/build strips them by default).

import { execFileSync } from 'node:child_process';
import { copyFileSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  ADMIN, HERE, KEY, ROOT, WORKERD, arg, cpuMs, gatewayService, sleep, start, prepareRun, stopAll, supportServices, virtualKey, waitFor } from './harness.mjs';

const KIND = arg('kind', 'static');
const SECONDS = Number(arg('seconds', '6'));
const TOP = Number(arg('top', '40'));

async function main() {
  const { dir, mock, ports } = await prepareRun('gateway-profile-', ['gateway', 'pass', 'inspector']);
  try {
    for (const f of ['index.js', 'index_bg.wasm']) copyFileSync(path.join(ROOT, 'build', f), path.join(dir, f));
    writeFileSync(path.join(dir, 'workerd.capnp'), `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    ${gatewayService({
    name: 'gateway',
    modules: ['(name = "index.js", esModule = embed "index.js")', '(name = "index_bg.wasm", wasm = embed "index_bg.wasm")'],
    key: KEY,
    admin: ADMIN,
    unique: 'profile',
    bindings: ['(name = "GATEWAY_TEST_HOOKS", text = "1")'],
  })},
    ${supportServices(dir, KIND === 'stream' ? `http://127.0.0.1:${mock.port}` : `http://127.0.0.1:${ports.nginx}`)}
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
    if (KIND === 'virtual') auth = `Bearer ${await virtualKey(gw, 'profile')}`;
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
    if (process.env.PROFILE_OUT) writeFileSync(process.env.PROFILE_OUT, JSON.stringify({ profile, requests: result.requests }));
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
