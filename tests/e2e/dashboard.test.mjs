// The dashboard in a real browser: Debian's headless Chromium driven by
// puppeteer-core (no browser download), every request but the gateway's
// blocked. After a mixed load (several keys, teams, models, providers, a
// failover that opens a breaker, a spent budget), it signs in with the
// admin token, opens every page, checks the key figures in the DOM against
// the admin API, and writes a screenshot of each page
// (tests/e2e/screenshots/, ignored by git; SCREENSHOT_DIR elsewhere).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { startMock } from '../mock/server.mjs';
import { startGateway, ADMIN_TOKEN, ROOT } from './harness.mjs';
import { ALERT_SECRET, observeConfig, mixedLoad, startReceiver, setConfig, flush, adminJson, eventually } from './observe_fixture.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const SHOTS = process.env.SCREENSHOT_DIR ?? path.join(ROOT, 'tests/e2e/screenshots');
const skip = CHROMIUM ? false : 'no Chromium at /usr/bin/chromium: scripts/setup installs Debian\'s `chromium` with apt (skipped because apt was unreachable)';

let mock;
let gw;
let receiver;
let load;
let browser;
let page;
const blocked = [];
const served = [];
const today = () => new Date().toISOString().slice(0, 10);

before(async () => {
  if (skip) return;
  mock = await startMock();
  receiver = await startReceiver();
  gw = await startGateway({ vars: { ALERT_SECRET } });
  const config = observeConfig(mock.url, `${receiver.url}/ok`, { revision: 'dashboard-1' });
  await setConfig(gw, config);
  load = await mixedLoad(gw, {
    beforeLogged: async (keys) => {
      config.request_logs = { keys: [keys.logged.key.id], redact: true };
      await setConfig(gw, config);
    },
  });
  await flush(gw);
  // The budget alerts reach the webhook (and the alerts list) via the key's object.
  await eventually(() => assert.equal(receiver.of('budget_100').length, 1), 20000);
  const { default: puppeteer } = await import('puppeteer-core');
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--window-size=1400,1000'],
  });
  page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 1000 });
  // The network to anything but the gateway is blocked.
  await page.setRequestInterception(true);
  page.on('request', (req) => {
    if (req.url().startsWith(gw.url)) {
      served.push(req.url());
      req.continue();
    } else if (/^(data|blob):/.test(req.url())) {
      // Inline resources (the browser's own icons), not the network.
      req.continue();
    } else {
      blocked.push(req.url());
      req.abort('blockedbyclient');
    }
  });
  page.on('pageerror', (e) => { throw e; });
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  await receiver?.close();
  await mock?.close();
});

const q = (p) => adminJson(gw, `/admin/analytics?from=${today()}&to=${today()}${p}`);
/** The data-value of `[data-k=k]` (within `scope`). */
const valueOf = (k, scope = '') => page.$eval(`${scope} [data-k="${k}"]`, (el) => el.dataset.value ?? el.textContent);
const textOf = (sel) => page.$eval(sel, (el) => el.textContent.trim());

