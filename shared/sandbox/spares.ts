// The spare sandbox a driver keeps started and ready for the next verification (both drivers keep at most
// one): prepared in the background, refilled when the driver says so, tried again only after a pause when
// preparing failed, replaced when it waited too long, removed at close. What a spare is, and how it is
// made and removed, is the driver's: the pool only holds the one slot.
import { AppError } from '../errors.js';
import { SECOND_MS } from '../units.js';
import type { SpareState } from './types.js';

/** After a spare could not be prepared, background attempts pause this long (a verification still tries). */
export const SPARE_RETRY_MS = 30 * SECOND_MS;

export interface SparePoolOptions<S> {
  /** Keep a spare at all (when false the state is `off` and refill() does nothing). */
  enabled: boolean;
  /** Prepares one started, ready sandbox; `signal` is aborted by close(). */
  create(signal: AbortSignal): Promise<S>;
  /** Removes a spare nobody will use (replaced, unfit, or left at close). */
  destroy(sandbox: S): Promise<void>;
  /** Whether there is room for a spare now, beyond there being none (docker: the concurrency). */
  hasRoom?(): boolean;
  /** A spare nobody took is replaced after being ready this long (docker: its expiry label). */
  refreshMs?: number;
  /** Pause after a failed preparation (default SPARE_RETRY_MS). */
  retryMs?: number;
  /** Preparing a spare (not reported after close) or removing one failed. */
  onError?(error: unknown, what: 'prepare' | 'remove', sandbox?: S): void;
  /** The clock the retry pause is measured on (tests). */
  now?(): number;
}

export interface SparePool<S> {
  state(): SpareState;
  /** Starts preparing a spare when there is none (and none failed moments ago, and there is room). */
  refill(): void;
  /**
   * Hands out the spare, waiting for it when it is still starting (it started earlier than a new one
   * would); undefined when there is none or preparing it failed. The pool is empty from the call on: a
   * refill() right after it prepares the next one. What the caller does not use it hands to discard().
   */
  take(): Promise<S | undefined>;
  /** Removes a sandbox in the background; close() waits for it. */
  discard(sandbox: S): void;
  /** Stops refilling, aborts a preparation and waits for it, and removes the spare and the discarded. */
  close(): Promise<void>;
}

interface Slot<S> {
  /** Resolves to the started sandbox, or to undefined when preparing it failed. */
  sandbox: Promise<S | undefined>;
  isReady: boolean;
  refreshTimer?: NodeJS.Timeout;
}

export function createSparePool<S>(options: SparePoolOptions<S>): SparePool<S> {
  const now = options.now ?? Date.now;
  const retryMs = options.retryMs ?? SPARE_RETRY_MS;
  const closing = new AbortController();
  /** Preparations and removals still running (close() waits for them). */
  const pending = new Set<Promise<unknown>>();
  let slot: Slot<S> | undefined;
  let failedAt: number | undefined;
  let isClosed = false;

  function track(promise: Promise<unknown>): void {
    pending.add(promise);
    void promise.finally(() => pending.delete(promise));
  }

  function discard(sandbox: S): void {
    track(
      options.destroy(sandbox).catch((error: unknown) => {
        options.onError?.(error, 'remove', sandbox);
      }),
    );
  }

  function refill(): void {
    if (!options.enabled || isClosed || slot) return;
    if (failedAt !== undefined && now() - failedAt < retryMs) return;
    if (options.hasRoom && !options.hasRoom()) return;
    const filling: Slot<S> = { isReady: false, sandbox: Promise.resolve(undefined) };
    slot = filling;
    filling.sandbox = options.create(closing.signal).then(
      (sandbox) => {
        filling.isReady = true;
        if (options.refreshMs !== undefined && slot === filling) {
          // Cleared by take() and close(): when it fires, the spare is still the pool's.
          filling.refreshTimer = setTimeout(() => {
            slot = undefined;
            discard(sandbox);
            refill();
          }, options.refreshMs);
          filling.refreshTimer.unref();
        }
        return sandbox;
      },
      (error: unknown) => {
        failedAt = now();
        if (slot === filling) slot = undefined;
        if (!isClosed) options.onError?.(error, 'prepare');
        return undefined;
      },
    );
    track(filling.sandbox);
  }

  return {
    state() {
      if (!options.enabled) return 'off';
      if (!slot) return 'none';
      return slot.isReady ? 'ready' : 'starting';
    },

    refill,

    take() {
      const taken = slot;
      if (!taken) return Promise.resolve(undefined);
      slot = undefined;
      clearTimeout(taken.refreshTimer);
      return taken.sandbox;
    },

    discard,

    async close() {
      isClosed = true;
      const left = slot;
      slot = undefined;
      clearTimeout(left?.refreshTimer);
      closing.abort(new AppError('shutting_down', 'the sandbox driver is closing'));
      const sandbox = await left?.sandbox;
      if (sandbox !== undefined) discard(sandbox);
      while (pending.size > 0) await Promise.all([...pending]);
    },
  };
}
