// Support for the hardening suites: byte-for-byte snapshots of data directories, raw HTTP requests with
// exact request targets (fetch would normalise `..`), recording wrappers for the PostgreSQL tools, the
// real all-in-one process as a child, the route table of a function app, and a finder for known secrets.
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import http, { type IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { ServerType } from '@hono/node-server';
import { execa, type ResultPromise } from 'execa';
import { routeOf } from '../../functions/all/routes.js';
import type { FunctionName } from '../../shared/config.js';
import type { App } from '../../shared/kit/app.js';
import { listen } from '../../shared/kit/serve.js';
import { freePort, pgBinPath } from './pg.js';
import { eventually } from './runtime.js';

export const ROOT = path.resolve(import.meta.dirname, '../..');

// ---------------------------------------------------------------------------------------------------------
// Snapshots

/** Every entry under `roots` (recursively): directories, files by size and SHA-256, symlinks by target. */
export async function snapshotTree(roots: readonly string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  async function walk(root: string, dir: string): Promise<void> {
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    for (const name of names) {
      const full = path.join(dir, name);
      const key = `${root}:${path.relative(root, full)}`;
      const st = await lstat(full);
      if (st.isDirectory()) {
        out.set(key, `dir mode=${(st.mode & 0o7777).toString(8)}`);
        await walk(root, full);
      } else if (st.isSymbolicLink()) {
        out.set(key, `symlink -> ${await readlink(full)}`);
      } else {
        const sha = createHash('sha256')
          .update(await readFile(full))
          .digest('hex');
        out.set(key, `file size=${st.size} sha256=${sha} mode=${(st.mode & 0o7777).toString(8)}`);
      }
    }
  }
  for (const root of roots) {
    out.set(`${root}:`, 'root');
    await walk(root, root);
  }
  return out;
}

/** Human-readable differences between two snapshots (empty when byte-for-byte equal). */
export function diffSnapshots(before: Map<string, string>, after: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [key, value] of before) {
    if (!after.has(key)) out.push(`removed ${key} (${value})`);
    else if (after.get(key) !== value) out.push(`changed ${key}: ${value} -> ${after.get(key)}`);
  }
  for (const [key, value] of after) if (!before.has(key)) out.push(`added ${key} (${value})`);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Raw HTTP

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The parsed JSON body, or undefined when the body is not JSON. */
  json: Record<string, unknown> | undefined;
}

export interface RawRequest {
  method: string;
  /** The request target exactly as sent (no normalisation of `..`, `%2e` or `%2F`). */
  target: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** Send the body with Transfer-Encoding: chunked (no Content-Length). */
  chunked?: boolean;
}

/** One HTTP/1.1 request with node:http, so the request target reaches the server byte for byte. */
export function rawRequest(base: string, request: RawRequest): Promise<RawResponse> {
  const url = new URL(base);
  return new Promise<RawResponse>((resolve, reject) => {
    const headers: Record<string, string> = { ...(request.headers ?? {}) };
    if (request.body !== undefined && !request.chunked)
      headers['content-length'] = String(Buffer.byteLength(request.body));
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        method: request.method,
        path: request.target,
        headers,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: Record<string, unknown> | undefined;
          try {
            json = JSON.parse(text) as Record<string, unknown>;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
      },
    );
    req.on('error', reject);
    if (request.body !== undefined) {
      if (request.chunked) {
        // Several writes without a length: the server must count while reading.
        const body = Buffer.from(request.body);
        for (let at = 0; at < body.length; at += 1024) req.write(body.subarray(at, at + 1024));
      } else req.write(request.body);
    }
    req.end();
  });
}

/**
 * Bytes written to a fresh TCP connection and the answer read until the server closes it — for what
 * node:http will not send as written (a CONNECT answered with an error). The status line and headers
 * are parsed; the body is kept as text.
 */
export function rawExchange(base: string, bytes: string): Promise<RawResponse> {
  const url = new URL(base);
  return new Promise<RawResponse>((resolve, reject) => {
    const socket = net.connect(Number(url.port), url.hostname);
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const [head = '', ...rest] = text.split('\r\n\r\n');
      const [statusLine = '', ...headerLines] = head.split('\r\n');
      const headers: IncomingHttpHeaders = {};
      for (const line of headerLines) {
        const i = line.indexOf(':');
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      const body = rest.join('\r\n\r\n');
      let json: Record<string, unknown> | undefined;
      try {
        json = JSON.parse(body) as Record<string, unknown>;
      } catch {
        json = undefined;
      }
      resolve({ status: Number(statusLine.split(' ')[1] ?? 0), headers, text: body, json });
    });
    socket.write(bytes);
  });
}

/**
 * Sends the head of a POST announcing `announcedBytes` of body, then part of the body, then closes
 * the connection once the server has had the part: a client that gives up mid-body.
 */
