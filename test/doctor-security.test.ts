// flux-ops doctor --security as a real CLI process: a deliberately weak deployment (compose file, env file,
// registry, backup directories on disk) has every weakness listed by its code and exits 2; the repo's own
// compose.yml with a suitable env has no finding and exits 0; one admin token alone makes it 1. Secrets
// never reach its output. /readyz carries the cheap share of it as a warning, never as unreadiness.

import { copyFile, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createRestore } from '../functions/restore/app.js';
import { loadConfig } from '../shared/config.js';
import { ROOT } from './support/faults.js';
import { makeTestEnv, makeToken, makeWebhookSecret, type TestEnv, testRuntime } from './support/runtime.js';

const BIN = path.join(ROOT, 'bin', 'flux-ops.mjs');
const TODAY = new Date().toISOString().slice(0, 10);
const LONG_AGO = '2024-01-15';
const DB_PASSWORD = 'pw-never-shown-4711';

let root: string;
let shm: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'flux-doctor-security-'));
  // The hardened deployment's offsite copy lives on another device than the temp dir.
  shm = await mkdtemp(path.join('/dev/shm', 'flux-doctor-offsite-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
  await rm(shm, { recursive: true, force: true });
});

function doctor(args: string[], cwd: string, env: Record<string, string> = {}) {
  return execa(process.execPath, [BIN, 'doctor', '--security', ...args], {
    cwd,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 120_000,
  });
}

interface Audit {
  ok: boolean;
  exitCode: number;
  critical: number;
  warnings: number;
  compose: string | null;
  envFiles: string[];
  findings: Array<{ severity: string; code: string; found: string; fix: string }>;
}