async function open(name) {
  await page.evaluate((n) => { location.hash = n; }, name);
  await page.waitForFunction((n) => document.querySelector('#page')?.dataset.loaded === n, { timeout: 15000 }, name);
  // Charts draw after the data.
  await new Promise((r) => setTimeout(r, 300));
  const file = path.join(SHOTS, `dashboard-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  assert.ok(existsSync(file));
}

test('the dashboard asks for the admin token and keeps it out of URLs', { skip }, async () => {
  await page.goto(`${gw.url}/dashboard/`, { waitUntil: 'networkidle0' });
  assert.equal(await page.$eval('#login', (el) => el.hidden), false);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-login.png') });
  // A wrong token is refused.
  await page.type('#token', 'wrong-token');
  await page.click('#login-form button');
  await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0);
  assert.match(await textOf('#login-error'), /refused/);
  await page.type('#token', ADMIN_TOKEN);
  await page.click('#login-form button');
  await page.waitForFunction(() => document.querySelector('#page')?.dataset.loaded === 'overview', { timeout: 15000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('gateway-admin-token')), ADMIN_TOKEN);
  assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing kept beyond the tab');
  assert.ok(served.every((u) => !u.includes(ADMIN_TOKEN)), 'the token never appears in a URL');
});

test('overview: spend today and this month, requests, error rate, latency', { skip }, async () => {
  const day = await q('');
  await open('overview');
  assert.equal(Number(await valueOf('spend-today')), day.totals.cost_pico);
  assert.equal(Number(await valueOf('spend-month')), (await adminJson(gw, `/admin/analytics?from=${today().slice(0, 7)}-01&to=${today()}`)).totals.cost_pico);
  assert.equal(Number(await valueOf('requests')), day.totals.requests);
  assert.equal(Number(await valueOf('failovers')), 3);
  assert.equal(Number(await valueOf('error-rate')), day.totals.error_rate);
  assert.equal(Number(await valueOf('latency-p50')), day.totals.latency_ms.p50);
  assert.equal(Number(await valueOf('latency-p95')), day.totals.latency_ms.p95);
  assert.equal(await textOf('[data-k="budgeted-today"]'), '$0.010000', 'the budgeted key spent its budget');
  // The capped key at its daily budget.
  const capped = `tr[data-key="${load.keys.budget.key.id}"]`;
  assert.equal(await textOf(`${capped} [data-k="spent-today"]`), '$0.010000');
  assert.equal(await page.$$eval('#c-req .uplot, #c-lat .uplot', (els) => els.length), 2, 'two charts drawn');
});

test('models and providers: share, cost, latency, failovers', { skip }, async () => {
  const [models, providers] = await Promise.all([q('&group_by=model'), q('&group_by=provider')]);
  await open('models');
  for (const g of models.groups) {
    const row = `#by-model tr[data-group="${g.group}"]`;
    assert.equal(Number(await valueOf('requests', row)), g.requests, g.group);
    assert.equal(Number(await valueOf('cost', row)), g.cost_pico, g.group);
    assert.equal(Number(await valueOf('failovers', row)), g.failovers, g.group);
  }
  assert.equal(Number(await valueOf('failovers', '#by-model tr[data-group="failover"]')), 3);
  for (const g of providers.groups) {
    assert.equal(Number(await valueOf('requests', `#by-provider tr[data-group="${g.group}"]`)), g.requests, g.group);
  }
  assert.equal(await page.$$eval('#by-location tbody tr', (rows) => rows.length), 2, 'DFW and FRA');
});

