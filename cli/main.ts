// The flux-ops CLI entry: finds the command, parses its flags, runs it against the front door and turns
// every failure into `flux-ops: <message>` on stderr and the exit code of the errors table.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { fileURLToPath } from 'node:url';
import { AppError, EXIT, isAppError } from '../shared/errors.js';
import { COMMON_HELP, parse, readTokenFile, str } from './args.js';
import { BACKUP_COMMANDS } from './backup.js';
import { CATALOG_COMMANDS } from './catalog.js';
import { CLUSTER_COMMANDS } from './cluster.js';
import { type Command, type Context, Failure } from './command.js';
import { DOCTOR_COMMANDS } from './doctor.js';
import { EVENTS_COMMANDS } from './events.js';
import { type ApiClient, ApiError, createClient, resolveEndpoint } from './http.js';
import { MIGRATE_COMMANDS } from './migrate.js';
import { flushed, type Io, println } from './output.js';
import { PROBE_COMMANDS } from './probe.js';
import { RESTORE_COMMANDS } from './restore.js';

export const COMMANDS: readonly Command[] = [
  ...BACKUP_COMMANDS,
  ...RESTORE_COMMANDS,
  ...CATALOG_COMMANDS,
  ...CLUSTER_COMMANDS,
  ...MIGRATE_COMMANDS,
  ...PROBE_COMMANDS,
  ...EVENTS_COMMANDS,
  ...DOCTOR_COMMANDS,
];

/** 128 + SIGINT, as shells report an interrupted command. */
const EXIT_INTERRUPTED = 130;

function readVersion(): string {
  // cli/main.ts in the repo, dist/cli/main.js when built: walk up to the package's own package.json.
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'flux-ops' && pkg.version) return pkg.version;
    } catch {
      // not here
    }
    dir = path.dirname(dir);
  }
  return 'unknown';
}

function usage(version: string): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `flux-ops ${version}: operate self-hosted Flux backups, migrations and tenant probes

Usage: flux-ops <command> [flags]

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}

Environment:
  FLUX_API_BASE   the front door: the all-in-one process or the router (default http://127.0.0.1:8080)
  FLUX_API_TOKEN  the Bearer token (kept out of argv; --token-file reads it from a file instead)

Every command takes --json and --help. Exit codes: 0 ok; verify: 1 failed, 2 could not verify; the rest
follow the errors table (64 usage, 66 not found, 69 unavailable, 75 try again, 77 no permission…).
flux-ops --version prints the version.`;
}

function groupUsage(group: string, version: string): string {
  const members = COMMANDS.filter((c) => c.name.startsWith(`${group} `));
  const width = Math.max(...members.map((c) => c.name.length));
  return `Usage: flux-ops ${group} <command> [flags]   (flux-ops ${version})

${members.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}

flux-ops ${group} <command> --help shows its flags.`;
}

function findCommand(argv: readonly string[]): { command?: Command; rest: string[]; group?: string } {
  const [first, second] = argv;
  if (first && second) {
    const two = COMMANDS.find((c) => c.name === `${first} ${second}`);
    if (two) return { command: two, rest: argv.slice(2) };
  }
  const one = COMMANDS.find((c) => c.name === first);
  if (one) return { command: one, rest: argv.slice(1) };
  if (first && COMMANDS.some((c) => c.name.startsWith(`${first} `)))
    return { group: first, rest: argv.slice(1) };
  return { rest: argv.slice(1) };
}

export interface RunOptions {
  argv: readonly string[];
  env: NodeJS.ProcessEnv;
  io: Io;
  signal: AbortSignal;
}

