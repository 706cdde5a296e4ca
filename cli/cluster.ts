// flux-ops cluster list | show | preflight: which cluster holds each tenant, what is out of place, and
// whether a cluster is safe for destructive maintenance tonight (GET/POST /api/ops/v1/clusters…).
import { writeFile } from 'node:fs/promises';
// The answers' shapes are dump's own (type-only: nothing of dump runs in the CLI).
import type { ClusterView } from '../functions/dump/clusters.js';
import type { PreflightReport } from '../functions/dump/preflight.js';
import { AppError } from '../shared/errors.js';
import { bool, str } from './args.js';
import { type Command, Failure } from './command.js';
import { humanDuration, printJson, println, table } from './output.js';

/** Exit codes of the preflight: a pass, a problem found, could not tell. */
export const PREFLIGHT_EXIT = { pass: 0, fail: 1, unknown: 2 } as const;

function clusterName(command: string, positionals: string[]): string {
  const name = positionals[0];
  if (!name)
    throw new AppError('bad_request', `${command}: name the cluster (flux-ops cluster list shows them)`);
  return name;
}

const where = (t: { schema?: string; database?: string }) =>
  t.schema ? `schema ${t.schema}` : t.database ? `database ${t.database}` : '';

const age = (seconds: number | null): string => (seconds === null ? '-' : humanDuration(seconds * 1000));

function status(c: ClusterView): string {
  return c.reachable ? `up (PostgreSQL ${c.serverVersion ?? '?'})` : `unreachable: ${c.error ?? 'no answer'}`;
}

const list: Command = {
  name: 'cluster list',
  summary: 'the clusters (shared, dedicated), their tenants’ trust and placement findings',
  help: `Usage: flux-ops cluster list

One line per cluster the registry knows (a v1 project that names no cluster is its own,
dedicated:<slug>): region, server version or why it could not be reached, tenants, how many are
restorable, the dump queue, and open placement findings. Needs a token with backups:read.

Exit codes: 0 listed (whatever the findings); others from the errors table.`,
  options: {},
  async run(ctx) {
    const { body } = await ctx.client().json<{ clusters: ClusterView[] }>('GET', '/api/ops/v1/clusters', {
      signal: ctx.signal,
    });
    if (ctx.json) {
      printJson(ctx.io, body);
      return 0;
    }
    println(
      ctx.io.out,
      table(body.clusters, [
        { header: 'CLUSTER', value: (c) => c.name },
        { header: 'KIND', value: (c) => c.kind },
        { header: 'REGION', value: (c) => c.region ?? '-' },
        {
          header: 'SERVER',
          value: (c) => (c.reachable ? (c.serverVersion?.split(' ')[0] ?? '?') : 'unreachable'),
        },
        { header: 'TENANTS', value: (c) => String(c.tenants.length) },
        {
          header: 'RESTORABLE',
          value: (c) => `${c.tenants.filter((t) => t.tier === 'restorable').length}/${c.tenants.length}`,
        },
        {
          header: 'FRESH',
          value: (c) => `${c.tenants.filter((t) => t.freshness === 'fresh').length}/${c.tenants.length}`,
        },
        {
          header: 'DUMPS',
          value: (c) =>
            `${c.dumps.running} running, ${c.dumps.waiting} waiting (max ${c.maxConcurrentDumps})`,
        },
        { header: 'FINDINGS', value: (c) => String(c.findings.length) },
      ]),
    );
    const findings = body.clusters.flatMap((c) => c.findings);
    const seen = new Set<string>();
    for (const f of findings) {
      const key = `${f.cluster}|${f.code}|${f.project}|${f.schema}`;
      if (seen.has(key)) continue;
      seen.add(key);
      println(ctx.io.out, `  ${f.code}: ${f.message}`);
    }
    for (const c of body.clusters.filter((c) => !c.reachable)) {
      println(ctx.io.err, `flux-ops: warning: cluster ${c.name} is unreachable: ${c.error ?? 'no answer'}`);
    }
    return 0;
  },
};

