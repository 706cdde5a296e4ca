// Idle snapshot sessions: a dump's own session (the one that exports the snapshot and counts rows, never
// one a tenant's code runs in) is kept open for a short while after a clean end, and the next dump from the
// same server and URL takes it instead of connecting. A fleet of small dumps then pays no backend start per
// backup (a connection costs about as much as a small tenant's whole pg_dump read of its rows), and the
// session's catalog caches stay warm. Only a session whose transaction committed and whose dump slot was
// released comes back here; any failure ends it instead. A kept session is dropped when its server ends it,
// after `idleMs`, and when the owner closes the keeper.
import type pg from 'pg';

export interface IdleSessions {
  /** A kept session for `key`, or undefined (the caller connects). */
  take(key: string): pg.Client | undefined;
  /** Keeps `client` for `key`, or ends it when `key` already has `perKey` kept or the keeper is closed. */
  give(key: string, client: pg.Client): void;
  /** Sessions kept now (all keys). */
  readonly size: number;
  /** Ends every kept session; later gives end theirs at once. */
  close(): Promise<void>;
}

interface Kept {
  client: pg.Client;
  timer: NodeJS.Timeout;
  drop: () => void;
}

export function createIdleSessions(options: { idleMs: number; perKey: number }): IdleSessions {
  const kept = new Map<string, Kept[]>();
  let closed = false;
  const ending = new Set<Promise<void>>();

  function end(client: pg.Client): void {
    const done = client.end().catch(() => undefined);
    ending.add(done);
    void done.finally(() => ending.delete(done));
  }

  function forget(key: string, entry: Kept): boolean {
    const list = kept.get(key);
    const at = list?.indexOf(entry) ?? -1;
    if (!list || at === -1) return false;
    list.splice(at, 1);
    if (list.length === 0) kept.delete(key);
    clearTimeout(entry.timer);
    entry.client.off('end', entry.drop);
    entry.client.off('error', entry.drop);
    return true;
  }

  return {
    take(key) {
      const entry = kept.get(key)?.at(-1);
      if (!entry) return undefined;
      forget(key, entry);
      return entry.client;
    },

    give(key, client) {
      const list = kept.get(key) ?? [];
      if (closed || list.length >= options.perKey) {
        end(client);
        return;
      }
      // Its idle time is up, or the server ended it (restart, terminated): it is no one's to take.
      const drop = () => {
        if (forget(key, entry)) end(client);
      };
      const entry: Kept = { client, timer: setTimeout(drop, options.idleMs), drop };
      entry.timer.unref();
      client.on('end', entry.drop);
      client.on('error', entry.drop);
      list.push(entry);
      kept.set(key, list);
    },

    get size() {
      let n = 0;
      for (const list of kept.values()) n += list.length;
      return n;
    },

    async close() {
      closed = true;
      for (const [key, list] of [...kept]) {
        for (const entry of [...list]) {
          forget(key, entry);
          end(entry.client);
        }
      }
      await Promise.all([...ending]);
    },
  };
}
