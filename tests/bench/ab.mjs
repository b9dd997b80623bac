// Two builds of the gateway side by side: CPU per request of build A, build B
// and the pass-through, in one workerd process, measured in alternating
// rounds, so that a change worth a few hundredths of a millisecond shows
// above this machine's run-to-run drift (which moves all three together).
//
//   node tests/bench/ab.mjs --a=DIR --b=DIR [--kind=static|virtual|stream|translated] [--rounds=7] [--seconds=4] [--conns=1]
//        [--v8flags=--flag,--flag] [--log=TEXT] [--settle=MS]
//
// Each DIR holds a build (index.js, index_bg.wasm: copy build/ aside before
// rebuilding) and may hold its own entry.mjs (else src/edge/entry.mjs is
// used), which may be any worker (a JavaScript baseline, say) that exports
// the three Durable Object classes. `--v8flags` passes V8 flags through
// workerd's config (`--perf-basic-prof` writes the JIT symbol map perf
// reads); `--log=TEXT` prints the last lines of workerd's output holding
// TEXT. With AB_PERF=a|b|pass (and AB_PERF_OUT=FILE), it records one side
// with `perf record -g` instead of comparing (AB_STRACE=1: `strace -c -f`).
// AB_WARM=SECONDS warms each side that long first (default 2; 30 puts the
// gateway's hot wasm past V8's baseline compiler, as in production).
// Each side's window ends `--settle` ms (default 1500) after its run, so
// the work it leaves behind (a usage batch, log lines, a collection) is
// counted for it and not for the side after it, and the order rotates so
// that each side is first, middle and last equally often. A placeholder
// service is listed before the two builds: without it, one build against
// itself read B 0.02-0.03 ms cheaper than A, and with the two services'
// order swapped in the config, A cheaper by as much (the service listed
// first pays more; the cause is not known); with it, 0.000 (9 rounds). For
// a difference below about 0.03 ms, still run it twice with the sides
// swapped and take half the difference of the two B − A medians.
// Prints per round and the medians; writes nothing but a temp dir it
// removes. Loopback only; every process it starts is stopped when it ends.

import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  ADMIN, HERE, KEY, ROOT, WORKERD, arg, cpuMs, gatewayService, sleep, start, prepareRun, stopAll, supportServices, virtualKey, waitFor } from './harness.mjs';

const KIND = arg('kind', 'static');
/** A 20-chunk stream: passed through (`stream`) or translated from Anthropic's events (`translated`). */
const STREAM = KIND === 'stream' || KIND === 'translated';
const ROUNDS = Number(arg('rounds', '7'));
const SECONDS = Number(arg('seconds', '4'));
const CONNS = Number(arg('conns', '1'));
/** How long a side's trailing work is waited for after its run (ms). */
const SETTLE_MS = Number(arg('settle', '1500'));
const BUILDS = { a: path.resolve(arg('a', path.join(ROOT, 'build'))), b: path.resolve(arg('b', path.join(ROOT, 'build'))) };

const median = (xs) => { const s = [...xs].sort((p, q) => p - q); return s[Math.floor(s.length / 2)]; };

/** The capnp service of one gateway build, its modules under `sub/`. */
function gatewayOf(name, sub, nginx) {
  return gatewayService({
    name,
    modules: [`(name = "entry.mjs", esModule = embed "${sub}/entry.mjs")`, `(name = "index.js", esModule = embed "${sub}/index.js")`,
      `(name = "index_bg.wasm", wasm = embed "${sub}/index_bg.wasm")`],
    key: KEY,
    admin: ADMIN,
    unique: `ab-${name}`,
    bindings: [`(name = "UPSTREAM_URL", text = "http://127.0.0.1:${nginx}/v1/chat/completions")`],
  });
}

