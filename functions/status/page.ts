// The status page: one static HTML page (no build step) whose small inline script fetches the trust status
// (dump, GET /api/ops/v1/status) and the latest probes (probe, GET /probes) from the same origin with a
// Bearer token the operator pastes once, joins them per project and renders one table, refreshed on a
// timer. Mounted on the all-in-one process and on the router with registerStatusRoutes().
import { createHash } from 'node:crypto';
import type { Env, Hono, MiddlewareHandler } from 'hono';
import { TRUST_TIERS, type TrustTier } from '../../shared/catalog/classifier.js';
import { SECOND_MS } from '../../shared/units.js';

export const STATUS_PATH = '/status';
export const DEFAULT_REFRESH_MS = 30 * SECOND_MS;
/** Where the pasted token lives: this tab only, gone when it closes; never in a URL or a cookie. */
export const TOKEN_STORAGE_KEY = 'flux-ops.status.token';

export interface StatusPageOptions {
  /** Auto-refresh period of the page. */
  refreshMs?: number;
  /** Prefix of the APIs the page reads, when the front door sits under a path (default: same origin root). */
  apiBase?: string;
}

/** Every tier, worst first (a Record so a new tier cannot be left out). */
const SEVERITY: Record<TrustTier, number> = {
  restore_failed: 0,
  no_backups: 1,
  artifact_pending: 2,
  latest_not_complete: 3,
  unverifiable: 4,
  not_restore_verified: 5,
  pipeline_incomplete: 6,
  restorable: 7,
};
const TIERS_WORST_FIRST = [...TRUST_TIERS].sort((a, b) => SEVERITY[a] - SEVERITY[b]);

const STYLE = `
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6475; --line: #dde2ea; --bg: #f6f7f9;
  --pass: #1f7a3d; --pass-bg: #e3f4e8; --fail: #b3261e; --fail-bg: #fde7e5; --wait: #8a5a00; --wait-bg: #fff3d6;
  --unv: #5b2a86; --unv-bg: #efe6f8; --run: #1c5aa6; --run-bg: #e3eefb; --none: #5b6475; --none-bg: #eceff3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 8px;
  padding: 14px 20px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { margin: 0; font-size: 18px; } h1 span { color: var(--muted); font-weight: 400; }
#meta { color: var(--muted); display: flex; gap: 8px; align-items: center; }
main { padding: 16px 20px; }
button { font: inherit; padding: 4px 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; cursor: pointer; }
button:hover { border-color: var(--muted); }
form { max-width: 560px; padding: 16px; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
form label { display: block; font-weight: 600; margin-bottom: 6px; }
form input { width: 100%; font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; padding: 7px 9px;
  border: 1px solid var(--line); border-radius: 6px; margin-bottom: 10px; }
.hint { color: var(--muted); font-size: 12px; margin: 8px 0 0; }
#banner { margin: 0 0 12px; padding: 9px 12px; border-radius: 6px; background: var(--fail-bg); color: var(--fail); }
#banner.stale { background: var(--wait-bg); color: var(--wait); }
#summary { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 12px; align-items: center; }
#summary strong { margin-right: 6px; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; vertical-align: top; padding: 8px 10px; border-bottom: 1px solid var(--line); }
#clusters { margin-top: 20px; }
#clusters caption { text-align: left; font-weight: 600; padding: 6px 0; }
td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
td.bad { color: var(--fail); font-weight: 600; }
#findings { margin: 8px 0 0; padding-left: 20px; color: var(--fail); }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); background: #fafbfc; }
td small, .sub { display: block; color: var(--muted); font-size: 12px; }
td[data-col="project"] strong, td[data-col="project"] small { white-space: nowrap; }
td[data-col="tier"] small { max-width: 52ch; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: var(--bg); padding: 1px 4px; border-radius: 4px; }
.badge, .label { display: inline-block; padding: 2px 8px; border-radius: 999px; font-weight: 600; font-size: 12px;
  white-space: nowrap; border: 1px solid transparent; }
.tier-restorable { color: var(--pass); background: var(--pass-bg); border-color: var(--pass); }
.tier-pipeline_incomplete { color: var(--run); background: var(--run-bg); border-color: var(--run); }
.tier-not_restore_verified, .tier-artifact_pending, .tier-latest_not_complete { color: var(--wait); background: var(--wait-bg); border-color: var(--wait); }
.tier-restore_failed, .tier-no_backups { color: var(--fail); background: var(--fail-bg); border-color: var(--fail); }
.tier-unverifiable { color: var(--unv); background: var(--unv-bg); border: 1px dashed var(--unv); }
.state-pass { color: var(--pass); background: var(--pass-bg); }
.state-fail { color: var(--fail); background: var(--fail-bg); }
.state-pending { color: var(--wait); background: var(--wait-bg); }
.state-unverifiable { color: var(--unv); background: repeating-linear-gradient(135deg, var(--unv-bg) 0 6px, #fff 6px 10px);
  border: 1px dashed var(--unv); }
.state-none { color: var(--none); background: var(--none-bg); }
footer { padding: 4px 20px 20px; color: var(--muted); font-size: 12px; }
footer .label { margin-right: 4px; }
[hidden] { display: none !important; }
`;

