/**
 * Throwaway Postgres clusters for integration tests.
 *
 * `startPostgres()` runs `initdb` into a fresh temp dir and starts a postmaster on a random free
 * 127.0.0.1 port. Each cluster is fully private (own data dir, own unix socket dir, own log file), so
 * several vitest workers can each run several clusters at once. Always `destroy()` what you start
 * (typically in `afterAll`); a best-effort exit hook shuts down anything left over.
 *
 * Running as root: Postgres refuses to run as root, so initdb/pg_ctl are run as an unprivileged OS user
 * (`$FLUX_TEST_PG_OS_USER`, else `postgres` if it exists, else a system user `fluxtest` that is created
 * once) via `setpriv` (or `runuser`), and the temp dir is chowned to that user.
 *
 * Binaries come from `$FLUX_TEST_PG_BIN`, then `$PATH` (vitest.config.ts puts `pg_config --bindir` first).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import type { ClientConfig, QueryResultRow } from 'pg';
import pg from 'pg';

export interface StartPostgresOptions {
  /** Password of the `postgres` superuser (TCP auth is scram-sha-256). Default: random hex. */
  superuserPassword?: string;
  /** Extra server settings (`name = value` in postgresql.conf), e.g. `{ wal_level: 'logical' }`. */
  settings?: Record<string, string | number | boolean>;
  /** Run `initdb --data-checksums`. Default false. */
  dataChecksums?: boolean;
}

/** Settings every test cluster gets (overridable via `settings`). Speed over durability across OS crashes. */
const DEFAULT_SETTINGS: Record<string, string> = {
  fsync: 'off',
  max_connections: '100',
  log_line_prefix: '%m [%p] %q%u@%d ',
};

const SERVER_CONF = 'flux_test.conf';

/** Double-quote an SQL identifier. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Single-quote an SQL literal / postgresql.conf value. */
export function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Absolute path of a Postgres/system binary: `$FLUX_TEST_PG_BIN`, then `$PATH`; the bare name if not found. */
export function pgBinPath(name: string): string {
  const dirs = [process.env.FLUX_TEST_PG_BIN, ...(process.env.PATH ?? '').split(path.delimiter)];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return name;
}

// ---------------------------------------------------------------------------------------------------------
// Running as an unprivileged user when we are root

interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

async function lookupOsUser(name: string): Promise<OsUser | undefined> {
  const uid = await execa('id', ['-u', name], { reject: false });
  const gid = await execa('id', ['-g', name], { reject: false });
  if (uid.exitCode !== 0 || gid.exitCode !== 0) return undefined;
  return { name, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/** Creates the `fluxtest` system user once; tolerates other processes racing to do the same. */
async function ensureFallbackUser(name: string): Promise<OsUser> {
  let lastError = '';
  for (let attempt = 0; attempt < 40; attempt++) {
    const existing = await lookupOsUser(name);
    if (existing) return existing;
    const res = await execa(
      'useradd',
      [
        '--system',
        '--user-group',
        '--no-create-home',
        '--home-dir',
        '/nonexistent',
        '--shell',
        '/usr/sbin/nologin',
        name,
      ],
      { reject: false },
    );
    if (res.exitCode !== 0) {
      // 9 = already exists (someone else won), 10 = passwd file locked by a concurrent useradd.
      lastError = `${res.exitCode}: ${res.stderr}`;
      await sleep(50 + Math.random() * 200);
    }
  }
  throw new Error(`could not create OS user ${name} to run Postgres as: ${lastError}`);
}

let osUserPromise: Promise<OsUser | undefined> | undefined;

/** The OS user to run Postgres as, or undefined when we are not root (run directly). */
function postgresOsUser(): Promise<OsUser | undefined> {
  osUserPromise ??= (async () => {
    if (process.getuid?.() !== 0) return undefined;
    for (const name of [process.env.FLUX_TEST_PG_OS_USER, 'postgres']) {
      if (!name) continue;
      const user = await lookupOsUser(name);
      if (user && user.uid !== 0) return user;
    }
    return ensureFallbackUser('fluxtest');
  })();
  osUserPromise.catch(() => {
    osUserPromise = undefined;
  });
  return osUserPromise;
}

interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

async function runPgTool(
  osUser: OsUser | undefined,
  tool: string,
  args: string[],
  cwd: string,
): Promise<ExecResult> {
  const file = pgBinPath(tool);
  let cmd = file;
  let argv = args;
  if (osUser) {
    const setpriv = pgBinPath('setpriv');
    if (path.isAbsolute(setpriv)) {
      cmd = setpriv;
      argv = [
        '--reuid',
        String(osUser.uid),
        '--regid',
        String(osUser.gid),
        '--init-groups',
        '--',
        file,
        ...args,
      ];
    } else {
      cmd = 'runuser';
      argv = ['-u', osUser.name, '--', file, ...args];
    }
  }
  // stdin ignored so pg_ctl never waits on it; the postmaster's own output goes to the -l log file.
  const res = await execa(cmd, argv, { cwd, reject: false, stdin: 'ignore', env: { PGDATA: undefined } });
  return {
    exitCode: res.exitCode ?? -1,
    stdout: String(res.stdout ?? ''),
    stderr: String(res.stderr ?? ''),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Process helpers (the postmaster is daemonized by pg_ctl, and PID 1 may not reap it: treat zombies as dead)

function processAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    if (fs.existsSync('/proc/self/stat')) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
  }
}

function isZombie(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return false;
  }
}

function childPids(parent: number): number[] {
  const out: number[] = [];
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === parent) out.push(Number(entry));
    } catch {
      // raced with exit
    }
  }
  return out;
}

