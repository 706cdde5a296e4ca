// The spare sandbox a driver keeps prepared for the next verification.
import type { SpareState } from './types.js';

/** A spare sandbox being prepared or ready (each driver keeps at most one). */
export interface SpareSlot<S> {
  /** Resolves to the started sandbox, or to undefined when preparing it failed. */
  sandbox: Promise<S | undefined>;
  /** Started and ready (the promise has resolved to a sandbox). */
  isReady: boolean;
  timer?: NodeJS.Timeout;
}

/**
 * Starts preparing a spare with `prepare`; the slot is ready once it resolves. A failure is handed to
 * `failed` (with the slot, to tell whether it is still the driver's) and the slot resolves to undefined.
 */
export function prepareSpare<S>(
  prepare: (slot: SpareSlot<S>) => Promise<S>,
  failed: (slot: SpareSlot<S>, error: unknown) => void,
): SpareSlot<S> {
  const slot: SpareSlot<S> = { isReady: false, sandbox: Promise.resolve(undefined) };
  slot.sandbox = prepare(slot).then(
    (sandbox) => {
      slot.isReady = true;
      return sandbox;
    },
    (error: unknown) => {
      failed(slot, error);
      return undefined;
    },
  );
  return slot;
}

/** The state of a driver's spare slot (both drivers keep at most one). */
export function spareStateOf(enabled: boolean, slot: { isReady: boolean } | undefined): SpareState {
  if (!enabled) return 'off';
  if (!slot) return 'none';
  return slot.isReady ? 'ready' : 'starting';
}
