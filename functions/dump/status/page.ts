// The status page, in one room with the API it reads (api.ts): one static HTML page (no build step) whose
// small script (page-script.js) fetches the trust status (GET /api/ops/v1/status) and the latest probes
// (probe, GET /probes) from the same origin with a Bearer token the operator pastes once, joins them per
// project and renders one table, refreshed on a timer. Mounted on the all-in-one process and on the
// router with registerStatusRoutes(); the API is dump's, which holds the catalog.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Env, Hono, MiddlewareHandler } from 'hono';
import { TRUST_TIERS, type TrustTier } from '../../../shared/catalog/classifier.js';
import { SECOND_MS } from '../../../shared/units.js';

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

// The browser script is a real file beside this one (linted with the rest), read once and inlined as written;
// its hash goes into the Content-Security-Policy so no other inline script can run on the page.
const SCRIPT = readFileSync(new URL('./page-script.js', import.meta.url), 'utf8');

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
<body data-refresh-ms="${refreshMs}" data-api-base="${attribute(apiBase)}" data-token-key="${attribute(TOKEN_STORAGE_KEY)}" data-severity="${attribute(JSON.stringify(TIERS_WORST_FIRST))}">
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
