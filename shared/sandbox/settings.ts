// The server settings every sandbox runs with, whichever driver starts it.

/** Default settings of a throwaway server: nothing it writes must survive a crash. */
export function throwawaySettings(maintenanceWorkMemMb: number): Record<string, string> {
  return {
    fsync: 'off',
    full_page_writes: 'off',
    synchronous_commit: 'off',
    // minimal WAL: COPY into a table created in the same (single) restore transaction skips WAL.
    wal_level: 'minimal',
    max_wal_senders: '0',
    archive_mode: 'off',
    max_wal_size: '4GB',
    checkpoint_timeout: '1d',
    autovacuum: 'off',
    jit: 'off',
    maintenance_work_mem: `${maintenanceWorkMemMb}MB`,
    // A single-transaction restore locks every table and index it creates.
    max_locks_per_transaction: '1024',
  };
}

/** The settings as server arguments (`-c name=value`). */
export function settingsArgs(settings: Record<string, string>): string[] {
  return Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]);
}
