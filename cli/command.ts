// What a command is (flags, help, run) and the context it runs in: its parsed flags, the output streams,
// a lazily built API client and the interrupt signal.
import type { Options, Values } from './args.js';
import type { ApiClient } from './http.js';
import type { Io } from './output.js';

export interface Context {
  env: NodeJS.ProcessEnv;
  io: Io;
  values: Values;
  positionals: string[];
  /** --json: results as JSON on stdout, no progress. */
  json: boolean;
  version: string;
  /** Aborted on SIGINT/SIGTERM: long waits stop and the command says what continues on the server. */
  signal: AbortSignal;
  client(): ApiClient;
  /** Reads one line from stdin (confirmations); undefined at end of input. */
  prompt(question: string): Promise<string | undefined>;
  /** What to tell the operator if they interrupt now (e.g. "the backup continues on the server"). */
  onInterrupt(hint: string | undefined): void;
}

export interface Command {
  /** "backup create", "doctor". */
  name: string;
  summary: string;
  /** Usage line(s) and the command's own flags; the common flags are appended. */
  help: string;
  options: Options;
  positionals?: number;
  run(ctx: Context): Promise<number>;
}

/** Sleeps `ms`, or rejects with the signal's reason when interrupted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** How often the CLI polls running work. */
export const POLL_MS = 500;

/** A command's verdict that is no error of the table (e.g. "a tenant probe failed"): message and exit code. */
export class Failure extends Error {
  override readonly name = 'Failure';
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}
