// What a migration request asks and is answered: its options, the answer, and the shape of a refusal.
import { AppError, isAppError } from '../../shared/errors.js';
import type { Phase } from './plan.js';

export interface MigrateOptions {
  dryRun: boolean;
  yes: boolean;
  dumpOnly: boolean;
  lockWrites: boolean;
  skipBackupCheck: boolean;
}

export interface MigrateAnswer {
  status: number;
  body: Record<string, unknown>;
}

/** Rewraps a refusal so its JSON body also says `ok: false` and the phase that refused. */
export function refusal(phase: Phase | 'confirm' | 'lease', error: unknown): AppError {
  const e = isAppError(error)
    ? error
    : new AppError('internal', (error as Error)?.message ?? String(error), { cause: error });
  return new AppError(e.code, e.message, {
    cause: e.cause ?? e,
    details: { ok: false, phase, ...(e.details ?? {}) },
    ...(e.retryAfterSeconds !== undefined ? { retryAfterSeconds: e.retryAfterSeconds } : {}),
  });
}