const show: Command = {
  name: 'cluster show',
  summary: 'one cluster: server, every tenant with tier and newest restorable backup, findings',
  help: `Usage: flux-ops cluster show <name>

The cluster's server version (or why it could not be reached), region and labels, the dump queue and
concurrency, each tenant with its schema or database, trust tier, newest restorable backup and its
offsite key, and the placement findings. Needs a token with backups:read.`,
  options: {},
  positionals: 1,
  async run(ctx) {
    const name = clusterName(this.name, ctx.positionals);
    const { body } = await ctx
      .client()
      .json<{ cluster: ClusterView }>('GET', `/api/ops/v1/clusters/${encodeURIComponent(name)}`, {
        signal: ctx.signal,
      });
    const c = body.cluster;
    if (ctx.json) {
      printJson(ctx.io, body);
      return 0;
    }
    const labels = Object.entries(c.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(', ');
    println(
      ctx.io.out,
      `cluster ${c.name} (${c.kind}${c.derived ? ', derived from the project' : ''}): ${status(c)}`,
    );
    println(ctx.io.out, `region: ${c.region ?? '-'}${labels ? `; labels: ${labels}` : ''}`);
    println(
      ctx.io.out,
      `dumps: ${c.dumps.running} running, ${c.dumps.waiting} waiting (maxConcurrentDumps ${c.maxConcurrentDumps})`,
    );
    if (c.tenants.length > 0) {
      println(
        ctx.io.out,
        table(c.tenants, [
          { header: 'PROJECT', value: (t) => t.slug },
          { header: 'HASH', value: (t) => t.hash },
          { header: 'WHERE', value: (t) => where(t) },
          { header: 'TIER', value: (t) => t.tier },
          { header: 'FRESHNESS', value: (t) => t.freshness },
          { header: 'NEWEST RESTORABLE', value: (t) => t.newestRestorableBackupId ?? '-' },
          { header: 'OFFSITE KEY', value: (t) => t.offsiteKey ?? '-' },
        ]),
      );
    } else println(ctx.io.out, 'no tenants');
    for (const f of c.findings) println(ctx.io.out, `finding ${f.code}: ${f.message}`);
    return 0;
  },
};

/** The report as the Markdown an operator attaches to the maintenance ticket. */
export function preflightMarkdown(r: PreflightReport): string {
  const verdict = { pass: 'PASS', fail: 'FAIL', unknown: 'COULD NOT TELL' }[r.verdict];
  const cell = (s: string) => s.replaceAll('|', '\\|').replaceAll('\n', ' ');
  const lines = [
    `# Maintenance preflight: cluster ${r.cluster}: ${verdict}`,
    '',
    `- Time: ${r.at}`,
    `- Cluster: ${r.cluster} (${r.kind}${r.region ? `, region ${r.region}` : ''}), PostgreSQL ${r.serverVersion ?? 'unknown (unreachable)'}`,
    `- Fresh means: newest restorable backup younger than ${r.maxAgeSeconds === null ? "each project's maxAge" : age(r.maxAgeSeconds)}`,
    `- Fresh backups taken first: ${r.backupNow ? 'yes' : 'no'}`,
    '',
    '| Project | Hash | Schema or database | Tier | Freshness | Newest restorable backup | Offsite key | Age | Verdict |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.tenants.map(
      (t) =>
        `| ${cell(t.slug)} | ${t.hash} | ${cell(where(t))} | ${t.tier} | ${t.freshness} | ${t.newestRestorableBackupId ?? '-'} | ${cell(t.offsiteKey ?? '-')} | ${age(t.ageSeconds)} | ${t.verdict} |`,
    ),
    '',
  ];
  if (r.problems.length > 0) {
    lines.push('## Problems', '', ...r.problems.map((p) => `- ${cell(p)}`), '');
  } else
    lines.push(
      'No problems: every tenant is restorable, fresh and replicated offsite, and nothing is out of place.',
      '',
    );
  return lines.join('\n');
}

