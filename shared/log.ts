// JSON logs (pino) with the redaction every function relies on: no token, password or URL credential
// ever reaches a log line.
import { type DestinationStream, type Logger, pino } from 'pino';

export type { Logger } from 'pino';

const REDACT_PATHS = [
  'authorization',
  'password',
  'token',
  'secret',
  'secrets',
  'databaseUrl',
  'dedicatedUrl',
  'url',
  '*.authorization',
  '*.password',
  '*.token',
  '*.secret',
  '*.databaseUrl',
  '*.dedicatedUrl',
  'headers.authorization',
  'req.headers.authorization',
  'env.PGPASSWORD',
];

export interface LogOptions {
  level?: string;
  /** Where lines go (tests pass a capture stream); stdout by default. */
  destination?: DestinationStream;
  /**
   * The `fn` every line carries (default: the logger's name). null for a process hosting several
   * functions: each function's child logger binds its own, and pino would write a second `fn` key
   * after the parent's rather than replace it.
   */
  fn?: string | null;
}

export function createLogger(name: string, options: LogOptions = {}): Logger {
  return pino(
    {
      name,
      level: options.level ?? 'info',
      base: options.fn === null ? { pid: process.pid } : { fn: options.fn ?? name, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination,
  );
}

/** A logger that writes nowhere (unit tests that do not read logs). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