// Plain ES2020 for the browser, kept as a string: it ships as written (no bundler), and its hash goes
// into the Content-Security-Policy so no other inline script can run on the page.
const SCRIPT = `
(function () {
  'use strict';
  var KEY = ${JSON.stringify(TOKEN_STORAGE_KEY)};
  var body = document.body;
  var refreshMs = Number(body.getAttribute('data-refresh-ms')) || 30000;
  var apiBase = body.getAttribute('data-api-base') || '';
  var $ = function (id) { return document.getElementById(id); };
  var timer = null;
  // Worst first, so the summary reads as a to-do list.
  var SEVERITY = ${JSON.stringify(TIERS_WORST_FIRST)};
  var loading = false;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function ago(iso, now) {
    var t = Date.parse(iso);
    if (!isFinite(t)) return '';
    return duration(Math.max(0, (now - t) / 1000)) + ' ago';
  }
  function duration(s) {
    if (s < 1) return '<1 s';
    if (s < 90) return Math.round(s) + ' s';
    if (s < 90 * 60) return Math.round(s / 60) + ' min';
    if (s < 36 * 3600) return (s / 3600).toFixed(1).replace(/\\.0$/, '') + ' h';
    return (s / 86400).toFixed(1).replace(/\\.0$/, '') + ' d';
  }
  function bytes(n) {
    if (typeof n !== 'number') return '';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }
  function label(state, text, title) {
    var s = el('span', 'label state-' + state, text);
    s.setAttribute('data-state', state);
    if (title) s.title = title;
    return s;
  }

  function artifactLabel(p) {
    var b = p.backup;
    if (!b) return label('none', '— no backup');
    if (p.labels.artifactValidated) return label('pass', '✓ validated', 'size and SHA-256 match the manifest');
    var st = b.artifactValidationOutcome || b.artifactValidationStatus;
    if (st === 'invalid' || st === 'artifact_invalid') return label('fail', '✗ mismatch', b.error || 'the file no longer matches its manifest');
    if (st === 'missing') return label('fail', '✗ missing', 'the local dump file is missing');
    return label('pending', '… pending', b.status === 'running' ? 'the dump is still being written' : 'not validated yet');
  }
  function restoreLabel(p) {
    var b = p.backup;
    if (!b) return label('none', '— no backup');
    if (p.labels.restoreVerified) {
      return label('pass', '✓ restore-verified', b.restoreVerificationAt ? 'verified ' + b.restoreVerificationAt : '');
    }
    var outcome = b.restoreVerificationOutcome || b.restoreVerificationStatus;
    var why = b.restoreVerificationError || '';
    if (outcome === 'unverifiable') return label('unverifiable', '⚠ could not verify — not a pass', why);
    if (outcome === 'restore_failed') return label('fail', '✗ restore failed', why);
    if (outcome === 'restore_verified') return label('fail', '✗ artifact changed since', 'verified, but the file no longer matches');
    if (outcome === 'skipped') return label('pending', '– skipped', why);
    return label('pending', '… pending', 'restore verification has not run yet');
  }
  // Each copy carries its own verification: which copies are proven, and any whose verification did not pass.
  function copiesText(p) {
    var b = p.backup;
    var copies = b && b.copyVerifications;
    if (!copies) return '';
    var parts = [];
    ['local', 'offsite'].forEach(function (name) {
      var v = copies[name];
      if (!v) return;
      var word = v.proven ? '✓ proven' : v.status === 'restore_verified' ? '✗ copy changed since' :
        v.status === 'restore_failed' ? '✗ failed' : v.status === 'unverifiable' ? '⚠ could not verify' : v.status;
      parts.push(name + ' copy: ' + word + (v.error ? ' (' + v.error + ')' : ''));
    });
    return parts.join(' · ');
  }
  function offsiteLabel(p) {
    var b = p.backup;
    if (!b) return label('none', '— no backup');
    if (p.labels.offsiteReplicated) return label('pass', '✓ replicated', b.offsiteKey || '');
    var off = b.offsiteOutcome || b.offsiteStatus;
    if (off === 'failed') return label('fail', '✗ failed', 'the offsite copy could not be proven');
    if (off === 'conflict') return label('fail', '✗ conflict', 'a different copy already exists offsite');
    return label('pending', '… pending', 'not copied offsite yet');
  }
  function lagCell(p, now) {
    var b = p.backup;
    if (!b) return label('none', '—');
    if (p.labels.offsiteReplicated) {
      var lag = typeof b.offsiteLagSeconds === 'number' ? b.offsiteLagSeconds
        : (b.offsiteReplicatedAt && b.completedAt ? (Date.parse(b.offsiteReplicatedAt) - Date.parse(b.completedAt)) / 1000 : null);
      return label('pass', lag === null || !isFinite(lag) ? 'in sync' : 'in sync (copied in ' + duration(Math.max(0, lag)) + ')');
    }
    if (b.offsiteStatus === 'failed') {
      return label('fail', 'behind: ' + (b.completedAt ? duration((now - Date.parse(b.completedAt)) / 1000) : 'newest backup') + ', copy failed');
    }
    if (!b.completedAt) return label('none', '—', 'the newest backup is not complete');
    return label('pending', 'behind ' + duration(Math.max(0, (now - Date.parse(b.completedAt)) / 1000)),
      'the newest backup is not proven offsite yet');
  }
  function probeCell(p, probes, now) {
    var td = el('td');
    td.setAttribute('data-col', 'probe');
    if (probes.error) { td.appendChild(label('none', probes.error)); return td; }
    var r = probes.bySlug[p.slug];
    if (!r) {
      td.appendChild(label('none', probes.pending[p.slug] ? 'not probed yet' : 'no apiHost'));
      return td;
    }
    var when = ago(r.startedAt, now);
    var ms = typeof r.durationSeconds === 'number' ? Math.round(r.durationSeconds * 1000) + ' ms' : '';
    if (r.success) {
      td.appendChild(label('pass', '✓ ' + (r.status === null ? 'ok' : r.status) + (ms ? ' · ' + ms : ''), r.target));
    } else {
      var what = r.reason === 'status' ? 'HTTP ' + r.status : r.reason || 'failed';
      td.appendChild(label('fail', '✗ ' + what + (r.state === 'down' ? ' · down' : ''), r.hint || ''));
    }
    td.appendChild(el('small', '', when + (r.apiHost ? ' · ' + r.apiHost : '')));
    return td;
  }

  function cell(col, child, sub) {
    var td = el('td');
    td.setAttribute('data-col', col);
    td.appendChild(child);
    if (sub) td.appendChild(el('small', '', sub));
    return td;
  }

  // Freshness: the newest restorable backup's age against the project's maxAge.
  function freshnessCell(p, now) {
    var f = p.freshness;
    var td = el('td');
    td.setAttribute('data-col', 'freshness');
    if (!f) { td.appendChild(label('none', '-')); return td; }
    var state = f.freshness === 'fresh' ? 'pass' : f.freshness === 'stale' ? 'fail' : 'none';
    var text = f.freshness === 'fresh' ? '✓ fresh' : f.freshness === 'stale' ? '✗ stale' : '— never verified';
    td.appendChild(label(state, text, f.message));
    td.setAttribute('data-freshness', f.freshness);
    var age = f.ageSeconds === null ? 'no restorable backup' : duration(f.ageSeconds) + ' old';
    td.appendChild(el('small', '', age + ' · maxAge ' + duration(f.maxAgeSeconds)));
    if (f.freshness !== 'fresh' && f.next) { var n = el('small'); n.appendChild(el('code', '', f.next)); td.appendChild(n); }
    return td;
  }

  function render(status, probes) {
    var now = Date.now();
    var fresh = 0;
    var tbody = document.querySelector('#projects tbody');
    var rows = [];
    var counts = {};
    status.projects.forEach(function (p) {
      counts[p.tier] = (counts[p.tier] || 0) + 1;
      var tr = el('tr');
      tr.setAttribute('data-project', p.slug);
      tr.setAttribute('data-tier', p.tier);

      var name = el('td');
      name.setAttribute('data-col', 'project');
      name.appendChild(el('strong', '', p.slug));
      name.appendChild(el('small', '', p.hash + ' · ' + (p.engine === 'v2_shared' ? 'v2 shared' : 'v1 dedicated')));
      tr.appendChild(name);

      var tier = el('td');
      tier.setAttribute('data-col', 'tier');
      var badge = el('span', 'badge tier-' + p.tier, p.tier);
      badge.title = p.trustworthy ? 'trustworthy: restore-verified' : 'not trustworthy yet';
      tier.appendChild(badge);
      tier.appendChild(el('small', '', p.message));
      if (p.next) { var n = el('small'); n.appendChild(el('code', '', p.next)); tier.appendChild(n); }
      tr.appendChild(tier);

      tr.appendChild(freshnessCell(p, now));
      if (p.freshness && p.freshness.freshness === 'fresh') fresh++;
      tr.appendChild(cell('artifact', artifactLabel(p)));
      tr.appendChild(cell('restore', restoreLabel(p), copiesText(p)));
      tr.appendChild(cell('offsite', offsiteLabel(p)));

      var b = p.backup;
      var age = el('td');
      age.setAttribute('data-col', 'age');
      if (b) {
        var a = el('span', '', ago(b.createdAt, now));
        a.title = b.createdAt + ' · ' + b.id;
        age.appendChild(a);
        age.appendChild(el('small', '', [b.status === 'complete' ? '' : b.status, bytes(b.sizeBytes), b.kind]
          .filter(Boolean).join(' · ')));
      } else {
        age.appendChild(label('none', 'never'));
      }
      tr.appendChild(age);
      tr.appendChild(cell('lag', lagCell(p, now)));
      tr.appendChild(probeCell(p, probes, now));
      rows.push(tr);
    });
    tbody.replaceChildren.apply(tbody, rows);

    var summary = $('summary');
    var parts = [el('strong', '', (counts.restorable || 0) + ' of ' + status.projects.length + ' restorable'),
      el('strong', '', fresh + ' of ' + status.projects.length + ' fresh')];
    Object.keys(counts).sort(function (a, b) { return SEVERITY.indexOf(a) - SEVERITY.indexOf(b); }).forEach(function (t) {
      parts.push(el('span', 'badge tier-' + t, counts[t] + ' ' + t));
    });
    summary.replaceChildren.apply(summary, parts);
    $('projects').hidden = false;
    $('updated').textContent = 'updated ' + new Date(now).toLocaleTimeString() + ' · every ' + duration(refreshMs / 1000);
  }

  function renderClusters(cl) {
    var table = $('clusters');
    var list = $('findings');
    var tbody = table.querySelector('tbody');
    if (!cl || cl.status !== 200 || !cl.json || !cl.json.clusters) {
      table.hidden = true;
      list.hidden = true;
      return;
    }
    var rows = [];
    var findings = [];
    var seen = {};
    cl.json.clusters.forEach(function (c) {
      var tr = el('tr');
      tr.setAttribute('data-cluster', c.name);
      var restorable = c.tenants.filter(function (t) { return t.tier === 'restorable'; }).length;
      var fresh = c.tenants.filter(function (t) { return t.freshness === 'fresh'; }).length;
      var server = el('td');
      server.appendChild(c.reachable
        ? label('pass', (c.serverVersion || '').split(' ')[0] || 'up')
        : label('fail', 'unreachable', c.error || ''));
      [el('td', 'mono', c.name), el('td', '', c.kind + (c.derived ? ' (derived)' : '')), el('td', '', c.region || '–'), server,
        el('td', '', c.tenants.length), el('td', '', restorable + ' / ' + c.tenants.length),
        el('td', '', fresh + ' / ' + c.tenants.length),
        el('td', '', c.dumps.running + ' running, ' + c.dumps.waiting + ' waiting (max ' + c.maxConcurrentDumps + ')'),
        el('td', c.findings.length ? 'bad' : '', c.findings.length)].forEach(function (td) { tr.appendChild(td); });
      rows.push(tr);
      c.findings.forEach(function (f) {
        var key = f.cluster + '|' + f.code + '|' + (f.project || '') + '|' + (f.schema || f.database || '');
        if (seen[key]) return;
        seen[key] = true;
        var li = el('li');
        li.appendChild(el('code', '', f.code));
        li.appendChild(document.createTextNode(' ' + f.message));
        findings.push(li);
      });
    });
    tbody.replaceChildren.apply(tbody, rows);
    table.hidden = rows.length === 0;
    list.replaceChildren.apply(list, findings);
    list.hidden = findings.length === 0;
  }

  function showLogin(message) {
    stop();
    $('login').hidden = false;
    $('controls').hidden = true;
    $('projects').hidden = true;
    $('summary').replaceChildren();
    banner(message || '', false);
    $('token').focus();
  }
  function banner(message, stale) {
    var b = $('banner');
    b.textContent = message;
    b.className = stale ? 'stale' : '';
    b.hidden = !message;
  }
  function stop() { if (timer) { clearTimeout(timer); timer = null; } }
  function schedule() { stop(); timer = setTimeout(load, refreshMs); }

  function get(path, token) {
    return fetch(apiBase + path, {
      headers: { authorization: 'Bearer ' + token, accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    }).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (json) {
        return { status: res.status, json: json };
      });
    });
  }

  function load() {
    var token = sessionStorage.getItem(KEY);
    if (!token) { showLogin(''); return; }
    if (loading) return;
    loading = true;
    $('login').hidden = true;
    $('controls').hidden = false;
    var failed = function (e) { return { status: 0, json: {}, e: e }; };
    Promise.all([get('/api/ops/v1/status', token), get('/probes', token).catch(failed), get('/api/ops/v1/clusters', token).catch(failed)])
      .then(function (r) {
        var s = r[0], pr = r[1], cl = r[2];
        if (s.status === 401) {
          sessionStorage.removeItem(KEY);
          showLogin('The token was rejected (unknown, or removed by rotation): paste a current one.');
          return;
        }
        if (s.status !== 200) {
          var msg = s.status === 403 ? 'This token lacks the backups:read scope the status needs.'
            : 'The status API answered ' + s.status + (s.json && s.json.error ? ': ' + s.json.error : '');
          banner(msg + ' Retrying every ' + duration(refreshMs / 1000) + '.', true);
          schedule();
          return;
        }
        var probes = { bySlug: {}, pending: {}, error: null };
        if (pr.status === 200 && pr.json && pr.json.results) {
          pr.json.results.forEach(function (x) { probes.bySlug[x.slug] = x; });
          (pr.json.notYetProbed || []).forEach(function (slug) { probes.pending[slug] = true; });
        } else {
          probes.error = pr.status === 403 ? 'token lacks the probe scope'
            : pr.status === 0 ? 'probe unreachable' : 'probe answered ' + pr.status;
        }
        render(s.json, probes);
        renderClusters(cl);
        banner('', false);
        schedule();
      })
      .catch(function (e) {
        banner('Cannot reach the status API (' + (e && e.message ? e.message : e) + '); showing the last data, retrying.', true);
        schedule();
      })
      .then(function () { loading = false; });
  }

  $('login').addEventListener('submit', function (e) {
    e.preventDefault();
    var value = $('token').value.trim().replace(/^Bearer\\s+/i, '');
    $('token').value = '';
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    load();
  });
  $('refresh').addEventListener('click', function () { load(); });
  $('forget').addEventListener('click', function () {
    sessionStorage.removeItem(KEY);
    showLogin('Token forgotten.');
  });
  document.addEventListener('visibilitychange', function () {
    if (document.hidden) stop(); else if (sessionStorage.getItem(KEY)) load();
  });
  load();
})();
`;

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

