// npm run bench [-- --quick] [--only dump,verify] [--rounds N] [--out file]: measures every function
// against the raw tool it wraps, in one run on this machine, and writes bench/results.json. Every
// cluster, process, container and temp file it makes is removed at the end, also on Ctrl-C.
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type BenchContext, type BenchOptions, createContext, defaultOptions } from './context.js';
import { benchDump } from './dump.js';
import { benchEvents } from './events.js';
import { benchFleet } from './fleet.js';
import { benchProbe } from './probe.js';
import { benchReplicate } from './replicate.js';
import {
  type BenchResult,
  describeMachine,
  type Group,
  machineLine,
  type Report,
  terminalTable,
  writeReport,
} from './report.js';
import { benchRestore } from './restore.js';
import { benchStatus } from './status.js';
import { dropCaches, ROOT, releaseAll, runnerDescription, useBuiltRunner } from './support.js';
import { benchVerify } from './verify.js';

const MODULES: Array<[Group, (ctx: BenchContext) => Promise<void>]> = [
  ['dump', benchDump],
  ['replicate', benchReplicate],
  ['verify', benchVerify],
  ['restore', benchRestore],
  ['probe', benchProbe],
  ['events', benchEvents],
  ['status', benchStatus],
  ['fleet', benchFleet],
];

const say = (line: string) => process.stdout.write(`${line}\n`);

function parseOptions(argv: string[]): { options: BenchOptions; out: string; tsx: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      rounds: { type: 'string' },
      warmup: { type: 'string' },
      'dump-mb': { type: 'string' },
      tenants: { type: 'string' },
      out: { type: 'string' },
      tsx: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    say(
      [
        'usage: npm run bench -- [--quick] [--only dump,replicate,verify,restore,probe,events,status,fleet] [--tenants N] [--rounds N] [--warmup N]',
        '                        [--dump-mb 500] [--tsx] [--out bench/results.json]',
        '  --quick     small sizes (about 50/100 MB databases, a 128 MiB backup), 3 rounds',
        '  --only restore  mode new vs createdb + pg_restore, and the in-place windows (v2 and v1)',
        '  --dump-mb   the smaller dump database size in MB (the second is double)',
        '  --tenants   tenants of the fleet cycle (default 1000, 100 with --quick); it runs at a tenth first',
        '  --tsx       run the functions from their TypeScript sources through tsx instead of a build',
      ].join('\n'),
    );
    process.exit(0);
  }
  const options = defaultOptions(Boolean(values.quick));
  const positive = (name: string, raw: string | undefined, min: number) => {
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}`);
    return n;
  };
  options.rounds = positive('rounds', values.rounds, 1) ?? options.rounds;
  options.warmup = positive('warmup', values.warmup, 0) ?? options.warmup;
  const dumpMb = positive('dump-mb', values['dump-mb'], 1);
  if (dumpMb) options.dumpMb = [dumpMb, dumpMb * 2];
  options.fleetTenants = positive('tenants', values.tenants, 1) ?? options.fleetTenants;
  if (values.only) {
    const groups = values.only.split(',').map((s) => s.trim());
    const known = new Set(MODULES.map(([g]) => g));
    const unknown = groups.filter((g) => !known.has(g as Group));
    if (unknown.length > 0)
      throw new Error(`--only: unknown ${unknown.join(', ')} (known: ${[...known].join(', ')})`);
    options.only = new Set(groups as Group[]);
  }
  return { options, out: values.out ?? path.join(ROOT, 'bench', 'results.json'), tsx: Boolean(values.tsx) };
}

async function main(): Promise<number> {
  const { options, out, tsx } = parseOptions(process.argv.slice(2));
  const started = performance.now();
  const machine = describeMachine();
  const notes: string[] = [];
  say(`bench: ${options.quick ? 'quick' : 'full'} run on ${machineLine(machine)}`);
  say(`bench: 1-minute load average ${machine.loadAverage.start.toFixed(2)} at start`);
  const results: BenchResult[] = [];
  const ctx = await createContext(options, say, notes, results);
  if (!tsx) {
    say('bench: building the functions (tsconfig.build.json) into the run directory');
    await useBuiltRunner(ctx.root);
  }
  say(`bench: function processes run as ${runnerDescription()}`);
  if (!(await dropCaches())) {
    ctx.note(
      'page caches could not be dropped here: file benchmarks compare function and baseline with caches equally warm',
    );
  }
  const failures: string[] = [];
  for (const [group, run] of MODULES) {
    if (options.only && !options.only.has(group)) continue;
    if (interrupted) break;
    const t = performance.now();
    try {
      await run(ctx);
      say(`bench: ${group} done in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    } catch (error) {
      // Cut short by Ctrl-C: the error is the interruption's echo, not a finding.
      if (interrupted) break;
      const message = `${group}: ${(error as Error).stack ?? String(error)}`;
      failures.push(message);
      say(`bench: ${message}`);
    }
  }
  // An interrupted run reports nothing: its numbers are partial and its last module was cut short.
  if (interrupted) return 130;
  await cleanUp();
  machine.loadAverage.end = (await import('node:os')).loadavg()[0]!;
  const report: Report = {
    version: 1,
    date: new Date().toISOString(),
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    quick: options.quick,
    seconds: Math.round((performance.now() - started) / 100) / 10,
    machine,
    settings: {
      ...options,
      only: options.only ? [...options.only] : undefined,
      functionsRunAs: runnerDescription(),
    },
    notes: [...notes, ...failures.map((f) => `failed: ${f.split('\n')[0]}`)],
    results,
  };
  await writeReport(out, report);
  say('');
  say(terminalTable(results));
  say('');
  for (const note of report.notes) say(`note: ${note}`);
  say(
    `bench: ${report.seconds} s; load average ${machine.loadAverage.end.toFixed(2)} at the end; wrote ${path.relative(process.cwd(), out)}`,
  );
  return failures.length > 0 ? 1 : 0;
}

let interrupted = false;
let cleaning: Promise<void> | undefined;
/** Releases everything once; the signal handler and the end of main() share the same promise. */
function cleanUp(): Promise<void> {
  cleaning ??= releaseAll(say);
  return cleaning;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    // A terminal's Ctrl-C reaches us twice (directly and relayed by tsx): one cleanup is enough.
    if (interrupted) return;
    interrupted = true;
    say(`\nbench: ${signal}: cleaning up (clusters, processes, containers, temp files)`);
    void cleanUp().finally(() => process.exit(130));
  });
}

main().then(
  async (code) => {
    await cleanUp();
    process.exit(interrupted ? 130 : code);
  },
  async (error: unknown) => {
    say(`bench: ${(error as Error).stack ?? String(error)}`);
    await cleanUp();
    process.exit(interrupted ? 130 : 1);
  },
);