const preflight: Command = {
  name: 'cluster preflight',
  summary: 'is the cluster safe for destructive maintenance: every tenant restorable, fresh, offsite',
  help: `Usage: flux-ops cluster preflight <name> [--backup-now] [--max-age 26h] [-o report.md]

Passes only when every tenant on the cluster is restorable, fresh (its newest restorable backup younger
than --max-age, default 26h) and replicated offsite, and no placement finding is open (a tenant missing,
its schema also on another cluster, an orphan schema). An unreachable cluster, or another cluster that
could not be asked, makes it "could not tell": never a pass.

--backup-now first takes a fresh backup of every tenant on the cluster (through the dump queue, so the
cluster's maxConcurrentDumps holds) and waits for replicate and verify to judge them (needs
backups:write); otherwise backups:read.

-o writes the report for the maintenance ticket: Markdown, or JSON when the name ends in .json.

Exit codes: 0 pass; 1 a problem was found; 2 could not tell; others from the errors table.

Flags:
  --backup-now          take a fresh backup of every tenant first
  --max-age <duration>  what counts as fresh for every tenant: 26h, 90m, 7d (default: each project's maxAge)
  --wait <seconds>      how long --backup-now waits for replicate and verify (default 3600)
  -o, --output <file>   write the report (Markdown, or JSON for *.json)`,
  options: {
    'backup-now': { type: 'boolean' },
    'max-age': { type: 'string' },
    wait: { type: 'string' },
    output: { type: 'string', short: 'o' },
  },
  positionals: 1,
  async run(ctx) {
    const name = clusterName(this.name, ctx.positionals);
    const maxAge = str(ctx.values, 'max-age');
    const wait = str(ctx.values, 'wait');
    if (wait !== undefined && !/^\d{1,5}$/.test(wait)) {
      throw new AppError('bad_request', `${this.name}: --wait takes whole seconds, e.g. --wait 1800`);
    }
    const backupNow = bool(ctx.values, 'backup-now');
    if (backupNow) ctx.onInterrupt('the backups already started continue on the server');
    const { body } = await ctx
      .client()
      .json<{ report: PreflightReport }>(
        'POST',
        `/api/ops/v1/clusters/${encodeURIComponent(name)}/preflight`,
        {
          body: {
            ...(backupNow ? { backupNow: true } : {}),
            ...(maxAge !== undefined ? { maxAge } : {}),
            ...(wait !== undefined ? { waitSeconds: Number(wait) } : {}),
          },
          long: true,
          signal: ctx.signal,
        },
      );
    const r = body.report;
    const output = str(ctx.values, 'output');
    if (output) {
      await writeFile(
        output,
        output.endsWith('.json') ? `${JSON.stringify(r, null, 2)}\n` : preflightMarkdown(r),
      );
    }
    if (ctx.json) printJson(ctx.io, body);
    else {
      const verdict = { pass: 'passed', fail: 'FAILED', unknown: 'could not tell' }[r.verdict];
      println(ctx.io.out, `preflight of cluster ${r.cluster}: ${verdict} (${r.tenants.length} tenant(s))`);
      println(
        ctx.io.out,
        table(r.tenants, [
          { header: 'PROJECT', value: (t) => t.slug },
          { header: 'WHERE', value: (t) => where(t) },
          { header: 'TIER', value: (t) => t.tier },
          { header: 'FRESHNESS', value: (t) => t.freshness },
          { header: 'NEWEST RESTORABLE', value: (t) => t.newestRestorableBackupId ?? '-' },
          { header: 'AGE', value: (t) => age(t.ageSeconds) },
          { header: 'OFFSITE', value: (t) => (t.offsiteReplicated ? 'yes' : 'no') },
          { header: 'VERDICT', value: (t) => t.verdict },
        ]),
      );
      for (const p of r.problems) println(ctx.io.out, `  - ${p}`);
      if (output) println(ctx.io.out, `report written to ${output}`);
    }
    if (r.verdict === 'pass') return PREFLIGHT_EXIT.pass;
    throw new Failure(
      r.verdict === 'fail'
        ? `cluster ${r.cluster} is not ready for maintenance: ${r.problems.length} problem(s)`
        : `could not tell whether cluster ${r.cluster} is ready for maintenance`,
      PREFLIGHT_EXIT[r.verdict],
    );
  },
};

export const CLUSTER_COMMANDS: readonly Command[] = [list, show, preflight];
