// The one error a driver throws when no sandbox can be had: AppError `unverifiable` with a bounded reason,
// so a verification that meets it is `unverifiable`, never `restore_failed`.
import { AppError } from '../errors.js';
import type { UnavailableReason } from './types.js';

export function sandboxUnavailable(
  reason: UnavailableReason,
  message: string,
  options: { cause?: unknown; details?: Record<string, unknown> } = {},
): AppError {
  return new AppError('unverifiable', message, {
    ...(options.cause !== undefined ? { cause: options.cause } : {}),
    details: { reason, ...(options.details ?? {}) },
  });
}