describe('a deliberately weak deployment', () => {
  let dir: string;
  const admin = makeToken('ops', ['admin']);
  const everything = makeToken('ci', [
    'backups:read',
    'backups:write',
    'verify',
    'migrate',
    'restore',
    'probe',
    'events',
  ]);
  const oldSecret = makeWebhookSecret();
  const undatedSecret = makeWebhookSecret();

  beforeAll(async () => {
    dir = path.join(root, 'weak');
    await mkdir(path.join(dir, 'backups', 'project-a'), { recursive: true });
    await writeFile(path.join(dir, 'backups', 'project-a', 'b1.dump'), 'tenant rows');
    // Offsite beside local, on the same disk.
    await mkdir(path.join(dir, 'offsite'), { recursive: true });
    await writeFile(
      path.join(dir, 'projects.json'),
      JSON.stringify({
        clusters: [
          { name: 'shared-1', url: `postgres://flux:${DB_PASSWORD}@db.example.com/flux?sslmode=require` },
        ],
        projects: [
          {
            id: '550e8400-e29b-41d4-a716-446655440000',
            hash: '0a1b2c3',
            slug: 'bloom-atelier',
            engine: 'v1_dedicated',
            databaseUrl: 'env:BLOOM_URL',
          },
        ],
      }),
    );
    await writeFile(
      path.join(dir, 'flux-ops.env'),
      [
        `FLUX_API_TOKENS=${admin.entry},${everything.entry}:${LONG_AGO}`,
        `FLUX_WEBHOOK_SECRETS=${oldSecret}:${LONG_AGO},${undatedSecret}`,
        `FLUX_BACKUPS_LOCAL_DIR=${path.join(dir, 'backups')}`,
        `FLUX_BACKUPS_OFFSITE_DIR=${path.join(dir, 'offsite')}`,
        `FLUX_STATE_DIR=${path.join(dir, 'state')}`,
        `FLUX_PROJECTS_FILE=${path.join(dir, 'projects.json')}`,
        `BLOOM_URL=postgres://bloom:${DB_PASSWORD}@bloom-db.example.com/bloom?sslmode=verify-ca&sslrootcert=/etc/ca.pem`,
        'FLUX_EVENT_SINKS=[{"url":"http://10.1.2.3:9000/hooks/T0SECRETPATH","types":["*"]}]',
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    await writeFile(
      path.join(dir, 'compose.yml'),
      `x-function: &function
  image: flux-ops:local
  env_file: flux-ops.env

services:
  dump:
    <<: *function
    environment:
      FLUX_FUNCTION: dump
      NODE_TLS_REJECT_UNAUTHORIZED: "0"
      FLUX_EVENT_SINKS: '[{"url":"http://hooks.example.com/services/T0/B0/SECRETPATH"}]'
    ports:
      - "8081:8081"
    volumes:
      - backups:/srv/flux/backups
      - \${DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock
  verify:
    <<: *function
    environment:
      - FLUX_FUNCTION=verify
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
  probe:
    <<: *function
    network_mode: host
volumes:
  backups:
`,
    );
  });

  const CODES = [
    'tls_verification_disabled',
    'pg_sslmode_weak',
    'pg_sslmode_verify_ca',
    'offsite_same_device',
    'offsite_unencrypted',
    'token_admin',
    'token_all_scopes',
    'token_created_unknown',
    'token_old',
    'webhook_secret_old',
    'webhook_secret_created_unknown',
    'sink_plain_http',
    'docker_socket_shared',
    'listen_public_plain',
    'env_file_world_readable',
    'backup_dir_world_readable',
    'backup_file_world_readable',
  ];

  it('lists every weakness by its code with a fix, exits 2, and shows no secret', async () => {
    const r = await doctor(['--compose', path.join(dir, 'compose.yml')], dir);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stdout).toMatch(/^security audit: \d+ critical, \d+ warnings/);
    for (const code of CODES) expect(r.stdout, code).toMatch(new RegExp(`(CRITICAL|warning) +${code}: `));
    expect(r.stdout).toMatch(
      /docker_socket_shared: the Docker socket is mounted into dump \(beyond verify\)/,
    );
    expect(r.stdout).toMatch(/compose service dump publishes port 8081 on every interface/);
    expect(r.stdout).toMatch(/compose service probe uses network_mode: host/);
    expect(r.stdout).toMatch(/token "ops" has the admin scope/);
    expect(r.stdout).toMatch(/FLUX_WEBHOOK_SECRETS #1 \(the signing one\) was made on 2024-01-15/);
    expect(r.stdout).toMatch(/1 of 1 files under FLUX_BACKUPS_LOCAL_DIR/);
    const output = r.stdout + r.stderr;
    for (const secret of [admin.token, everything.token, oldSecret, undatedSecret, DB_PASSWORD, 'SECRETPATH'])
      expect(output).not.toContain(secret);
    expect(output).not.toContain(admin.entry.split(':')[1]);
  });

  it('--json: ok, exitCode, counts and each finding as {severity, code, found, fix}', async () => {
    const r = await doctor(['--compose', path.join(dir, 'compose.yml'), '--json'], dir);
    expect(r.exitCode).toBe(2);
    const audit = JSON.parse(r.stdout) as Audit;
    expect(Object.keys(audit).sort()).toEqual(
      ['compose', 'critical', 'envFiles', 'exitCode', 'findings', 'ok', 'warnings'].sort(),
    );
    expect(audit).toMatchObject({
      ok: false,
      exitCode: 2,
      compose: path.join(dir, 'compose.yml'),
      envFiles: [path.join(dir, 'flux-ops.env')],
    });
    for (const f of audit.findings) {
      expect(Object.keys(f).sort()).toEqual(['code', 'fix', 'found', 'severity']);
      expect(['warning', 'critical']).toContain(f.severity);
      expect(f.fix.length).toBeGreaterThan(0);
    }
    expect(new Set(audit.findings.map((f) => f.code))).toEqual(new Set(CODES));
    expect(audit.critical).toBe(audit.findings.filter((f) => f.severity === 'critical').length);
    expect(audit.warnings).toBe(audit.findings.length - audit.critical);
    const bySeverity = Object.fromEntries(audit.findings.map((f) => [f.code, f.severity]));
    expect(bySeverity).toMatchObject({
      pg_sslmode_weak: 'critical',
      pg_sslmode_verify_ca: 'warning',
      docker_socket_shared: 'critical',
      token_admin: 'warning',
      offsite_unencrypted: 'warning',
    });
  });

  it('--compose none: functions binding FLUX_HOST beyond loopback themselves are a finding', async () => {
    const r = await doctor(
      ['--compose', 'none', '--env-file', path.join(dir, 'flux-ops.env'), '--json'],
      dir,
      { FLUX_HOST: '0.0.0.0' },
    );
    const audit = JSON.parse(r.stdout) as Audit;
    expect(audit.compose).toBeNull();
    expect(audit.findings.map((f) => f.code)).toContain('listen_non_loopback');
    expect(audit.findings.map((f) => f.code)).not.toContain('docker_socket_shared');
  });
});

describe("the repo's hardened compose.yml with a suitable env", () => {
  let dir: string;
  let env: string;

  beforeAll(async () => {
    dir = path.join(root, 'hardened');
    await mkdir(dir, { recursive: true });
    // The deployment as its header comment says: compose.yml, flux-ops.env (chmod 600), projects.json.
    await copyFile(path.join(ROOT, 'compose.yml'), path.join(dir, 'compose.yml'));
    const backups = path.join(dir, 'backups');
    const offsite = path.join(shm, 'offsite');
    for (const d of [backups, offsite])
      await mkdir(path.join(d, 'project-a'), { recursive: true, mode: 0o700 });
    await writeFile(path.join(backups, 'project-a', 'b1.dump'), 'tenant rows', { mode: 0o600 });
    expect((await stat(backups)).dev, 'the offsite dir must be on another device').not.toBe(
      (await stat(offsite)).dev,
    );
    await writeFile(
      path.join(dir, 'projects.json'),
      JSON.stringify({
        clusters: [
          {
            name: 'shared-1',
            url: 'env:FLUX_SHARED_POSTGRES_URL',
          },
        ],
        projects: [],
      }),
    );
    env = [
      `FLUX_API_TOKENS=${makeToken('monitor', ['backups:read']).entry}:${TODAY},${makeToken('ci', ['backups:write', 'verify']).entry}:${TODAY}`,
      `FLUX_WEBHOOK_SECRETS=${makeWebhookSecret()}:${TODAY}`,
      `FLUX_BACKUPS_LOCAL_DIR=${backups}`,
      `FLUX_BACKUPS_OFFSITE_DIR=${offsite}`,
      `FLUX_SHARED_POSTGRES_URL=postgres://flux:${DB_PASSWORD}@db.example.com/flux?sslmode=verify-full&sslrootcert=/etc/flux-ops/ca.pem`,
      'FLUX_TENANT_PROBE_GATEWAY_URL=https://gateway.internal',
      `FLUX_BACKUP_AGE_RECIPIENTS=${await identityToRecipient(await generateX25519Identity())}`,
      '',
    ].join('\n');
    await writeFile(path.join(dir, 'flux-ops.env'), env, { mode: 0o600 });
  });

  it('passes: no finding, exit 0 (the registry read through its bind mount of ./projects.json)', async () => {
    const r = await doctor(['--compose', path.join(dir, 'compose.yml'), '--json'], dir);
    const audit = JSON.parse(r.stdout) as Audit;
    expect(audit.findings).toEqual([]);
    expect(audit).toMatchObject({ ok: true, exitCode: 0, critical: 0, warnings: 0 });
    expect(r.exitCode).toBe(0);
  });

  it('without FLUX_BACKUP_AGE_RECIPIENTS the plain offsite copies are the one finding, a warning: exit 1', async () => {
    const file = path.join(dir, 'plain.env');
    await writeFile(file, env.replace(/^FLUX_BACKUP_AGE_RECIPIENTS=.*$/m, 'FLUX_BACKUP_AGE_RECIPIENTS='), {
      mode: 0o600,
    });
    const r = await doctor(['--compose', path.join(dir, 'compose.yml'), '--env-file', file, '--json'], dir);
    const audit = JSON.parse(r.stdout) as Audit;
    expect(audit.findings).toEqual([
      expect.objectContaining({ severity: 'warning', code: 'offsite_unencrypted' }),
    ]);
    expect(r.exitCode).toBe(1);
  });

  it('the same with an admin token beside: warnings only, exit 1', async () => {
    const file = path.join(dir, 'with-admin.env');
    await writeFile(file, `${env}FLUX_API_TOKENS=${makeToken('ops', ['admin']).entry}:${TODAY}\n`, {
      mode: 0o600,
    });
    const r = await doctor(['--compose', path.join(dir, 'compose.yml'), '--env-file', file, '--json'], dir);
    const audit = JSON.parse(r.stdout) as Audit;
    expect(audit.findings.map((f) => f.code).sort()).toEqual(['token_admin']);
    expect(r.exitCode).toBe(1);
  });

  it('the same, but the cluster URL says sslmode=require: its registry finding is critical', async () => {
    const file = path.join(dir, 'require.env');
    await writeFile(
      file,
      `${env}FLUX_SHARED_POSTGRES_URL=postgres://flux@db.example.com/flux?sslmode=require\n`,
      { mode: 0o600 },
    );
    const r = await doctor(['--compose', path.join(dir, 'compose.yml'), '--env-file', file, '--json'], dir);
    const audit = JSON.parse(r.stdout) as Audit;
    const weak = audit.findings;
    expect(weak).toEqual([expect.objectContaining({ severity: 'critical', code: 'pg_sslmode_weak' })]);
    expect(weak[0]!.found).toMatch(/^cluster shared-1: sslmode=require to db\.example\.com/);
    expect(r.exitCode).toBe(2);
  });
});

describe('/readyz: the cheap share of the audit as a warning', () => {
  let env: TestEnv;
  afterAll(async () => {
    await env?.cleanup();
  });

  async function readyz(
    extra: Record<string, string>,
    clusterUrl: string,
    processEnv: Record<string, string>,
  ) {
    env = env ?? (await makeTestEnv());
    const config = loadConfig({ ...env.env, ...extra });
    const rt = testRuntime(
      'restore',
      { env: { ...env.env, ...processEnv }, config },
      { clusters: [{ name: 'shared-1', url: clusterUrl, maxConcurrentDumps: 2 }] },
    );
    const fn = createRestore(rt);
    try {
      const res = await fn.app.request('/readyz');
      const body = (await res.json()) as { checks: Array<Record<string, unknown>> };
      return { status: res.status, security: body.checks.find((c) => c.name === 'security') };
    } finally {
      await fn.stop();
    }
  }

  it('a sink over http to another host, a cluster URL without verify-full, NODE_TLS_REJECT_UNAUTHORIZED=0', async () => {
    const weak = await readyz(
      { FLUX_EVENT_SINKS: '[{"url":"http://hooks.example.com/x"}]' },
      'postgres://flux@db.example.com/flux?sslmode=require',
      { NODE_TLS_REJECT_UNAUTHORIZED: '0' },
    );
    expect(weak.security).toMatchObject({
      ok: false,
      optional: true,
      warning: 'security_posture',
      findings: [
        { severity: 'critical', code: 'tls_verification_disabled' },
        { severity: 'critical', code: 'sink_plain_http' },
        { severity: 'critical', code: 'pg_sslmode_weak' },
      ],
    });
    expect(weak.security?.detail).toMatch(/flux-ops doctor --security lists the fixes/);

    const sound = await readyz(
      { FLUX_EVENT_SINKS: '[{"url":"https://hooks.example.com/x"},{"url":"http://replicate:8082/events"}]' },
      'postgres://flux@db.example.com/flux?sslmode=verify-full',
      {},
    );
    expect(sound.security).toMatchObject({ ok: true, optional: true });
    expect(sound.security).not.toHaveProperty('findings');
  });
});