test('keys: list with usage, create, change limits, rotate, revoke', { skip }, async () => {
  const byKey = await q('&group_by=key');
  await open('keys');
  for (const [name, k] of Object.entries(load.keys)) {
    const g = byKey.groups.find((x) => x.group === k.key.id);
    const row = `#keys tr[data-key="${k.key.id}"]`;
    assert.equal(Number(await valueOf('requests', row)), g.requests, name);
    assert.equal(Number(await valueOf('cost', row)), g.cost_pico, name);
  }
  assert.match(await textOf(`#keys tr[data-key="${load.keys.budget.key.id}"] [data-k="budgets"]`), /daily \$0\.010000/);
  // Create.
  await page.type('#create-key input[name=name]', 'made-in-browser');
  await page.type('#create-key input[name=team]', 'web');
  await page.type('#create-key input[name=daily_usd]', '5');
  await page.click('#create-key button');
  await page.waitForSelector('#issued [data-k="secret"]', { timeout: 10000 });
  const secret = await textOf('#issued [data-k="secret"]');
  assert.match(secret, /^sk-gw-[0-9a-f]{16}_/);
  const id = secret.slice(6, 22);
  const created = await adminJson(gw, `/admin/keys/${id}`);
  assert.equal(created.team, 'web');
  assert.equal(created.budgets.daily_usd, 5);
  // Change its limits.
  await page.click(`#keys tr[data-key="${id}"] button[data-act=edit]`);
  await page.waitForSelector('#edit-key');
  await page.type('#edit-key input[name=rpm]', '42');
  await page.click('#edit-key button');
  await eventually(async () => assert.equal((await adminJson(gw, `/admin/keys/${id}`)).limits.rpm, 42), 5000);
  // The list is drawn again with the new limit.
  await page.waitForFunction((k) => document.querySelector(`#keys tr[data-key="${k}"] [data-k="limits"]`)?.textContent === 'rpm 42', {}, id);
  // Usage per key.
  await page.click(`#keys tr[data-key="${load.keys.search.key.id}"] button[data-act=usage]`);
  await page.waitForSelector('#key-detail [data-k="key-requests"]');
  const report = await adminJson(gw, `/admin/usage?key=${load.keys.search.key.id}`);
  assert.equal(Number(await valueOf('key-requests', '#key-detail')), report.requests);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-keys-usage.png'), fullPage: true });
  // Rotate and revoke (confirmations accepted).
  page.on('dialog', (d) => d.accept());
  await page.click(`#keys tr[data-key="${id}"] button[data-act=rotate]`);
  await page.waitForSelector('#key-detail [data-k="secret"]', { timeout: 10000 });
  assert.notEqual(await textOf('#key-detail [data-k="secret"]'), secret);
  await page.click(`#keys tr[data-key="${id}"] button[data-act=revoke]`);
  await eventually(async () => assert.equal((await adminJson(gw, `/admin/keys/${id}`)).revoked, true), 5000);
  await page.waitForFunction((k) => document.querySelector(`#keys tr[data-key="${k}"] .badge`)?.textContent === 'revoked', {}, id);
});

test('routing config: view, validate with errors at their path', { skip }, async () => {
  await open('config');
  assert.equal(await textOf('[data-k="revision"]'), 'dashboard-1');
  const doc = JSON.parse(await page.$eval('#doc', (el) => el.value));
  assert.ok(doc.models.failover);
  // Break it: an unknown provider and a bad flush interval.
  doc.models.failover.targets[1].provider = 'opnai';
  doc.analytics.flush_ms = 5;
  await page.$eval('#doc', (el, v) => { el.value = v; }, JSON.stringify(doc, null, 2));
  await page.click('#validate');
  await page.waitForSelector('#problems code');
  const paths = await page.$$eval('#problems code', (els) => els.map((e) => e.dataset.path));
  assert.deepEqual(paths.sort(), ['analytics.flush_ms', 'models.failover.targets[1].provider']);
  assert.match(await textOf('#verdict'), /2 problem/);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-config-errors.png'), fullPage: true });
  // Nothing was stored.
  assert.equal((await adminJson(gw, '/admin/config')).revision, 'dashboard-1');
});

test('health: the open breaker, the alerts sent', { skip }, async () => {
  await open('health');
  assert.equal(Number(await valueOf('breakers-open')), 1);
  assert.equal(await textOf('#targets tr[data-target="mock/down;status=503"] [data-k="state"]'), 'open');
  assert.equal(await textOf('#targets tr[data-target="claude/claude-mock"] [data-k="state"]'), 'closed');
  const events = await page.$$eval('#alerts tbody tr', (rows) => rows.map((r) => r.dataset.event));
  for (const e of ['breaker_open', 'budget_80', 'budget_100', 'model_down']) assert.ok(events.includes(e), `${e} in ${events}`);
});

test('request logs: the logged key, redacted', { skip }, async () => {
  await open('logs');
  const rows = await page.$$eval('#log-records tbody tr[data-request]', (r) => r.length);
  assert.equal(rows, 2);
  const text = await page.$eval('#log-records', (el) => el.textContent);
  assert.ok(text.includes('redacted'));
  assert.ok(!text.includes('please log this'), 'no message text');
});

test('nothing but the gateway was asked for', { skip }, async () => {
  assert.deepEqual(blocked, []);
  assert.ok(served.some((u) => u.endsWith('/vendor/uPlot.iife.min.js')), 'the chart library comes from the gateway');
});
