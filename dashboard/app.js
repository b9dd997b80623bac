// The gateway's dashboard: a small single-page app over the admin API.
// No framework and no network but the gateway: the admin token lives in
// sessionStorage (this tab only) and goes in the Authorization header.
// Every figure shown is also in a data-k / data-value attribute, so tests
// (and people) can read exact values.
'use strict';

const TOKEN_KEY = 'gateway-admin-token';
const $ = (sel, el = document) => el.querySelector(sel);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const DAY = 86_400_000;
const charts = [];

// ---------- formatting ----------
const fmtInt = (n) => Number(n ?? 0).toLocaleString('en-US');
const fmtUsd = (v) => (v == null ? '—' : '$' + (Math.abs(v) >= 100 ? v.toFixed(2) : v.toFixed(6)));
const fmtMs = (v) => (v == null ? '—' : `${fmtInt(v)} ms`);
const fmtPct = (v) => (v == null ? '—' : `${(v * 100).toFixed(1)}%`);
const dateOf = (ms) => new Date(ms).toISOString().slice(0, 10);
const timeOf = (ms) => new Date(ms).toISOString().replace('T', ' ').slice(0, 19);

/** A metric card; the exact value goes in data-value. */
function card(k, label, text, value, sub = '', bar = null) {
  let barHtml = '';
  if (bar != null) {
    const pct = Math.min(100, Math.max(0, bar * 100));
    const cls = bar >= 1 ? 'bad' : bar >= 0.8 ? 'warn' : '';
    barHtml = `<div class="bar ${cls}"><span style="width:${pct}%"></span></div>`;
  }
  return `<div class="card metric"><div class="label">${esc(label)}</div>
    <div class="value" data-k="${esc(k)}" data-value="${esc(value)}">${esc(text)}</div>
    <div class="sub">${sub}</div>${barHtml}</div>`;
}

// ---------- API ----------
function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, { method = 'GET', body } = {}) {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token()}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  if (res.status === 401) { signOut('The admin token was refused.'); throw new Error('unauthorized'); }
  if (!res.ok) throw new Error(json?.error?.message ?? `${res.status} ${text.slice(0, 200)}`);
  return json;
}

/** The selected period as analytics parameters. */
function period() {
  const v = $('#period').value;
  const today = dateOf(Date.now());
  if (v === 'today') return { from: today, to: today, interval: 'hour', step: 3_600_000, label: 'today' };
  const days = Number(v);
  return { from: dateOf(Date.now() - (days - 1) * DAY), to: today, interval: 'day', step: DAY, label: `last ${days} days` };
}

/** Every bucket start of the period up to now (a chart's x values). */
function buckets(p) {
  const start = Date.parse(`${p.from}T00:00:00Z`);
  const xs = [];
  for (let t = start; t <= Date.now(); t += p.step) xs.push(t);
  return xs;
}

/** A series' values at `xs` (`fill` where a bucket has no point). */
function along(xs, points, f, fill = 0) {
  const at = new Map(points.map((pt) => [pt.t, pt]));
  return xs.map((t) => (at.has(t) ? f(at.get(t)) ?? null : fill));
}

function analytics(params) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== ''));
  return api(`/admin/analytics?${q}`);
}

// ---------- charts ----------
function clearCharts() { while (charts.length) charts.pop().destroy(); }

function chart(el, title, series, xs, ys, { ms = false, step = 3_600_000 } = {}) {
  if (!window.uPlot) { el.textContent = 'chart library missing'; return; }
  const colors = ['#3b5bdb', '#e8590c', '#2b8a3e', '#c92a2a', '#7048e8', '#0c8599'];
  const opts = {
    title, width: Math.max(320, el.clientWidth - 20), height: 220,
    series: [{}, ...series.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 2, points: { show: xs.length < 40 },
      value: (u, v) => (v == null ? '—' : ms ? `${v} ms` : fmtInt(v)) }))],
    axes: [{}, { size: 60 }],
    // The whole period, even with one point in it.
    scales: { x: { time: true, range: () => [xs[0] / 1000, (xs[xs.length - 1] + step) / 1000] } },
  };
  charts.push(new uPlot(opts, [xs.map((t) => t / 1000), ...ys], el));
}

// ---------- pages ----------
const pages = {};

