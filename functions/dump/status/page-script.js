// The status page's browser script: plain ES2020, shipped as written (no bundler). Its hash goes into the
// Content-Security-Policy, so no other inline script can run on the page.
(() => {
  // biome-ignore lint/suspicious/noRedundantUseStrict: a classic inline script, not a module
  'use strict';
  var body = document.body;
  var KEY = body.getAttribute('data-token-key');
  var refreshMs = Number(body.getAttribute('data-refresh-ms')) || 30000;
  var apiBase = body.getAttribute('data-api-base') || '';
  var $ = (id) => document.getElementById(id);
  var timer = null;
  // Worst first, so the summary reads as a to-do list.
  var SEVERITY = JSON.parse(body.getAttribute('data-severity'));
  var loading = false;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function ago(iso, now) {
    var t = Date.parse(iso);
    if (!Number.isFinite(t)) return '';
    return duration(Math.max(0, (now - t) / 1000)) + ' ago';
  }
  function duration(s) {
    if (s < 1) return '<1 s';
    if (s < 90) return Math.round(s) + ' s';
    if (s < 90 * 60) return Math.round(s / 60) + ' min';
    if (s < 36 * 3600) return (s / 3600).toFixed(1).replace(/\.0$/, '') + ' h';
    return (s / 86400).toFixed(1).replace(/\.0$/, '') + ' d';
  }
  function bytes(n) {
    if (typeof n !== 'number') return '';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
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
    if (p.labels.artifactValidated)
      return label('pass', '✓ validated', 'size and SHA-256 match the manifest');
    var st = b.artifactValidationOutcome || b.artifactValidationStatus;
    if (st === 'invalid' || st === 'artifact_invalid')
      return label('fail', '✗ mismatch', b.error || 'the file no longer matches its manifest');
    if (st === 'missing') return label('fail', '✗ missing', 'the local dump file is missing');
    return label(
      'pending',
      '… pending',
      b.status === 'running' ? 'the dump is still being written' : 'not validated yet',
    );
  }
  function restoreLabel(p) {
    var b = p.backup;
    if (!b) return label('none', '— no backup');
    if (p.labels.restoreVerified) {
      return label(
        'pass',
        '✓ restore-verified',
        b.restoreVerificationAt ? 'verified ' + b.restoreVerificationAt : '',
      );
    }
    var outcome = b.restoreVerificationOutcome || b.restoreVerificationStatus;
    var why = b.restoreVerificationError || '';
    if (outcome === 'unverifiable') return label('unverifiable', '⚠ could not verify — not a pass', why);
    if (outcome === 'restore_failed') return label('fail', '✗ restore failed', why);
    if (outcome === 'restore_verified')
      return label('fail', '✗ artifact changed since', 'verified, but the file no longer matches');
    if (outcome === 'skipped') return label('pending', '– skipped', why);
    return label('pending', '… pending', 'restore verification has not run yet');
  }
  // Each copy carries its own verification: which copies are proven, and any whose verification did not pass.
  function copiesText(p) {
    var b = p.backup;
    var copies = b?.copyVerifications;
    if (!copies) return '';
    var parts = [];
    ['local', 'offsite'].forEach((name) => {
      var v = copies[name];
      if (!v) return;
      var word = v.proven
        ? '✓ proven'
        : v.status === 'restore_verified'
          ? '✗ copy changed since'
          : v.status === 'restore_failed'
            ? '✗ failed'
            : v.status === 'unverifiable'
              ? '⚠ could not verify'
              : v.status;
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
      const lag =
        typeof b.offsiteLagSeconds === 'number'
          ? b.offsiteLagSeconds
          : b.offsiteReplicatedAt && b.completedAt
            ? (Date.parse(b.offsiteReplicatedAt) - Date.parse(b.completedAt)) / 1000
            : null;
      return label(
        'pass',
        lag === null || !Number.isFinite(lag)
          ? 'in sync'
          : 'in sync (copied in ' + duration(Math.max(0, lag)) + ')',
      );
    }
    if (b.offsiteStatus === 'failed') {
      return label(
        'fail',
        'behind: ' +
          (b.completedAt ? duration((now - Date.parse(b.completedAt)) / 1000) : 'newest backup') +
          ', copy failed',
      );
    }
    if (!b.completedAt) return label('none', '—', 'the newest backup is not complete');
    return label(
      'pending',
      'behind ' + duration(Math.max(0, (now - Date.parse(b.completedAt)) / 1000)),
      'the newest backup is not proven offsite yet',
    );
  }
  function probeCell(p, probes, now) {
    var td = el('td');
    td.setAttribute('data-col', 'probe');
    if (probes.error) {
      td.appendChild(label('none', probes.error));
      return td;
    }
    var r = probes.bySlug[p.slug];
    if (!r) {
      td.appendChild(label('none', probes.pending[p.slug] ? 'not probed yet' : 'no apiHost'));
      return td;
    }
    var when = ago(r.startedAt, now);
    var ms = typeof r.durationSeconds === 'number' ? Math.round(r.durationSeconds * 1000) + ' ms' : '';
    if (r.success) {
      td.appendChild(
        label('pass', '✓ ' + (r.status === null ? 'ok' : r.status) + (ms ? ' · ' + ms : ''), r.target),
      );
    } else {
      const what = r.reason === 'status' ? 'HTTP ' + r.status : r.reason || 'failed';
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
  function freshnessCell(p, _now) {
    var f = p.freshness;
    var td = el('td');
    td.setAttribute('data-col', 'freshness');
    if (!f) {
      td.appendChild(label('none', '-'));
      return td;
    }
    var state = f.freshness === 'fresh' ? 'pass' : f.freshness === 'stale' ? 'fail' : 'none';
    var text = f.freshness === 'fresh' ? '✓ fresh' : f.freshness === 'stale' ? '✗ stale' : '— never verified';
    td.appendChild(label(state, text, f.message));
    td.setAttribute('data-freshness', f.freshness);
    var age = f.ageSeconds === null ? 'no restorable backup' : duration(f.ageSeconds) + ' old';
    td.appendChild(el('small', '', age + ' · maxAge ' + duration(f.maxAgeSeconds)));
    if (f.freshness !== 'fresh' && f.next) {
      const n = el('small');
      n.appendChild(el('code', '', f.next));
      td.appendChild(n);
    }
    return td;
  }

  function render(status, probes) {
    var now = Date.now();
    var fresh = 0;
    var tbody = document.querySelector('#projects tbody');
    var rows = [];
    var counts = {};
    status.projects.forEach((p) => {
      counts[p.tier] = (counts[p.tier] || 0) + 1;
      var tr = el('tr');
      tr.setAttribute('data-project', p.slug);
      tr.setAttribute('data-tier', p.tier);

      var name = el('td');
      name.setAttribute('data-col', 'project');
      name.appendChild(el('strong', '', p.slug));
      name.appendChild(
        el('small', '', p.hash + ' · ' + (p.engine === 'v2_shared' ? 'v2 shared' : 'v1 dedicated')),
      );
      tr.appendChild(name);

      var tier = el('td');
      tier.setAttribute('data-col', 'tier');
      var badge = el('span', 'badge tier-' + p.tier, p.tier);
      badge.title = p.trustworthy ? 'trustworthy: restore-verified' : 'not trustworthy yet';
      tier.appendChild(badge);
      tier.appendChild(el('small', '', p.message));
      if (p.next) {
        const n = el('small');
        n.appendChild(el('code', '', p.next));
        tier.appendChild(n);
      }
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
        const a = el('span', '', ago(b.createdAt, now));
        a.title = b.createdAt + ' · ' + b.id;
        age.appendChild(a);
        age.appendChild(
          el(
            'small',
            '',
            [b.status === 'complete' ? '' : b.status, bytes(b.sizeBytes), b.kind].filter(Boolean).join(' · '),
          ),
        );
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
    var parts = [
      el('strong', '', (counts.restorable || 0) + ' of ' + status.projects.length + ' restorable'),
      el('strong', '', fresh + ' of ' + status.projects.length + ' fresh'),
    ];
    Object.keys(counts)
      .sort((a, b) => SEVERITY.indexOf(a) - SEVERITY.indexOf(b))
      .forEach((t) => {
        parts.push(el('span', 'badge tier-' + t, counts[t] + ' ' + t));
      });
    summary.replaceChildren.apply(summary, parts);
    $('projects').hidden = false;
    $('updated').textContent =
      'updated ' + new Date(now).toLocaleTimeString() + ' · every ' + duration(refreshMs / 1000);
  }

  function renderClusters(cl) {
    var table = $('clusters');
    var list = $('findings');
    var tbody = table.querySelector('tbody');
    if (cl?.status !== 200 || !cl.json || !cl.json.clusters) {
      table.hidden = true;
      list.hidden = true;
      return;
    }
    var rows = [];
    var findings = [];
    var seen = {};
    cl.json.clusters.forEach((c) => {
      var tr = el('tr');
      tr.setAttribute('data-cluster', c.name);
      var restorable = c.tenants.filter((t) => t.tier === 'restorable').length;
      var fresh = c.tenants.filter((t) => t.freshness === 'fresh').length;
      var server = el('td');
      server.appendChild(
        c.reachable
          ? label('pass', (c.serverVersion || '').split(' ')[0] || 'up')
          : label('fail', 'unreachable', c.error || ''),
      );
      [
        el('td', 'mono', c.name),
        el('td', '', c.kind + (c.derived ? ' (derived)' : '')),
        el('td', '', c.region || '–'),
        server,
        el('td', '', c.tenants.length),
        el('td', '', restorable + ' / ' + c.tenants.length),
        el('td', '', fresh + ' / ' + c.tenants.length),
        el(
          'td',
          '',
          c.dumps.running + ' running, ' + c.dumps.waiting + ' waiting (max ' + c.maxConcurrentDumps + ')',
        ),
        el('td', c.findings.length ? 'bad' : '', c.findings.length),
      ].forEach((td) => {
        tr.appendChild(td);
      });
      rows.push(tr);
      c.findings.forEach((f) => {
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
  function stop() {
    if (timer) {
      clearTimeout(timer);
      timer = null;
    }
  }
  function schedule() {
    stop();
    timer = setTimeout(load, refreshMs);
  }

  function get(path, token) {
    return fetch(apiBase + path, {
      headers: { authorization: 'Bearer ' + token, accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    }).then((res) =>
      res
        .json()
        .catch(() => ({}))
        .then((json) => ({ status: res.status, json: json })),
    );
  }

  function load() {
    var token = sessionStorage.getItem(KEY);
    if (!token) {
      showLogin('');
      return;
    }
    if (loading) return;
    loading = true;
    $('login').hidden = true;
    $('controls').hidden = false;
    var failed = (e) => ({ status: 0, json: {}, e: e });
    Promise.all([
      get('/api/ops/v1/status', token),
      get('/probes', token).catch(failed),
      get('/api/ops/v1/clusters', token).catch(failed),
    ])
      .then((r) => {
        var s = r[0],
          pr = r[1],
          cl = r[2];
        if (s.status === 401) {
          sessionStorage.removeItem(KEY);
          showLogin('The token was rejected (unknown, or removed by rotation): paste a current one.');
          return;
        }
        if (s.status !== 200) {
          const msg =
            s.status === 403
              ? 'This token lacks the backups:read scope the status needs.'
              : 'The status API answered ' + s.status + (s.json?.error ? ': ' + s.json.error : '');
          banner(msg + ' Retrying every ' + duration(refreshMs / 1000) + '.', true);
          schedule();
          return;
        }
        var probes = { bySlug: {}, pending: {}, error: null };
        if (pr.status === 200 && pr.json && pr.json.results) {
          pr.json.results.forEach((x) => {
            probes.bySlug[x.slug] = x;
          });
          (pr.json.notYetProbed || []).forEach((slug) => {
            probes.pending[slug] = true;
          });
        } else {
          probes.error =
            pr.status === 403
              ? 'token lacks the probe scope'
              : pr.status === 0
                ? 'probe unreachable'
                : 'probe answered ' + pr.status;
        }
        render(s.json, probes);
        renderClusters(cl);
        banner('', false);
        schedule();
      })
      .catch((e) => {
        banner(
          'Cannot reach the status API (' +
            (e?.message ? e.message : e) +
            '); showing the last data, retrying.',
          true,
        );
        schedule();
      })
      .then(() => {
        loading = false;
      });
  }

  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    var value = $('token')
      .value.trim()
      .replace(/^Bearer\s+/i, '');
    $('token').value = '';
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    load();
  });
  $('refresh').addEventListener('click', () => {
    load();
  });
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    showLogin('Token forgotten.');
  });
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) stop();
    else if (sessionStorage.getItem(KEY)) load();
  });
  load();
})();
