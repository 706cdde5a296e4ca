// A real S3-protocol server for tests: s3rver (npm) in a child process of its own, on a random loopback
// port with a temp data dir, so its memory never counts against the process under test. An optional
// recording proxy in front of it can answer some requests itself, the way another S3 server would
// (conditional writes, 501 for unknown headers), to test the driver against behaviours s3rver lacks.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';

/** s3rver's one account (it checks the access key id, not SigV4 signatures). */
export const S3RVER_KEY_ID = 'S3RVER';
export const S3RVER_SECRET = 'S3RVER';

export interface S3Server {
  endpoint: string;
  port: number;
  bucket: string;
  /** Stops the server and removes its data dir. */
  close(): Promise<void>;
}

const LAUNCHER = `
const S3rver = require(process.argv[1]);
const server = new S3rver({ port: 0, address: '127.0.0.1', directory: process.argv[2], silent: true,
  configureBuckets: [{ name: process.argv[3] }] });
server.run().then(({ port }) => process.stdout.write(JSON.stringify({ port }) + '\\n'),
  (error) => { console.error(error); process.exit(1); });
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

/** Starts s3rver with one bucket; the child also exits when this process goes (its stdin closes). */
export async function startS3Server(bucket = `b-${randomBytes(4).toString('hex')}`): Promise<S3Server> {
  const dir = await mkdtemp(path.join(tmpdir(), 'flux-s3rver-'));
  const entry = createRequire(import.meta.url).resolve('s3rver');
  // s3rver's ListObjectsV2 continuation tokens use DES, which OpenSSL 3 (Node 17+) only has in its
  // legacy provider: without it every second page is a 500.
  const child = spawn(process.execPath, ['--openssl-legacy-provider', '-e', LAUNCHER, entry, dir, bucket], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const port = await new Promise<number>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once('line', (line) => resolve((JSON.parse(line) as { port: number }).port));
    child.once('exit', (code) => reject(new Error(`s3rver exited (${code}) before listening: ${stderr}`)));
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    bucket,
    async close() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

export interface ProxyReply {
  status: number;
  code: string;
  message: string;
}

export interface S3Proxy {
  endpoint: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

function errorXml(reply: ProxyReply): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${reply.code}</Code><Message>${reply.message}</Message><RequestId>proxy</RequestId></Error>`;
}

/** Sends one request upstream, streaming both ways. */
function forward(upstreamPort: number, req: IncomingMessage, res: http.ServerResponse): void {
  const out = http.request(
    { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers },
    (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    },
  );
  out.on('error', () => res.destroy());
  req.pipe(out);
}

/** HEADs a path upstream (same headers, so the request stays signed for s3rver's key check). */
export function upstreamStatus(upstreamPort: number, req: IncomingMessage): Promise<number> {
  return new Promise((resolve, reject) => {
    const pathOnly = (req.url ?? '/').split('?')[0];
    const headers = { ...req.headers };
    for (const h of ['content-length', 'transfer-encoding', 'expect', 'content-md5', 'if-none-match'])
      delete headers[h];
    const head = http.request(
      { host: '127.0.0.1', port: upstreamPort, method: 'HEAD', path: pathOnly, headers },
      (r) => {
        r.resume();
        resolve(r.statusCode ?? 0);
      },
    );
    head.on('error', reject);
    head.end();
  });
}

/**
 * A recording proxy in front of `upstreamPort`. `answer` may reply itself (an S3 error document) or
 * return undefined to forward the request unchanged. Requests with the same `lockKey` are handled one
 * at a time, from `answer` to the end of the forwarded response (a server's own per-key atomicity).
 */
export async function startS3Proxy(
  upstreamPort: number,
  answer: (req: IncomingMessage) => Promise<ProxyReply | undefined> | ProxyReply | undefined = () =>
    undefined,
  lockKey: (req: IncomingMessage) => string | undefined = () => undefined,
): Promise<S3Proxy> {
  const requests: RecordedRequest[] = [];
  const locks = new Map<string, Promise<void>>();
  async function handle(req: IncomingMessage, res: http.ServerResponse): Promise<void> {
    const reply = await answer(req);
    if (!reply) {
      forward(upstreamPort, req, res);
      await new Promise<void>((resolve) => res.once('close', () => resolve()));
      return;
    }
    req.resume();
    const body = req.method === 'HEAD' ? '' : errorXml(reply);
    res.writeHead(reply.status, {
      'content-type': 'application/xml',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
  }
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    const key = lockKey(req);
    const prior = (key && locks.get(key)) || Promise.resolve();
    const run = prior
      .then(() => handle(req, res))
      .catch(() => {
        res.destroy();
      });
    if (key) {
      locks.set(key, run);
      void run.then(() => {
        if (locks.get(key) === run) locks.delete(key);
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