/** Only the page's own script and style run; the page may talk to its own origin and nothing else. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

function attribute(value: string): string {
  return value.replaceAll('&', '&amp;').replaceAll('"', '&quot;').replaceAll('<', '&lt;');
}

export function renderStatusPage(options: StatusPageOptions = {}): string {
  const refreshMs = options.refreshMs ?? DEFAULT_REFRESH_MS;
  const apiBase = (options.apiBase ?? '').replace(/\/+$/, '');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>flux-ops · backup trust status</title>
<style>${STYLE}</style>
</head>
<body data-refresh-ms="${refreshMs}" data-api-base="${attribute(apiBase)}">
<header>
  <h1>flux-ops <span>backup trust status</span></h1>
  <div id="meta"><span id="updated"></span><span id="controls" hidden><button id="refresh" type="button">Refresh</button>
  <button id="forget" type="button">Forget token</button></span></div>
</header>
<main>
  <div id="banner" role="alert" hidden></div>
  <form id="login" method="post" hidden>
    <label for="token">Bearer token</label>
    <input id="token" type="password" autocomplete="off" spellcheck="false" placeholder="the token itself, as for FLUX_API_TOKEN">
    <button type="submit">Show status</button>
    <p class="hint">Needs the <code>backups:read</code> scope (and <code>probe</code> for the last probe column).
    Kept in this tab only (sessionStorage), sent as an Authorization header, never in a URL.</p>
  </form>
  <section id="summary" aria-live="polite"></section>
  <table id="projects" hidden>
    <thead><tr><th>Project</th><th>Tier</th><th>Freshness</th><th>Artifact validated</th><th>Restore-verified</th>
    <th>Offsite replicated</th><th>Newest backup</th><th>Replication lag</th><th>Last probe</th></tr></thead>
    <tbody></tbody>
  </table>
  <table id="clusters" hidden>
    <caption>Clusters</caption>
    <thead><tr><th>Cluster</th><th>Kind</th><th>Region</th><th>Server</th><th>Tenants</th><th>Restorable</th>
    <th>Fresh</th><th>Dumps</th><th>Findings</th></tr></thead>
    <tbody></tbody>
  </table>
  <ul id="findings" hidden></ul>
</main>
<footer>
  Only <span class="badge tier-restorable">restorable</span> is trustworthy: a real restore of the newest backup passed.
  <span class="label state-unverifiable">⚠ could not verify</span> means verification could not run (no Docker, image
  missing, version unsupported): it is never a pass.
  <span class="label state-pass">✓ fresh</span> means the newest restorable backup is younger than the project's maxAge;
  migrate and an in-place restore need restorable and fresh.
  <noscript>This page needs JavaScript to load the status with your token.</noscript>
</footer>
<script>${SCRIPT}</script>
</body>
</html>
`;
}

/** GET /status (and /status/): the page, with a CSP that allows only its own script, style and origin. */
export function registerStatusRoutes<E extends Env>(app: Hono<E>, options: StatusPageOptions = {}): void {
  const html = renderStatusPage(options);
  const handler: MiddlewareHandler<E> = async (c) => {
    c.header('Content-Security-Policy', CONTENT_SECURITY_POLICY);
    c.header('Cache-Control', 'no-store');
    c.header('Referrer-Policy', 'no-referrer');
    c.header('X-Content-Type-Options', 'nosniff');
    c.header('X-Frame-Options', 'DENY');
    return c.html(html);
  };
  app.get(STATUS_PATH, handler);
  app.get(`${STATUS_PATH}/`, handler);
}