pages.overview = async (main) => {
  const p = period();
  const now = new Date();
  const today = dateOf(now.getTime());
  const monthStart = `${today.slice(0, 7)}-01`;
  const [day, month, series, keys, byKeyDay, byKeyMonth] = await Promise.all([
    analytics({ from: today, to: today }),
    analytics({ from: monthStart, to: today }),
    analytics({ from: p.from, to: p.to, interval: p.interval }),
    api('/admin/keys'),
    analytics({ from: today, to: today, group_by: 'key' }),
    analytics({ from: monthStart, to: today, group_by: 'key' }),
  ]);
  // Budgets are per key: the bar compares the budgeted keys' spend with
  // the sum of their budgets.
  const budgeted = (f) => keys.data.filter((k) => !k.revoked && k.budgets?.[f] != null);
  const spentBy = (a, ks) => ks.reduce((s, k) => s + (a.groups.find((g) => g.group === k.id)?.cost_usd ?? 0), 0);
  const dailyBudget = budgeted('daily_usd').reduce((a, k) => a + k.budgets.daily_usd, 0);
  const monthlyBudget = budgeted('monthly_usd').reduce((a, k) => a + k.budgets.monthly_usd, 0);
  const dailySpent = spentBy(byKeyDay, budgeted('daily_usd'));
  const monthlySpent = spentBy(byKeyMonth, budgeted('monthly_usd'));
  const t = series.totals;
  main.innerHTML = `<h1>Overview</h1>
    <div class="cards">
      ${card('spend-today', 'Spend today', fmtUsd(day.totals.cost_usd), day.totals.cost_pico,
        dailyBudget ? `keys with daily budgets: <span data-k="budgeted-today">${esc(fmtUsd(dailySpent))}</span> of ${esc(fmtUsd(dailyBudget))}` : 'no daily budgets', dailyBudget ? dailySpent / dailyBudget : null)}
      ${card('spend-month', 'Spend this month', fmtUsd(month.totals.cost_usd), month.totals.cost_pico,
        monthlyBudget ? `keys with monthly budgets: ${esc(fmtUsd(monthlySpent))} of ${esc(fmtUsd(monthlyBudget))}` : 'no monthly budgets', monthlyBudget ? monthlySpent / monthlyBudget : null)}
      ${card('requests', `Requests (${p.label})`, fmtInt(t.requests), t.requests, `${fmtInt(t.input_tokens)} in / ${fmtInt(t.output_tokens)} out tokens`)}
      ${card('error-rate', 'Error rate', fmtPct(t.error_rate), t.error_rate, `${fmtInt(t.errors)} errors`)}
      ${card('failovers', 'Failovers', fmtInt(t.failovers), t.failovers, `${fmtInt(t.cache_hits)} cache hits`)}
      ${card('latency-p50', 'Latency p50', fmtMs(t.latency_ms.p50), t.latency_ms.p50 ?? '', `p95 <span data-k="latency-p95" data-value="${esc(t.latency_ms.p95 ?? '')}">${esc(fmtMs(t.latency_ms.p95))}</span>`)}
      ${card('ttft-p50', 'First byte p50', fmtMs(t.ttft_ms.p50), t.ttft_ms.p50 ?? '', `p95 <span data-k="ttft-p95" data-value="${esc(t.ttft_ms.p95 ?? '')}">${esc(fmtMs(t.ttft_ms.p95))}</span>`)}
    </div>
    <div class="charts"><div class="card" id="c-req"></div><div class="card" id="c-lat"></div></div>
    <h2>Budgets</h2>
    <table id="budgets"><thead><tr><th>Key</th><th>Team</th><th class="num">Spent today</th><th>Daily budget</th><th class="num">Spent this month</th><th>Monthly budget</th></tr></thead><tbody></tbody></table>`;
  const xs = buckets(p);
  const pts = series.series;
  chart($('#c-req'), `Requests and errors (${p.label})`, ['requests', 'errors'], xs,
    [along(xs, pts, (s) => s.requests), along(xs, pts, (s) => s.errors)], { step: p.step });
  chart($('#c-lat'), `Latency and first byte, ms (${p.label})`, ['latency p50', 'latency p95', 'first byte p50', 'first byte p95'], xs,
    [along(xs, pts, (s) => s.latency_ms.p50, null), along(xs, pts, (s) => s.latency_ms.p95, null),
      along(xs, pts, (s) => s.ttft_ms.p50, null), along(xs, pts, (s) => s.ttft_ms.p95, null)], { ms: true, step: p.step });
  const spent = (a, id) => a.groups.find((g) => g.group === id)?.cost_usd ?? 0;
  const rows = keys.data.filter((k) => k.budgets && (k.budgets.daily_usd || k.budgets.monthly_usd));
  const budgetCell = (s, b) => (b ? `${fmtUsd(b)} <div class="bar ${s / b >= 1 ? 'bad' : s / b >= 0.8 ? 'warn' : ''}"><span style="width:${Math.min(100, (s / b) * 100)}%"></span></div>` : '—');
  $('#budgets tbody').innerHTML = rows.length ? rows.map((k) => {
    const d = spent(byKeyDay, k.id), m = spent(byKeyMonth, k.id);
    return `<tr data-key="${esc(k.id)}"><td>${esc(k.name)} <span class="muted">${esc(k.id)}</span></td><td>${esc(k.team ?? '')}</td>
      <td class="num" data-k="spent-today">${esc(fmtUsd(d))}</td><td>${budgetCell(d, k.budgets.daily_usd)}</td>
      <td class="num" data-k="spent-month">${esc(fmtUsd(m))}</td><td>${budgetCell(m, k.budgets.monthly_usd)}</td></tr>`;
  }).join('') : '<tr><td colspan="6" class="muted">No key has a daily or monthly budget.</td></tr>';
};

