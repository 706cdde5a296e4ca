// The manifest watcher: fs.watch on FLUX_BACKUPS_LOCAL_DIR and on every project directory in it,
// including ones created after start. A manifest's arrival (dump renames it into place last) is the
// hint to copy now. It is only a hint: inotify drops events on overflow without Node saying so, which
// is why the reconcile scan exists and why `refresh` re-arms whatever has gone quiet.
import { type FSWatcher, watch } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir } from '../../shared/atomic.js';
import { isUuid } from '../../shared/catalog/ids.js';
import { parseCatalogName } from '../../shared/catalog/layout.js';
import type { Logger } from '../../shared/log.js';

export interface ManifestWatcherOptions {
  root: string;
  log: Logger;
  /** A manifest appeared (or changed) under `<root>/<projectId>/`. */
  onManifest(projectId: string, backupId: string): void;
  /** A project directory appeared: its files may predate the watch, so scan it. Also on lost events. */
  onProjectDir(projectId: string): void;
}

export interface ManifestWatcher {
  start(): Promise<void>;
  /** Re-arms the root watch, watches any project directory not watched yet, drops removed ones. */
  refresh(): Promise<void>;
  stop(): void;
  /** Directories watched now (root included). */
  readonly watched: number;
  readonly isWatchingRoot: boolean;
}

const ROOT = '';

export function createManifestWatcher(options: ManifestWatcherOptions): ManifestWatcher {
  const { root, log } = options;
  const watchers = new Map<string, { watcher: FSWatcher; ino: number }>();
  let stopped = true;

  function forget(key: string): void {
    const current = watchers.get(key);
    current?.watcher.close();
    watchers.delete(key);
  }

  async function watchRoot(): Promise<void> {
    if (watchers.has(ROOT) || stopped) return;
    await ensureDir(root);
    const ino = (await stat(root)).ino;
    if (watchers.has(ROOT) || stopped) return;
    // persistent: false: the watch alone never keeps the process alive (the server does).
    const watcher = watch(root, { persistent: false }, (_type, filename) => {
      if (filename === null) return void refresh(true);
      const name = filename.toString();
      if (isUuid(name)) void watchProject(name, true);
    });
    watcher.on('error', (error) => {
      log.warn({ err: error, dir: root }, 'watch of FLUX_BACKUPS_LOCAL_DIR failed; the reconcile re-arms it');
      forget(ROOT);
    });
    watchers.set(ROOT, { watcher, ino });
  }

  /** Watches `<root>/<projectId>`; returns true when a new watch was set up. */
  async function watchProject(projectId: string, scan: boolean): Promise<boolean> {
    if (watchers.has(projectId) || stopped) return false;
    const dir = path.join(root, projectId);
    let ino: number;
    try {
      const s = await stat(dir);
      if (!s.isDirectory()) return false;
      ino = s.ino;
    } catch {
      return false;
    }
    if (watchers.has(projectId) || stopped) return false;
    let watcher: FSWatcher;
    try {
      watcher = watch(dir, { persistent: false }, (_type, filename) => {
        if (filename === null) return options.onProjectDir(projectId);
        const parsed = parseCatalogName(filename.toString());
        if (parsed?.file === 'manifest') options.onManifest(projectId, parsed.backupId);
      });
    } catch (error) {
      log.warn({ err: error, dir }, 'could not watch a project directory; the reconcile covers it');
      return false;
    }
    watcher.on('error', (error) => {
      log.warn({ err: error, dir }, 'watch of a project directory failed; the reconcile re-arms it');
      forget(projectId);
    });
    watchers.set(projectId, { watcher, ino });
    // Files written between the directory's creation and this watch produced no event: look now.
    if (scan) options.onProjectDir(projectId);
    return true;
  }

  async function refresh(scanNew = false): Promise<void> {
    if (stopped) return;
    try {
      const rootIno = (await stat(root).catch(() => undefined))?.ino;
      if (watchers.has(ROOT) && watchers.get(ROOT)?.ino !== rootIno) forget(ROOT);
      await watchRoot();
      const names = new Set((await readdir(root)).filter(isUuid));
      for (const [key, entry] of watchers) {
        if (key === ROOT) continue;
        // Removed (or removed and re-created) directories: the old watch sees nothing any more.
        const ino = names.has(key)
          ? (await stat(path.join(root, key)).catch(() => undefined))?.ino
          : undefined;
        if (ino !== entry.ino) forget(key);
      }
      for (const projectId of names) await watchProject(projectId, scanNew);
    } catch (error) {
      log.warn({ err: error, root }, 'could not refresh the watches; the reconcile still scans');
    }
  }

  return {
    get watched() {
      return watchers.size;
    },
    get isWatchingRoot() {
      return watchers.has(ROOT);
    },
    async start() {
      stopped = false;
      await watchRoot();
      // Existing directories are scanned by the start-up reconcile that follows; only watch them here.
      await refresh(false);
    },
    refresh: () => refresh(false),
    stop() {
      stopped = true;
      for (const key of [...watchers.keys()]) forget(key);
    },
  };
}