/** Binds 127.0.0.1:0 and closes again; the port is free at that instant (callers retry on collisions). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not allocate a port'))));
    });
  });
}

async function readLogFrom(file: string, offset: number): Promise<string> {
  try {
    const buf = await fsp.readFile(file);
    return buf.subarray(offset).toString('utf8').slice(-4000);
  } catch {
    return '';
  }
}

async function fileSize(file: string): Promise<number> {
  try {
    return (await fsp.stat(file)).size;
  } catch {
    return 0;
  }
}

const liveClusters = new Set<PgCluster>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const cluster of liveClusters) cluster.emergencyCleanup();
  });
}

// ---------------------------------------------------------------------------------------------------------

/**
 * A running (or stopped) throwaway cluster. Superuser `postgres`, TCP on 127.0.0.1:`port` with
 * scram-sha-256, unix socket in `socketDir` with trust auth. Create with {@link startPostgres}.
 */
export class PgCluster {
  /** Always `127.0.0.1`. */
  readonly host = '127.0.0.1';
  /** Superuser name (always `postgres`). */
  readonly user = 'postgres';
  /** Superuser password. */
  readonly password: string;
  /** The temp dir holding everything; removed by `destroy()`. */
  readonly baseDir: string;
  /** PGDATA. */
  readonly dataDir: string;
  /** Directory of the unix socket (`.s.PGSQL.<port>`); usable as `host` for libpq tools. */
  readonly socketDir: string;
  /** Server log (pg_ctl -l). */
  readonly logFile: string;
  /** `server_version_num`, e.g. 150018. */
  serverVersionNum = 0;

  #port = 0;
  #osUser: OsUser | undefined;
  #destroyed: Promise<void> | undefined;

  /** @internal use {@link startPostgres}. */
  constructor(baseDir: string, password: string, osUser: OsUser | undefined) {
    this.baseDir = baseDir;
    this.password = password;
    this.dataDir = path.join(baseDir, 'data');
    this.socketDir = baseDir;
    this.logFile = path.join(baseDir, 'postgres.log');
    this.#osUser = osUser;
  }

  /** TCP port on 127.0.0.1. Stays the same across `restart()`. */
  get port(): number {
    return this.#port;
  }

  /** `postgres://postgres:<password>@127.0.0.1:<port>/<db>`. */
  url(db = 'postgres'): string {
    return `postgres://${this.user}:${encodeURIComponent(this.password)}@${this.host}:${this.#port}/${encodeURIComponent(db)}`;
  }

  /** node-postgres connection config for `db`. */
  connectionConfig(db = 'postgres'): ClientConfig {
    return {
      host: this.host,
      port: this.#port,
      user: this.user,
      password: this.password,
      database: db,
      connectionTimeoutMillis: 15_000,
    };
  }