function groupTable(id, title, a) {
  const total = a.totals;
  const rows = a.groups.map((g) => `<tr data-group="${esc(g.group)}">
      <td>${esc(g.group || '(none)')}</td>
      <td class="num" data-k="requests" data-value="${g.requests}">${fmtInt(g.requests)}</td>
      <td class="num">${fmtPct(total.requests ? g.requests / total.requests : 0)}<span class="share"><span style="width:${total.requests ? (g.requests / total.requests) * 100 : 0}%"></span></span></td>
      <td class="num" data-k="cost" data-value="${g.cost_pico}">${fmtUsd(g.cost_usd)}</td>
      <td class="num">${fmtPct(total.cost_pico ? g.cost_pico / total.cost_pico : 0)}</td>
      <td class="num" data-k="tokens">${fmtInt(g.input_tokens)} / ${fmtInt(g.output_tokens)}</td>
      <td class="num" data-k="p50">${fmtMs(g.latency_ms.p50)}</td><td class="num" data-k="p95">${fmtMs(g.latency_ms.p95)}</td>
      <td class="num" data-k="ttft">${fmtMs(g.ttft_ms.p50)}</td>
      <td class="num" data-k="errors" data-value="${g.errors}">${fmtInt(g.errors)}</td>
      <td class="num" data-k="failovers" data-value="${g.failovers}">${fmtInt(g.failovers)}</td></tr>`).join('');
  return `<h2>${esc(title)}</h2><table id="${esc(id)}"><thead><tr><th>${esc(title.split(' ').pop())}</th><th class="num">Requests</th><th class="num">Share</th><th class="num">Cost</th><th class="num">Cost share</th>
    <th class="num">Tokens in / out</th><th class="num">p50</th><th class="num">p95</th><th class="num">First byte p50</th><th class="num">Errors</th><th class="num">Failovers</th></tr></thead>
    <tbody>${rows || '<tr><td colspan="11" class="muted">No requests in this period.</td></tr>'}</tbody></table>`;
}

pages.models = async (main) => {
  const p = period();
  const [byModel, byProvider, byLocation, series] = await Promise.all([
    analytics({ from: p.from, to: p.to, group_by: 'model' }),
    analytics({ from: p.from, to: p.to, group_by: 'provider' }),
    analytics({ from: p.from, to: p.to, group_by: 'location' }),
    analytics({ from: p.from, to: p.to, group_by: 'provider', interval: p.interval }),
  ]);
  main.innerHTML = `<h1>Models &amp; providers <span class="muted">(${esc(p.label)})</span></h1>
    <div class="cards">${card('models-requests', 'Requests', fmtInt(byModel.totals.requests), byModel.totals.requests)}
      ${card('models-cost', 'Cost', fmtUsd(byModel.totals.cost_usd), byModel.totals.cost_pico)}
      ${card('models-failovers', 'Failovers', fmtInt(byModel.totals.failovers), byModel.totals.failovers)}</div>
    <div class="charts"><div class="card" id="c-prov"></div></div>
    ${groupTable('by-model', 'By model', byModel)}
    ${groupTable('by-provider', 'By provider', byProvider)}
    ${groupTable('by-location', 'By location', byLocation)}`;
  const providers = [...new Set(series.series.map((s) => s.group))];
  const xs = buckets(p);
  chart($('#c-prov'), `Requests by provider (${p.label})`, providers.map((x) => x || '(none)'), xs,
    providers.map((pr) => along(xs, series.series.filter((s) => s.group === pr), (s) => s.requests)), { step: p.step });
};

