import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isAppError } from '../shared/errors.js';
import { BACKUP_OPTIONS, backupRef, PROJECT_OPTIONS, parse, projectRef, readTokenFile } from './args.js';
import { apiError, resolveEndpoint } from './http.js';

const ULID = '01JD7ZK0M8N6Q4R2S3T5V7W9XY';

function usageError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(isAppError(error) && error.code).toBe('bad_request');
    expect(isAppError(error) && error.exitCode).toBe(64);
    return (error as Error).message;
  }
  throw new Error('expected a usage error');
}

describe('parse', () => {
  it('reads short and long flags and the common ones', () => {
    const { values } = parse('backup list', ['-p', 'bloom-atelier', '--json'], PROJECT_OPTIONS);
    expect(values).toMatchObject({ project: 'bloom-atelier', json: true });
  });

  it('names the command and its help on unknown flags, missing values and stray arguments', () => {
    expect(usageError(() => parse('backup list', ['--bogus'], PROJECT_OPTIONS))).toMatch(
      /^backup list: .*--bogus.*flux-ops backup list --help/,
    );
    expect(usageError(() => parse('backup list', ['-p'], PROJECT_OPTIONS))).toMatch(/backup list: .*-p/);
    expect(usageError(() => parse('backup list', ['extra'], PROJECT_OPTIONS))).toMatch(/extra/);
  });
});

describe('projectRef', () => {
  it('takes a slug, a hash or both', () => {
    expect(projectRef('x', { project: 'bloom-atelier' }, true)).toEqual({ slug: 'bloom-atelier' });
    expect(projectRef('x', { hash: '0a1b2c3' }, true)).toEqual({ hash: '0a1b2c3' });
    expect(projectRef('x', {}, false)).toBeUndefined();
  });

  it('refuses a bad hash, a bad slug, and neither when one is required', () => {
    expect(usageError(() => projectRef('x', { hash: '0A1B2C3' }, true))).toMatch(/7 lowercase hex/);
    expect(usageError(() => projectRef('x', { hash: '0a1b2c' }, true))).toMatch(/--hash/);
    expect(usageError(() => projectRef('x', { project: 'Bad Slug' }, true))).toMatch(/-p\/--project/);
    expect(usageError(() => projectRef('x', {}, true))).toMatch(/-p <slug>/);
  });
});

describe('backupRef', () => {
  it('takes --id (ULID or UUID) or --latest', () => {
    expect(backupRef('x', { id: ULID })).toEqual({ id: ULID });
    expect(backupRef('x', { id: '550e8400-e29b-41d4-a716-446655440000' })).toEqual({
      id: '550e8400-e29b-41d4-a716-446655440000',
    });
    expect(backupRef('x', { latest: true })).toEqual({ latest: true });
  });

  it('demands exactly one, and a well-formed id', () => {
    expect(usageError(() => backupRef('x', {}))).toMatch(/--id <backupId> or --latest/);
    expect(usageError(() => backupRef('x', { id: ULID, latest: true }))).toMatch(/not both/);
    expect(usageError(() => backupRef('x', { id: '../../etc/passwd' }))).toMatch(/not a backup id/);
  });

  it('parses from argv with the backup options', () => {
    const { values } = parse('backup verify', ['--latest', '-p', 'a'], {
      ...PROJECT_OPTIONS,
      ...BACKUP_OPTIONS,
    });
    expect(backupRef('backup verify', values)).toEqual({ latest: true });
  });
});

describe('endpoint and token', () => {
  it('flags override the environment, the environment the default', () => {
    expect(resolveEndpoint({}, {})).toEqual({
      base: 'http://127.0.0.1:8080',
      baseSource: 'default',
      token: undefined,
    });
    expect(resolveEndpoint({}, { FLUX_API_BASE: 'https://ops.example/', FLUX_API_TOKEN: ' t1 ' })).toEqual({
      base: 'https://ops.example',
      baseSource: 'env',
      token: 't1',
    });
    expect(
      resolveEndpoint(
        { apiBase: 'http://10.0.0.1:9000', token: 't2' },
        { FLUX_API_BASE: 'https://x', FLUX_API_TOKEN: 't1' },
      ),
    ).toEqual({ base: 'http://10.0.0.1:9000', baseSource: 'flag', token: 't2' });
  });

  it('refuses a base that is not an http(s) URL', () => {
    expect(usageError(() => resolveEndpoint({}, { FLUX_API_BASE: 'localhost:8080' }))).toMatch(
      /FLUX_API_BASE/,
    );
    expect(usageError(() => resolveEndpoint({ apiBase: 'ftp://x' }, {}))).toMatch(/--api-base must be http/);
  });

  it('reads the token from a file, trimmed; an empty or missing file is a usage error', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'flux-cli-args-'));
    try {
      await writeFile(path.join(dir, 'token'), 'fxo_secret\n');
      await writeFile(path.join(dir, 'empty'), '\n');
      expect(readTokenFile(path.join(dir, 'token'), () => '')).toBe('fxo_secret');
      expect(readTokenFile('-', () => ' from-stdin\n')).toBe('from-stdin');
      expect(readTokenFile(undefined, () => 'x')).toBeUndefined();
      expect(usageError(() => readTokenFile(path.join(dir, 'empty'), () => ''))).toMatch(/is empty/);
      expect(usageError(() => readTokenFile(path.join(dir, 'nope'), () => ''))).toMatch(/ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('apiError', () => {
  const endpoint = { base: 'http://127.0.0.1:8080', baseSource: 'env' as const, token: 'fxo_secret_value' };

  it("keeps the server's {error, code} and maps the exit code from the table", () => {
    const e = apiError(
      endpoint,
      422,
      JSON.stringify({ error: 'restore failed', code: 'verify_failed', rungs: [] }),
      '/x',
    );
    expect(e.message).toBe('restore failed');
    expect(e.exitCode).toBe(1);
    expect(
      apiError(endpoint, 503, JSON.stringify({ error: 'no docker', code: 'unverifiable' }), '/x').exitCode,
    ).toBe(2);
  });

  it('says how to fix a 401 and never shows the token', () => {
    const e = apiError(
      endpoint,
      401,
      JSON.stringify({ error: 'the Bearer token is not valid', code: 'unauthorized' }),
      '/x',
    );
    expect(e.message).toMatch(/FLUX_API_TOKEN is set but the server does not accept it/);
    expect(e.message).not.toContain('fxo_secret_value');
    expect(e.exitCode).toBe(77);
    const missing = apiError(
      { ...endpoint, token: undefined },
      401,
      '{"error":"missing","code":"unauthorized"}',
      '/x',
    );
    expect(missing.message).toMatch(/Set FLUX_API_TOKEN/);
  });

  it('describes an answer that is not from flux-ops (a proxy page)', () => {
    const e = apiError(endpoint, 502, '<html>Bad Gateway</html>', '/api/ops/v1/status');
    expect(e.message).toMatch(
      /HTTP 502 from http:\/\/127.0.0.1:8080 \(from FLUX_API_BASE\).*not a flux-ops answer/,
    );
    expect(e.exitCode).toBe(69);
  });
});