async function main() {
  const { dir, mock, ports } = await prepareRun('gateway-ab-', ['a', 'b', 'pass'], { shm: true });
  try {
    for (const side of ['a', 'b']) {
      mkdirSync(path.join(dir, `side-${side}`));
      for (const f of ['index.js', 'index_bg.wasm']) copyFileSync(path.join(BUILDS[side], f), path.join(dir, `side-${side}`, f));
      const entry = existsSync(path.join(BUILDS[side], 'entry.mjs')) ? path.join(BUILDS[side], 'entry.mjs') : path.join(ROOT, 'src/edge/entry.mjs');
      writeFileSync(path.join(dir, `side-${side}`, 'entry.mjs'), readFileSync(entry, 'utf8').replaceAll('../../build/index.js', './index.js'));
    }
    // The first service listed: a placeholder no request reaches (see the header).
    writeFileSync(path.join(dir, 'placeholder.js'), 'export default { fetch() { return new Response(null, { status: 404 }); } };');
    writeFileSync(path.join(dir, 'workerd.capnp'), `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "placeholder", worker = (modules = [(name = "placeholder.js", esModule = embed "placeholder.js")], compatibilityDate = "2026-10-01")),
    ${gatewayOf('gateway-a', 'side-a', ports.nginx)},
    ${gatewayOf('gateway-b', 'side-b', ports.nginx)},
    ${supportServices(dir, STREAM ? `http://127.0.0.1:${mock.port}` : `http://127.0.0.1:${ports.nginx}`)}
  ],
  v8Flags = [${(arg('v8flags', '') || '').split(',').filter(Boolean).map((f) => JSON.stringify(f)).join(', ')}],
  sockets = [
    (name = "a", address = "127.0.0.1:${ports.a}", http = (), service = "gateway-a"),
    (name = "b", address = "127.0.0.1:${ports.b}", http = (), service = "gateway-b"),
    (name = "pass", address = "127.0.0.1:${ports.pass}", http = (), service = "pass"),
  ],
);`);
    const workerd = start(WORKERD, ['serve', path.join(dir, 'workerd.capnp')], { cwd: dir });
    const url = (side) => `http://127.0.0.1:${ports[side]}`;
    for (const side of ['a', 'b']) await waitFor(`${url(side)}/health`);
    await waitFor(`http://127.0.0.1:${ports.nginx}/`);

    const auth = {};
    for (const side of ['a', 'b']) {
      auth[side] = `Bearer ${KEY}`;
      if (KIND === 'virtual') auth[side] = `Bearer ${await virtualKey(url(side), 'ab')}`;
    }
    auth.pass = '';
    const bodyFile = (side) => {
      const file = path.join(dir, `body-${side}.json`);
      const gateway = { stream: 'stream', translated: 'stream-translated' }[KIND] ?? 'bench';
      const model = STREAM ? (side === 'pass' ? 'mock-model;chunks=20,interval_ms=0' : gateway) : (side === 'pass' ? 'bench-model' : gateway);
      writeFileSync(file, JSON.stringify({
        model, stream: STREAM,
        messages: [{ role: 'system', content: 'You are a helpful assistant.' }, { role: 'user', content: 'Hello there, how are you?' }],
        temperature: 0.2, max_tokens: 256,
      }));
      return file;
    };
    const bodies = { a: bodyFile('a'), b: bodyFile('b'), pass: bodyFile('pass') };
    const wrk = (side, seconds) => {
      const c = start('wrk', ['-t1', `-c${CONNS}`, `-d${seconds}s`, '--timeout', '10s', '-s', path.join(HERE, 'wrk.lua'), `${url(side)}/v1/chat/completions`], {
        env: { ...process.env, BENCH_METHOD: 'POST', BENCH_BODY_FILE: bodies[side], BENCH_AUTH: auth[side], BENCH_REQUESTS: '0' },
      });
      return c.exited.then(() => JSON.parse(c.output.split('\n').find((l) => l.startsWith('BENCH_JSON ')).slice(11)));
    };
    for (const side of ['pass', 'a', 'b']) await wrk(side, Number(process.env.AB_WARM ?? 2)); // warm up: JIT, wasm tier-up, leases
    if (process.env.AB_PERF) {
      // perf record of workerd while one side runs (AB_PERF=a|b|pass).
      const perf = process.env.AB_STRACE
        ? start('strace', ['-c', '-f', '-o', process.env.AB_PERF_OUT ?? '/tmp/strace.txt', '-p', String(workerd.pid)])
        : start('perf', ['record', '-F', '2000', '-g', '-o', process.env.AB_PERF_OUT ?? '/tmp/perf.data', '-p', String(workerd.pid)]);
      await sleep(500);
      const r = await wrk(process.env.AB_PERF, SECONDS);
      process.kill(perf.pid, 'SIGINT');
      await perf.exited;
      console.log(`perf: ${r.requests} requests of ${process.env.AB_PERF}`);
      return;
    }
    const cpu = { pass: [], a: [], b: [] };
    const rps = { pass: [], a: [], b: [] };
    for (let round = 0; round < ROUNDS; round++) {
      // Each build first, middle and last equally often over four rounds.
      const order = [['pass', 'a', 'b'], ['b', 'a', 'pass'], ['pass', 'b', 'a'], ['a', 'b', 'pass']][round % 4];
      const line = [];
      for (const side of order) {
        const before = cpuMs(workerd.pid);
        const r = await wrk(side, SECONDS);
        // The side's trailing work (its last usage batch, its log lines, a
        // collection) is its own: waited for here, it is not counted in the
        // next side's window (all sides share one workerd process).
        await sleep(SETTLE_MS);
        const per = (cpuMs(workerd.pid) - before) / r.requests;
        cpu[side].push(per);
        rps[side].push(r.requests / SECONDS);
        line.push(`${side} ${per.toFixed(3)} ms (${Math.round(r.requests / SECONDS)}/s, ${r.errors ?? 0} errors)`);
      }
      console.log(`round ${round + 1}: ${line.join(', ')}`);
    }
    const m = (side) => median(cpu[side]);
    const diffs = (x, y) => cpu[x].map((v, i) => v - cpu[y][i]);
    console.log(`\n${KIND}, ${CONNS} conn(s), ${ROUNDS} rounds of ${SECONDS} s, medians of CPU per request (workerd, all threads):`);
    console.log(`  pass-through ${m('pass').toFixed(3)} ms   A ${m('a').toFixed(3)} ms   B ${m('b').toFixed(3)} ms`);
    console.log(`  added over the pass-through: A +${median(diffs('a', 'pass')).toFixed(3)} ms, B +${median(diffs('b', 'pass')).toFixed(3)} ms`);
    console.log(`  B − A per round: ${diffs('b', 'a').map((d) => d.toFixed(3)).join(' ')}; median ${median(diffs('b', 'a')).toFixed(3)} ms`);
    console.log(`  req/s: pass ${Math.round(median(rps.pass))}, A ${Math.round(median(rps.a))}, B ${Math.round(median(rps.b))}`);
    const shown = arg('log', '');
    if (shown) console.log(workerd.output.split('\n').filter((l) => l.includes(shown)).slice(-6).join('\n'));
    const problems = workerd.output.split('\n').filter((l) => !l.startsWith('{"event"') && /error|not sent|panick/i.test(l) && !/Cache API is unavailable/.test(l));
    if (problems.length) console.log(`workerd reported ${problems.length} problems, first: ${problems.slice(0, 3).join('\n')}`);
  } finally {
    stopAll();
    await mock.close();
    rmSync(dir, { recursive: true, force: true });
  }
}


main().catch((e) => { console.error(e); stopAll(); process.exit(1); });