pages.keys = async (main) => {
  const p = period();
  const [keys, byKey] = await Promise.all([api('/admin/keys'), analytics({ from: p.from, to: p.to, group_by: 'key' })]);
  const usage = (id) => byKey.groups.find((g) => g.group === id);
  const limits = (l = {}) => ['rpm', 'rpd', 'tpm', 'max_concurrent'].filter((k) => l[k] != null).map((k) => `${k} ${fmtInt(l[k])}`).join(', ') || '—';
  const budgets = (b = {}) => ['daily_usd', 'monthly_usd', 'total_usd'].filter((k) => b[k] != null).map((k) => `${k.replace('_usd', '')} ${fmtUsd(b[k])}`).join(', ') || '—';
  main.innerHTML = `<h1>Keys</h1>
    <div class="card"><h2 style="margin-top:0">Create a key</h2>
      <form id="create-key" class="inline">
        <label>Name <input name="name" required></label><label>Team <input name="team"></label>
        <label>Models (comma-separated) <input name="allowed_models" placeholder="all"></label>
        <label>rpm <input name="rpm" type="number" min="1" style="width:90px"></label>
        <label>Daily $ <input name="daily_usd" type="number" step="any" min="0" style="width:100px"></label>
        <label>Monthly $ <input name="monthly_usd" type="number" step="any" min="0" style="width:100px"></label>
        <label>Total $ <input name="total_usd" type="number" step="any" min="0" style="width:100px"></label>
        <button type="submit">Create</button></form>
      <div id="issued"></div></div>
    <h2>${fmtInt(keys.data.length)} keys <span class="muted">(usage ${esc(p.label)})</span></h2>
    <table id="keys"><thead><tr><th>Key</th><th>Team</th><th>Status</th><th>Limits</th><th>Budgets</th><th class="num">Requests</th><th class="num">Cost</th><th class="num">Tokens</th><th></th></tr></thead><tbody>
    ${keys.data.map((k) => {
      const u = usage(k.id);
      return `<tr data-key="${esc(k.id)}"><td><strong>${esc(k.name)}</strong><br><span class="muted">${esc(k.secret_hint)}</span></td>
        <td>${esc(k.team ?? '')}</td><td><span class="badge ${k.revoked ? 'revoked' : 'active'}">${k.revoked ? 'revoked' : 'active'}</span></td>
        <td data-k="limits">${esc(limits(k.limits))}</td><td data-k="budgets">${esc(budgets(k.budgets))}</td>
        <td class="num" data-k="requests" data-value="${u?.requests ?? 0}">${fmtInt(u?.requests ?? 0)}</td>
        <td class="num" data-k="cost" data-value="${u?.cost_pico ?? 0}">${fmtUsd(u?.cost_usd ?? 0)}</td>
        <td class="num">${fmtInt(u?.input_tokens ?? 0)} / ${fmtInt(u?.output_tokens ?? 0)}</td>
        <td class="row"><button class="small secondary" data-act="usage">Usage</button><button class="small secondary" data-act="edit">Limits</button>
          <button class="small secondary" data-act="rotate">Rotate</button>${k.revoked ? '' : '<button class="small danger" data-act="revoke">Revoke</button>'}</td></tr>`;
    }).join('')}</tbody></table>
    <div id="key-detail"></div>`;
  const num = (v) => (v === '' || v == null ? undefined : Number(v));
  $('#create-key').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const models = String(f.get('allowed_models') || '').split(',').map((s) => s.trim()).filter(Boolean);
    const body = {
      name: f.get('name'), ...(f.get('team') ? { team: f.get('team') } : {}),
      ...(models.length ? { allowed_models: models } : {}),
      limits: { ...(num(f.get('rpm')) ? { rpm: num(f.get('rpm')) } : {}) },
      budgets: Object.fromEntries(['daily_usd', 'monthly_usd', 'total_usd'].filter((k) => num(f.get(k)) != null).map((k) => [k, num(f.get(k))])),
    };
    try {
      const r = await api('/admin/keys', { method: 'POST', body });
      await render();
      $('#issued').innerHTML = `<p class="ok">Key <strong>${esc(r.key.name)}</strong> created. Its secret is shown this once:</p><div class="secret" data-k="secret">${esc(r.secret)}</div>`;
    } catch (e) { $('#issued').innerHTML = `<p class="error">${esc(e.message)}</p>`; }
  });
  $('#keys').addEventListener('click', async (ev) => {
    const act = ev.target.dataset?.act;
    const id = ev.target.closest('tr')?.dataset.key;
    if (!act || !id) return;
    const detail = $('#key-detail');
    try {
      if (act === 'revoke' && confirm(`Revoke key ${id}? Its requests are refused from now on.`)) {
        await api(`/admin/keys/${id}/revoke`, { method: 'POST' });
        await render();
      } else if (act === 'rotate' && confirm(`Rotate key ${id}? The old secret stops working.`)) {
        const r = await api(`/admin/keys/${id}/rotate`, { method: 'POST' });
        await render();
        $('#key-detail').innerHTML = `<p class="ok">New secret for ${esc(id)}, shown this once:</p><div class="secret" data-k="secret">${esc(r.secret)}</div>`;
      } else if (act === 'usage') {
        const u = await api(`/admin/usage?key=${encodeURIComponent(id)}`);
        detail.innerHTML = `<h2>Usage of ${esc(id)}</h2><div class="cards">
          ${card('key-spent-today', 'Spent today', fmtUsd(u.spent_today_usd), u.spent_today_usd)}
          ${card('key-spent-month', 'Spent this month', fmtUsd(u.spent_this_month_usd), u.spent_this_month_usd)}
          ${card('key-spent-total', 'Spent in total', fmtUsd(u.spent_total_usd), u.spent_total_usd)}
          ${card('key-requests', 'Requests', fmtInt(u.requests), u.requests, `${fmtInt(u.in_flight)} in flight`)}</div>
          <table><thead><tr><th>Date</th><th>Model</th><th class="num">Requests</th><th class="num">Errors</th><th class="num">Tokens in / out</th><th class="num">Cost</th></tr></thead><tbody>
          ${u.by_day.slice().reverse().map((d) => `<tr><td>${esc(d.date)}</td><td>${esc(d.model)}</td><td class="num">${fmtInt(d.requests)}</td><td class="num">${fmtInt(d.errors)}</td>
            <td class="num">${fmtInt(d.input_tokens)} / ${fmtInt(d.output_tokens)}</td><td class="num">${fmtUsd(d.cost_usd)}</td></tr>`).join('')}</tbody></table>`;
      } else if (act === 'edit') {
        const k = keys.data.find((x) => x.id === id);
        const v = (o, f) => (o?.[f] ?? '');
        detail.innerHTML = `<h2>Limits and budgets of ${esc(k.name)}</h2><form id="edit-key" class="inline card">
          ${['rpm', 'rpd', 'tpm', 'max_concurrent'].map((f) => `<label>${f} <input name="${f}" type="number" min="1" value="${esc(v(k.limits, f))}" style="width:100px"></label>`).join('')}
          ${['daily_usd', 'monthly_usd', 'total_usd'].map((f) => `<label>${f.replace('_usd', '')} $ <input name="${f}" type="number" step="any" min="0" value="${esc(v(k.budgets, f))}" style="width:100px"></label>`).join('')}
          <button type="submit">Save</button><span id="edit-result"></span></form>`;
        $('#edit-key').addEventListener('submit', async (e) => {
          e.preventDefault();
          const f = new FormData(e.target);
          const pick = (names) => Object.fromEntries(names.filter((n) => num(f.get(n)) != null).map((n) => [n, num(f.get(n))]));
          try {
            await api(`/admin/keys/${id}`, { method: 'PATCH', body: { limits: pick(['rpm', 'rpd', 'tpm', 'max_concurrent']), budgets: pick(['daily_usd', 'monthly_usd', 'total_usd']) } });
            await render();
          } catch (err) { $('#edit-result').innerHTML = `<span class="error">${esc(err.message)}</span>`; }
        });
      }
    } catch (e) { detail.innerHTML = `<p class="error">${esc(e.message)}</p>`; }
  });
};