/** Runs one CLI invocation and returns its exit code; never throws. */
export async function runCli(options: RunOptions): Promise<number> {
  const { argv, env, io } = options;
  const version = readVersion();
  let json = argv.includes('--json');
  let client: ApiClient | undefined;
  let interruptHint: string | undefined;
  try {
    const [first] = argv;
    if (first === '--version' || first === '-V' || first === 'version') {
      println(io.out, json ? JSON.stringify({ version }) : version);
      return EXIT.ok;
    }
    if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
      const rest = argv.slice(1);
      const found = first === 'help' && rest.length > 0 ? findCommand(rest) : undefined;
      if (found?.command) println(io.out, `${found.command.help}\n\n${COMMON_HELP}`);
      else if (found?.group) println(io.out, groupUsage(found.group, version));
      else println(first === undefined ? io.err : io.out, usage(version));
      return first === undefined ? EXIT.usage : EXIT.ok;
    }
    const { command, rest, group } = findCommand(argv);
    if (!command) {
      if (group) {
        const asked = rest.includes('--help') || rest.includes('-h');
        println(asked ? io.out : io.err, groupUsage(group, version));
        if (asked) return EXIT.ok;
        throw new AppError(
          'bad_request',
          rest[0] && !rest[0].startsWith('-')
            ? `unknown command "${group} ${rest[0]}"`
            : `${group} needs a command`,
        );
      }
      throw new AppError('bad_request', `unknown command "${first}" (flux-ops --help lists them)`);
    }
    const parsed = parse(command.name, rest, command.options, command.positionals ?? 0);
    json = parsed.values.json === true;
    if (parsed.values.help === true) {
      println(io.out, `${command.help}\n\n${COMMON_HELP}`);
      return EXIT.ok;
    }
    const ctx: Context = {
      env,
      io,
      values: parsed.values,
      positionals: parsed.positionals,
      json,
      version,
      signal: options.signal,
      client() {
        if (!client) {
          const token = readTokenFile(str(parsed.values, 'token-file'), () => readFileSync(0, 'utf8'));
          const endpoint = resolveEndpoint({ apiBase: str(parsed.values, 'api-base'), token }, env);
          client = createClient(endpoint, `flux-ops-cli/${version}`);
        }
        return client;
      },
      async prompt(question) {
        const rl = createInterface({ input: process.stdin, output: io.err });
        try {
          return await rl.question(question, { signal: options.signal });
        } catch {
          return undefined;
        } finally {
          rl.close();
        }
      },
      onInterrupt(hint) {
        interruptHint = hint;
      },
    };
    return await command.run(ctx);
  } catch (error) {
    if (
      options.signal.aborted &&
      !isAppError(error) &&
      !(error instanceof ApiError) &&
      !(error instanceof Failure)
    ) {
      println(io.err, `\nflux-ops: interrupted${interruptHint ? `; ${interruptHint}` : ''}`);
      return EXIT_INTERRUPTED;
    }
    return reportError(error, io, json, env);
  } finally {
    await client?.close();
  }
}

function reportError(error: unknown, io: Io, json: boolean, env: NodeJS.ProcessEnv): number {
  if (error instanceof ApiError) {
    println(io.err, `flux-ops: ${error.message}`);
    if (json) println(io.out, JSON.stringify(error.body, null, 2));
    return error.exitCode;
  }
  if (isAppError(error)) {
    println(io.err, `flux-ops: ${error.message}`);
    if (json) println(io.out, JSON.stringify(error.toJSON(), null, 2));
    return error.exitCode;
  }
  if (error instanceof Failure) {
    println(io.err, `flux-ops: ${error.message}`);
    return error.exitCode;
  }
  println(io.err, `flux-ops: internal error: ${(error as Error)?.message ?? String(error)}`);
  if (env.FLUX_CLI_DEBUG) println(io.err, (error as Error)?.stack ?? '');
  if (json)
    println(io.out, JSON.stringify({ error: String((error as Error)?.message ?? error), code: 'internal' }));
  return EXIT.software;
}

const controller = new AbortController();
let interrupts = 0;
const onSignal = () => {
  interrupts++;
  // The second interrupt does not wait for the command to wind down.
  if (interrupts > 1) process.exit(EXIT_INTERRUPTED);
  controller.abort(new Error('interrupted'));
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

const code = await runCli({
  argv: process.argv.slice(2),
  env: process.env,
  io: {
    out: process.stdout,
    err: process.stderr,
    errIsTTY: process.stderr.isTTY === true,
    inIsTTY: process.stdin.isTTY === true,
  },
  signal: controller.signal,
});
await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
// Explicit exit: in-process preflights (doctor) may leave handles that would keep the process alive.
process.exit(code);