  /** libpq environment (PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE) for running CLI tools against `db`. */
  env(db = 'postgres'): Record<string, string> {
    return {
      PGHOST: this.host,
      PGPORT: String(this.#port),
      PGUSER: this.user,
      PGPASSWORD: this.password,
      PGDATABASE: db,
    };
  }

  /** A connected pg.Client on `db`; the caller must `end()` it. */
  async connect(db = 'postgres'): Promise<pg.Client> {
    const client = new pg.Client(this.connectionConfig(db));
    await client.connect();
    return client;
  }

  /** Runs one statement on a short-lived connection to `db` and returns its rows. */
  async query<R extends QueryResultRow = QueryResultRow>(
    sql: string,
    params: unknown[] = [],
    db = 'postgres',
  ): Promise<R[]> {
    const client = await this.connect(db);
    try {
      const res = await client.query<R>(sql, params);
      return res.rows;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** `CREATE DATABASE` (owner postgres, template1). Idempotent: an existing database is left as is. */
  async createDatabase(name: string): Promise<void> {
    try {
      await this.query(`CREATE DATABASE ${quoteIdent(name)}`);
    } catch (err) {
      if ((err as { code?: string }).code !== '42P04') throw err;
    }
  }

  /** PID of the postmaster if it is running (per postmaster.pid), else undefined. */
  postmasterPid(): number | undefined {
    let text: string;
    try {
      text = fs.readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8');
    } catch {
      return undefined;
    }
    const pid = Number(text.split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 && processAlive(pid) ? pid : undefined;
  }

  /** Whether the postmaster is running. */
  isRunning(): boolean {
    return this.postmasterPid() !== undefined;
  }

  /** Starts the server (no-op if running). Recovers after `kill()`. */
  async start(): Promise<void> {
    if (this.isRunning()) return;
    const offset = await fileSize(this.logFile);
    const res = await this.#pg('pg_ctl', ['-w', '-t', '60', '-D', this.dataDir, '-l', this.logFile, 'start']);
    if (res.exitCode !== 0) {
      const log = await readLogFrom(this.logFile, offset);
      const err = new Error(
        `pg_ctl start failed (port ${this.#port}, exit ${res.exitCode}): ${res.stderr.trim()}\n--- ${this.logFile} ---\n${log}`,
      );
      (err as Error & { serverLog?: string }).serverLog = log;
      throw err;
    }
    const rows = await this.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`);
    this.serverVersionNum = Number(rows[0]?.v);
  }

  /** Fast shutdown (`pg_ctl stop -m fast`, escalating to immediate). Idempotent; no-op if not running. */
  async stop(): Promise<void> {
    if (!this.isRunning()) return;
    const res = await this.#pg('pg_ctl', ['-w', '-t', '60', '-D', this.dataDir, '-m', 'fast', 'stop']);
    if (res.exitCode === 0 || !this.isRunning()) return;
    const imm = await this.#pg('pg_ctl', ['-w', '-t', '30', '-D', this.dataDir, '-m', 'immediate', 'stop']);
    if (imm.exitCode !== 0 && this.isRunning()) {
      throw new Error(`pg_ctl stop failed: ${res.stderr.trim()} / ${imm.stderr.trim()}`);
    }
  }

  /** `stop()` then `start()` on the same port. */
  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /**
   * SIGKILLs the postmaster (a crash, for fault tests) and waits until it and its children are gone.
   * The next `start()`/`restart()` performs crash recovery. No-op if not running.
   */
  async kill(): Promise<void> {
    const pid = this.postmasterPid();
    if (pid === undefined) return;
    const children = childPids(pid);
    try {
      process.kill(pid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
    const deadline = Date.now() + 20_000;
    while ([pid, ...children].some(processAlive)) {
      if (Date.now() > deadline) {
        for (const child of children) {
          try {
            process.kill(child, 'SIGKILL');
          } catch {
            // gone
          }
        }
        break;
      }
      await sleep(25);
    }
    // An unreaped (zombie) postmaster still "exists" for kill(pid, 0), which would make the next postmaster
    // refuse to start because of postmaster.pid; it is certainly dead, so drop the stale lock file.
    // Same for the unix socket's lock file.
    if (isZombie(pid)) {
      await fsp.rm(path.join(this.dataDir, 'postmaster.pid'), { force: true });
      await fsp.rm(path.join(this.socketDir, `.s.PGSQL.${this.#port}.lock`), { force: true });
    }
  }

  /** Stops the server and removes the temp dir. Idempotent. */
  destroy(): Promise<void> {
    this.#destroyed ??= (async () => {
      try {
        await this.stop();
      } catch {
        await this.kill().catch(() => {});
      }
      liveClusters.delete(this);
      await fsp.rm(this.baseDir, { recursive: true, force: true, maxRetries: 3 });
    })();
    return this.#destroyed;
  }

  /** @internal synchronous last-resort cleanup from the process exit hook. */
  emergencyCleanup(): void {
    const pid = this.postmasterPid();
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGQUIT');
      } catch {
        // gone
      }
    }
    try {
      fs.rmSync(this.baseDir, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }

  /** @internal first start: initdb has run; pick a port, retrying on bind collisions with other workers. */
  async firstStart(settings: Record<string, string>): Promise<void> {
    let lastError: unknown;
    for (let attempt = 0; attempt < 8; attempt++) {
      this.#port = await freePort();
      await this.#writeServerConf(settings);
      try {
        await this.start();
        return;
      } catch (err) {
        lastError = err;
        const log = (err as { serverLog?: string }).serverLog ?? '';
        if (
          !/could not bind|Address already in use|could not create any TCP\/IP sockets|lock file/i.test(log)
        ) {
          throw err;
        }
        await sleep(Math.random() * 100);
      }
    }
    throw lastError;
  }

  async #writeServerConf(settings: Record<string, string>): Promise<void> {
    const all: Record<string, string> = {
      ...settings,
      port: String(this.#port),
      listen_addresses: '127.0.0.1',
      unix_socket_directories: this.socketDir,
    };
    const body = Object.entries(all)
      .map(([k, v]) => `${k} = ${quoteLiteral(v)}`)
      .join('\n');
    const file = path.join(this.dataDir, SERVER_CONF);
    await fsp.writeFile(file, `# written by test/support/pg.ts\n${body}\n`, { mode: 0o600 });
    if (this.#osUser) await fsp.chown(file, this.#osUser.uid, this.#osUser.gid);
  }

  #pg(tool: string, args: string[]): Promise<ExecResult> {
    return runPgTool(this.#osUser, tool, args, this.baseDir);
  }
}

/**
 * initdb + start a fresh cluster (~0.7-1.5 s). Superuser `postgres` with `superuserPassword` (random by default,
 * passed to initdb via --pwfile). Settings: `fsync=off` plus `opts.settings`.
 */
export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PgCluster> {
  const osUser = await postgresOsUser();
  const baseDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'flux-pg-'));
  const password = opts.superuserPassword ?? randomBytes(16).toString('hex');
  const cluster = new PgCluster(baseDir, password, osUser);
  liveClusters.add(cluster);
  installExitHook();
  try {
    if (osUser) await fsp.chown(baseDir, osUser.uid, osUser.gid);
    const pwfile = path.join(baseDir, 'pwfile');
    await fsp.writeFile(pwfile, `${password}\n`, { mode: 0o600 });
    if (osUser) await fsp.chown(pwfile, osUser.uid, osUser.gid);

    const initdb = async (locale: string) =>
      runPgTool(
        osUser,
        'initdb',
        [
          '--no-sync',
          '-D',
          cluster.dataDir,
          '-U',
          'postgres',
          '--pwfile',
          pwfile,
          '--auth-local=trust',
          '--auth-host=scram-sha-256',
          '-E',
          'UTF8',
          `--locale=${locale}`,
          ...(opts.dataChecksums ? ['--data-checksums'] : []),
        ],
        baseDir,
      );
    let res = await initdb('C.UTF-8');
    if (res.exitCode !== 0 && /locale/i.test(res.stderr)) {
      await fsp.rm(cluster.dataDir, { recursive: true, force: true });
      res = await initdb('C');
    }
    await fsp.rm(pwfile, { force: true });
    if (res.exitCode !== 0) throw new Error(`initdb failed (exit ${res.exitCode}): ${res.stderr.trim()}`);

    const conf = path.join(cluster.dataDir, 'postgresql.conf');
    await fsp.appendFile(conf, `\ninclude_if_exists = '${SERVER_CONF}'\n`);

    const settings: Record<string, string> = { ...DEFAULT_SETTINGS };
    for (const [k, v] of Object.entries(opts.settings ?? {})) {
      settings[k] = typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
    }
    await cluster.firstStart(settings);
    return cluster;
  } catch (err) {
    await cluster.destroy().catch(() => {});
    throw err;
  }
}