pages.config = async (main) => {
  const status = await api('/admin/config');
  main.innerHTML = `<h1>Routing config</h1>
    <p>Live revision <strong data-k="revision">${esc(status.revision || '(none)')}</strong> from <span data-k="source">${esc(status.source)}</span>.
      ${status.rejected ? `<span class="error">The last document in KV was rejected: ${esc(status.rejected.errors.join('; '))}</span>` : ''}</p>
    <div class="row" style="margin-bottom:8px"><button id="validate" type="button" class="secondary">Validate</button><button id="save" type="button">Save</button><span id="verdict" data-k="verdict"></span></div>
    <ul id="problems" class="problems"></ul>
    <textarea id="doc" spellcheck="false"></textarea>`;
  const doc = $('#doc');
  doc.value = JSON.stringify(status.config, null, 2);
  const show = (errors) => {
    $('#problems').innerHTML = errors.map((e) => `<li><code data-path="${esc(e.path)}">${esc(e.path || '(document)')}</code> ${esc(e.message)}</li>`).join('');
  };
  const validate = async () => {
    let r;
    try { r = await api('/admin/config/validate', { method: 'POST', body: doc.value }); } catch (e) { $('#verdict').innerHTML = `<span class="error">${esc(e.message)}</span>`; return false; }
    show(r.errors);
    $('#verdict').innerHTML = r.valid ? '<span class="ok">valid</span>' : `<span class="error">${r.errors.length} problem(s)</span>`;
    return r.valid;
  };
  $('#validate').addEventListener('click', validate);
  $('#save').addEventListener('click', async () => {
    if (!(await validate())) return;
    try {
      await api('/admin/config', { method: 'PUT', body: doc.value });
      $('#verdict').innerHTML = '<span class="ok">saved</span>';
    } catch (e) { $('#verdict').innerHTML = `<span class="error">${esc(e.message)}</span>`; }
  });
  // An error's path selects the line of its last named field.
  $('#problems').addEventListener('click', (ev) => {
    const path = ev.target.dataset?.path;
    if (path == null) return;
    const field = path.split(/[.[\]]/).filter((s) => s && !/^\d+$/.test(s)).pop();
    const at = field ? doc.value.indexOf(`"${field}"`) : 0;
    if (at >= 0) { doc.focus(); doc.setSelectionRange(at, at + field.length + 2); }
  });
};

