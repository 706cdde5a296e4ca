// flux-ops probe run|status: synthetic probes of the tenant APIs through the gateway.
import { EXIT } from '../shared/errors.js';
import { projectRef } from './args.js';
import { type Command, Failure } from './command.js';
import { humanAge, printJson, println, table } from './output.js';

interface TenantProbe {
  slug: string;
  apiHost: string;
  success: boolean;
  state?: string;
  status: number | null;
  reason: string | null;
  hint: string | null;
  error: { code: string; message: string } | null;
  durationSeconds: number;
  consecutiveFailures?: number;
  startedAt: string;
}

function probeTable(results: readonly TenantProbe[], now = new Date()): string {
  return table(results, [
    { header: 'PROJECT', value: (r) => r.slug },
    { header: 'RESULT', value: (r) => (r.success ? 'ok' : 'FAIL') },
    { header: 'STATE', value: (r) => r.state ?? '-' },
    { header: 'HTTP', value: (r) => (r.status === null ? '-' : String(r.status)), right: true },
    { header: 'TIME', value: (r) => `${Math.round(r.durationSeconds * 1000)} ms`, right: true },
    { header: 'WHEN', value: (r) => humanAge(r.startedAt, now) },
    {
      header: 'REASON',
      value: (r) =>
        r.success ? '' : [r.reason, r.error?.message ?? r.hint].filter(Boolean).join(': ').slice(0, 200),
    },
  ]);
}

const run: Command = {
  name: 'probe run',
  summary: 'probe every tenant API (or one) now',
  help: `Usage: flux-ops probe run [-p <slug>]

Probes the tenant APIs through the gateway now (POST /probes/run) and prints each result.

Exit codes: 0 every probe succeeded; 1 at least one failed; others from the errors table.

Flags:
  -p, --project <slug>  only this project`,
  options: { project: { type: 'string', short: 'p' } },
  async run(ctx) {
    const ref = projectRef(this.name, ctx.values, false);
    const { body } = await ctx.client().json<{ results: TenantProbe[] }>('POST', '/probes/run', {
      ...(ref?.slug ? { body: { slug: ref.slug } } : {}),
      long: true,
      signal: ctx.signal,
    });
    const results = body.results ?? [];
    if (ctx.json) printJson(ctx.io, body);
    else if (results.length === 0) println(ctx.io.out, 'no tenant has an apiHost to probe');
    else println(ctx.io.out, probeTable(results));
    const failed = results.filter((r) => !r.success);
    if (failed.length > 0) {
      // Exit 1, not 69: the probes ran; what failed is the tenants.
      throw new Failure(
        `${failed.length} of ${results.length} probe(s) failed: ${failed.map((f) => f.slug).join(', ')}`,
        EXIT.failed,
      );
    }
    return 0;
  },
};

const status: Command = {
  name: 'probe status',
  summary: 'the latest probe result and state of every tenant',
  help: `Usage: flux-ops probe status

The latest result and up/down state of each tenant (GET /probes), and the tenants not probed yet.`,
  options: {},
  async run(ctx) {
    const { body } = await ctx.client().json<{
      results: TenantProbe[];
      notYetProbed?: string[];
      cycle?: { running?: boolean; lastStartedAt?: string | null; lastSeconds?: number | null };
    }>('GET', '/probes');
    if (ctx.json) {
      printJson(ctx.io, body);
      return 0;
    }
    const results = body.results ?? [];
    if (results.length > 0) println(ctx.io.out, probeTable(results));
    if (body.notYetProbed?.length) println(ctx.io.out, `not probed yet: ${body.notYetProbed.join(', ')}`);
    if (results.length === 0 && !body.notYetProbed?.length) {
      println(ctx.io.out, 'no tenant has an apiHost to probe');
    }
    if (body.cycle?.lastStartedAt) {
      println(
        ctx.io.out,
        `last cycle ${humanAge(body.cycle.lastStartedAt)}${body.cycle.running ? ' (running now)' : ''}`,
      );
    }
    return 0;
  },
};

export const PROBE_COMMANDS: readonly Command[] = [run, status];