export async function abortMidBody(
  base: string,
  target: string,
  headers: Record<string, string>,
  part: string,
  announcedBytes: number,
): Promise<void> {
  const url = new URL(base);
  const socket = net.connect(Number(url.port), url.hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const lines = Object.entries({ host: url.host, ...headers, 'content-length': String(announcedBytes) })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  await new Promise<void>((resolve) =>
    socket.write(`POST ${target} HTTP/1.1\r\n${lines}\r\n${part}`, () => resolve()),
  );
  socket.destroy();
}

/** Serves a fetch handler on a random loopback port, as a process edge does (shared/kit/serve.ts). */
export async function serveOnLoopback(
  fetch: (request: Request) => Response | Promise<Response>,
): Promise<{ server: ServerType; url: string; close(): Promise<void> }> {
  const server = await listen({ fetch, port: 0, host: '127.0.0.1' });
  const { port } = server.address() as { port: number };
  return {
    server,
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        (server as http.Server).closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Routes

export interface RouteRef {
  method: 'GET' | 'POST';
  path: string;
}

/** The GET/POST routes a function app registered (middleware entries and duplicates dropped). */
export function routesOf(app: App): RouteRef[] {
  const seen = new Set<string>();
  const out: RouteRef[] = [];
  for (const r of app.routes) {
    if (r.method !== 'GET' && r.method !== 'POST') continue;
    const key = `${r.method} ${r.path}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ method: r.method, path: r.path });
  }
  return out;
}

/** The path a function-local route has at the front door (router and all-in-one): routeOf's inverse. */
export function frontDoorPath(fn: FunctionName, localPath: string): string {
  const pathOnly = localPath.split('?')[0]!;
  const direct = routeOf(pathOnly);
  const front = direct?.fn === fn && direct.path === pathOnly ? localPath : `/${fn}${localPath}`;
  const back = routeOf(front.split('?')[0]!);
  if (back?.fn !== fn) throw new Error(`front door path ${front} does not reach ${fn}`);
  return front;
}

// ---------------------------------------------------------------------------------------------------------
// Recording tool wrappers

export interface RecordingTools {
  /** Directory to put first on PATH. */
  bin: string;
  /** Every recorded invocation so far: one line per call, `<tool> <argv joined by spaces>`. */
  read(): Promise<string>;
}

/**
 * Wrappers for PostgreSQL tools that append their argv to a file and exec the real binary. The directory
 * and the record are world-writable/executable because the local sandbox runs initdb and postgres as an
 * unprivileged OS user when the tests run as root.
 */
export async function recordingTools(
  dir: string,
  tools: readonly string[] = ['pg_dump', 'pg_restore', 'psql', 'initdb', 'postgres', 'pg_ctl'],
): Promise<RecordingTools> {
  const bin = path.join(dir, 'recording-bin');
  await mkdir(bin, { recursive: true });
  await chmod(dir, 0o755);
  await chmod(bin, 0o755);
  const record = path.join(bin, 'argv.log');
  await writeFile(record, '');
  await chmod(record, 0o666);
  for (const tool of tools) {
    const file = path.join(bin, tool);
    await writeFile(
      file,
      `#!/bin/sh\nprintf '%s' '${tool}' >> '${record}'\nfor a in "$@"; do printf ' %s' "$a" >> '${record}'; done\nprintf '\\n' >> '${record}'\nexec '${pgBinPath(tool)}' "$@"\n`,
    );
    await chmod(file, 0o755);
  }
  return { bin, read: () => readFile(record, 'utf8') };
}

// ---------------------------------------------------------------------------------------------------------
// The real all-in-one process

export interface ChildFunction {
  url: string;
  /** Everything the child wrote to stdout and stderr so far. */
  stdout(): string;
  stderr(): string;
  /** Parsed JSON log lines from stdout. */
  lines(): Array<Record<string, unknown>>;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<void>;
}

/** Runs functions/all/main.ts (the `npm start` process) on a free port with `env`, until /healthz answers. */
export async function startAllInOneProcess(env: NodeJS.ProcessEnv): Promise<ChildFunction> {
  const port = await freePort();
  let out = '';
  let err = '';
  const child: ResultPromise = execa(process.execPath, ['--import', 'tsx', 'functions/all/main.ts'], {
    cwd: ROOT,
    env: { ...env, FLUX_PORT: String(port), FLUX_HOST: '127.0.0.1' },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
  });
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await eventually(
      async () => {
        if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}: ${err.slice(-2000)}`);
        return (await fetch(`${url}/healthz`)).ok;
      },
      60_000,
      100,
    );
  } catch (error) {
    child.kill('SIGKILL');
    await child;
    throw error;
  }
  return {
    url,
    stdout: () => out,
    stderr: () => err,
    lines: () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .flatMap((l) => {
          try {
            return [JSON.parse(l) as Record<string, unknown>];
          } catch {
            return [];
          }
        }),
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await child;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Secrets

/**
 * A finder for known secret values: each is looked for as is, URL-encoded, and (for whsec_ secrets) as
 * its bare base64 key. Returns the names of the secrets found in `text`.
 */
export function secretFinder(secrets: Record<string, string>): (text: string | Buffer) => string[] {
  const needles: Array<[string, string]> = [];
  for (const [name, value] of Object.entries(secrets)) {
    if (value.length < 8) throw new Error(`secret ${name} is too short to scan for reliably`);
    const forms = new Set([value, encodeURIComponent(value), JSON.stringify(value).slice(1, -1)]);
    if (value.startsWith('whsec_')) forms.add(value.slice('whsec_'.length));
    for (const form of forms) needles.push([name, form]);
  }
  return (input) => {
    const text = typeof input === 'string' ? input : input.toString('latin1');
    return [...new Set(needles.filter(([, form]) => text.includes(form)).map(([name]) => name))];
  };
}

/** Every file under `roots` (directories or single files) with its content, for scanning. */
export async function filesUnder(
  roots: readonly string[],
): Promise<Array<{ file: string; content: Buffer }>> {
  const out: Array<{ file: string; content: Buffer }> = [];
  async function walk(entry: string): Promise<void> {
    let st: Awaited<ReturnType<typeof lstat>>;
    try {
      st = await lstat(entry);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    if (st.isFile()) out.push({ file: entry, content: await readFile(entry) });
    else if (st.isDirectory()) for (const name of await readdir(entry)) await walk(path.join(entry, name));
  }
  for (const root of roots) await walk(root);
  return out;
}