pages.health = async (main) => {
  const [h, alerts] = await Promise.all([api('/admin/health'), api('/admin/alerts').catch(() => null)]);
  const count = (s) => h.targets.filter((t) => t.state === s).length;
  main.innerHTML = `<h1>Live health</h1>
    <p class="muted">As this isolate${h.location_view ? ' and its location' : ''} know it, ${esc(timeOf(h.at_ms))} UTC. A breaker opens after ${h.breaker.failures} failures in ${fmtInt(h.breaker.window_ms)} ms and skips its target for ${fmtInt(h.breaker.cooldown_ms)} ms.</p>
    <div class="cards">${card('breakers-open', 'Breakers open', String(count('open')), count('open'))}
      ${card('half-open', 'Half open', String(count('half_open')), count('half_open'))}
      ${card('cooling', 'Cooling (429)', String(count('cooling')), count('cooling'))}
      ${card('targets', 'Targets', String(h.targets.length), h.targets.length)}</div>
    <h2>Targets</h2><table id="targets"><thead><tr><th>Target</th><th>Serves</th><th>State</th><th>Until</th><th class="num">First byte (EWMA)</th><th class="num">Samples</th></tr></thead><tbody>
    ${h.targets.map((t) => `<tr data-target="${esc(t.target)}"><td>${esc(t.target)}</td><td>${esc(t.models.join(', '))}</td>
      <td><span class="badge ${esc(t.state)}" data-k="state">${esc(t.state)}</span></td>
      <td>${t.state === 'open' ? esc(timeOf(t.open_until_ms)) : t.state === 'cooling' ? esc(timeOf(t.cooling_until_ms)) : ''}</td>
      <td class="num">${t.ttfb_ewma_ms == null ? '—' : fmtMs(Math.round(t.ttfb_ewma_ms))}</td><td class="num">${fmtInt(t.samples)}</td></tr>`).join('')}</tbody></table>
    <h2>Alerts</h2>
    ${alerts ? `<p class="muted">Webhook: ${alerts.webhook ? `${esc(alerts.webhook.url)} (${alerts.webhook.signed ? 'signed' : 'unsigned'}; ${esc(alerts.webhook.events.join(', '))})` : 'none configured'}; cooldown ${fmtInt(alerts.cooldown_ms)} ms; ${fmtInt(alerts.suppressed)} suppressed, ${fmtInt(alerts.queue.length)} waiting.</p>
    <table id="alerts"><thead><tr><th>When</th><th>Event</th><th>Target</th><th>Outcome</th><th class="num">Attempts</th></tr></thead><tbody>
    ${alerts.data.map((d) => `<tr data-event="${esc(d.alert.event)}"><td>${esc(timeOf(d.alert.at_ms))}</td><td>${esc(d.alert.event)}</td><td>${esc(d.alert.target)}</td>
      <td><span class="badge ${esc(d.outcome)}">${esc(d.outcome)}</span> <span class="muted">${esc(d.detail)}</span></td><td class="num">${d.attempts}</td></tr>`).join('') || '<tr><td colspan="5" class="muted">No alerts yet.</td></tr>'}
    </tbody></table>` : '<p class="muted">Alerts are not bound.</p>'}`;
};

pages.logs = async (main) => {
  const date = main.dataset.date || dateOf(Date.now());
  let logs;
  try { logs = await api(`/admin/logs?date=${date}&limit=200`); } catch (e) {
    main.innerHTML = `<h1>Request logs</h1><p class="muted">${esc(e.message)}</p>`; return;
  }
  main.innerHTML = `<h1>Request logs</h1>
    <p class="muted">Only keys and models listed in <code>request_logs</code> of the routing config are logged. ${fmtInt(logs.objects.length)} objects on
      <input id="log-date" type="date" value="${esc(date)}">.</p>
    <table id="log-records"><thead><tr><th>When</th><th>Request</th><th>Key</th><th>Model</th><th>Provider</th><th class="num">Status</th><th class="num">Latency</th><th class="num">Tokens</th><th class="num">Cost</th></tr></thead><tbody>
    ${logs.data.map((r) => `<tr data-request="${esc(r.request_id)}"><td>${esc(timeOf(r.at_ms))}</td>
      <td><details><summary>${esc(r.request_id)}${r.redacted ? ' <span class="badge">redacted</span>' : ''}</summary>
        ${r.request !== undefined ? `<pre>${esc(JSON.stringify(r.request, null, 2))}</pre>` : ''}${r.response !== undefined ? `<pre>${esc(JSON.stringify(r.response, null, 2))}</pre>` : ''}</details></td>
      <td>${esc(r.key)}</td><td>${esc(r.model)}</td><td>${esc(r.provider ?? '')}</td><td class="num">${r.status}</td><td class="num">${fmtMs(r.latency_ms)}</td>
      <td class="num">${fmtInt(r.input_tokens)} / ${fmtInt(r.output_tokens)}</td><td class="num">${fmtUsd(r.cost_pico / 1e12)}</td></tr>`).join('') || '<tr><td colspan="9" class="muted">No logged requests on this day.</td></tr>'}
    </tbody></table>`;
  $('#log-date').addEventListener('change', (e) => { main.dataset.date = e.target.value; render(); });
};

// ---------- shell ----------
async function render() {
  const name = (location.hash.slice(1) || 'overview').split('?')[0];
  const page = pages[name] ? name : 'overview';
  for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('active', a.dataset.page === page);
  const main = $('#page');
  if (main.dataset.page !== page) { delete main.dataset.date; main.dataset.page = page; }
  $('#status').textContent = 'Loading…';
  clearCharts();
  try {
    await pages[page](main);
    main.dataset.loaded = page;
    $('#status').textContent = `Updated ${timeOf(Date.now())} UTC`;
  } catch (e) {
    if (e.message !== 'unauthorized') {
      main.innerHTML = `<p class="error" data-k="page-error">${esc(e.message)}</p>`;
      $('#status').textContent = '';
    }
  }
}

function signOut(message = '') {
  sessionStorage.removeItem(TOKEN_KEY);
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
}

function start() {
  $('#app').hidden = false;
  $('#login').hidden = true;
  render();
}

$('#login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $('#token').value);
  $('#token').value = '';
  try {
    await api('/admin/config');
    start();
  } catch (e) {
    if (e.message !== 'unauthorized') signOut(e.message);
  }
});
$('#logout').addEventListener('click', () => signOut());
$('#refresh').addEventListener('click', () => render());
$('#period').addEventListener('change', () => render());
window.addEventListener('hashchange', () => { if (token()) render(); });
if (token()) start(); else signOut();
