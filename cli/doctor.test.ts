import { createHash } from 'node:crypto';
import { chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, loadConfig } from '../shared/config.js';
import { RUN_AS_UID } from '../shared/errors.js';
import {
  chooseProfile,
  dirFindings,
  findingsOfReadyz,
  renderFindings,
  secretFindings,
  tlsFindings,
} from './doctor.js';

let root: string;
const TOKEN = 'fxo_doctor_test_token';
const sha = createHash('sha256').update(TOKEN).digest('hex');

function config(
  extra: Record<string, string> = {},
  profile: 'production' | 'embedded' = 'production',
): Config {
  return loadConfig(
    {
      FLUX_BACKUPS_LOCAL_DIR: path.join(root, 'local'),
      FLUX_BACKUPS_OFFSITE_DIR: path.join(root, 'offsite'),
      FLUX_STATE_DIR: path.join(root, 'state'),
      ...extra,
    },
    { profile },
  );
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'flux-doctor-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('dirFindings', () => {
  it('passes uid 1001, warns for this user and a missing dir, fails another owner', async () => {
    await mkdir(path.join(root, 'local'));
    await mkdir(path.join(root, 'offsite'));
    const uid = process.getuid?.() ?? 0;
    if (uid === 0) await chown(path.join(root, 'local'), RUN_AS_UID, RUN_AS_UID);
    const byVar = Object.fromEntries((await dirFindings(config(), uid)).map((f) => [f.name, f]));
    if (uid === 0) expect(byVar.FLUX_BACKUPS_LOCAL_DIR).toMatchObject({ status: 'ok' });
    expect(byVar.FLUX_BACKUPS_OFFSITE_DIR).toMatchObject({ status: uid === RUN_AS_UID ? 'ok' : 'warn' });
    expect(byVar.FLUX_STATE_DIR).toMatchObject({
      status: 'warn',
      detail: expect.stringMatching(/does not exist yet/),
    });
    // Seen from a third uid, a dir owned by neither 1001 nor the caller is a failure with the chown fix.
    const other = Object.fromEntries((await dirFindings(config(), 4242)).map((f) => [f.name, f]));
    if (uid !== RUN_AS_UID) {
      expect(other.FLUX_BACKUPS_OFFSITE_DIR).toMatchObject({
        status: 'fail',
        detail: expect.stringMatching(
          /owned by uid \d+, but the functions run as uid 1001: run chown -R 1001:1001 /,
        ),
      });
    }
  });

  it('does not stat an S3 offsite store', async () => {
    const findings = await dirFindings(
      config({
        FLUX_BACKUPS_OFFSITE_DIR: 's3://bucket/x',
        FLUX_S3_ACCESS_KEY_ID: 'a',
        FLUX_S3_SECRET_ACCESS_KEY: 'b',
      }),
      0,
    );
    expect(findings.find((f) => f.name === 'FLUX_BACKUPS_OFFSITE_DIR')).toMatchObject({ status: 'ok' });
  });
});

describe('tlsFindings', () => {
  it('counts certificates in readable PEM files and fails unreadable or non-PEM ones', async () => {
    const pem = path.join(root, 'ca.pem');
    await writeFile(pem, '-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n');
    const junk = path.join(root, 'junk.pem');
    await writeFile(junk, 'hello');
    expect(await tlsFindings({ NODE_EXTRA_CA_CERTS: pem })).toEqual([
      expect.objectContaining({ name: 'NODE_EXTRA_CA_CERTS', status: 'ok', detail: `${pem}: 1 certificate` }),
    ]);
    expect(await tlsFindings({ FLUX_PROBE_CA_FILE: junk })).toEqual([
      expect.objectContaining({
        name: 'FLUX_PROBE_CA_FILE',
        status: 'fail',
        detail: expect.stringMatching(/no PEM certificate/),
      }),
    ]);
    expect((await tlsFindings({ NODE_EXTRA_CA_CERTS: path.join(root, 'nope.pem') }))[0]).toMatchObject({
      status: 'fail',
    });
    expect(await tlsFindings({})).toEqual([expect.objectContaining({ name: 'trust', status: 'ok' })]);
  });
});

describe('secretFindings', () => {
  it('counts tokens and secrets, never shows them, and checks the CLI token by hash', () => {
    const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
    const good = secretFindings(
      config({ FLUX_API_TOKENS: `ops:${sha}:admin`, FLUX_WEBHOOK_SECRETS: secret }),
      TOKEN,
    );
    expect(good.map((f) => [f.name, f.status])).toEqual([
      ['FLUX_API_TOKENS', 'ok'],
      ['FLUX_WEBHOOK_SECRETS', 'ok'],
      ['FLUX_API_TOKEN', 'ok'],
    ]);
    const text = JSON.stringify(good);
    for (const s of [TOKEN, sha, secret]) expect(text).not.toContain(s);
    const bad = secretFindings(config(), 'another');
    expect(bad.map((f) => [f.name, f.status])).toEqual([
      ['FLUX_API_TOKENS', 'fail'],
      ['FLUX_WEBHOOK_SECRETS', 'fail'],
    ]);
    // The all-in-one signs its loopback events itself, and on loopback makes a dev token: fine there.
    expect(secretFindings(config({}, 'embedded'), undefined).map((f) => f.status)).toEqual([
      'ok',
      'ok',
      'warn',
    ]);
    // Not on a wildcard bind: no dev token is made there.
    expect(
      secretFindings(config({ FLUX_HOST: '0.0.0.0' }, 'embedded'), undefined).map((f) => f.status),
    ).toEqual(['fail', 'ok', 'warn']);
  });
});

describe('findingsOfReadyz and renderFindings', () => {
  it('turns checks into findings (optional ones warn) and lists what to fix', () => {
    const findings = findingsOfReadyz('dump', {
      ok: false,
      checks: [
        {
          name: 'tool:pg_dump',
          ok: false,
          detail: 'pg_dump not found on PATH of this process: install postgresql-client',
        },
        { name: 'docker', ok: false, optional: true, detail: 'no engine' },
        { name: 'registry', ok: true, detail: '2 projects' },
      ],
    });
    expect(findings.map((f) => f.status)).toEqual(['fail', 'warn', 'ok']);
    const text = renderFindings(findings);
    expect(text.split('\n')).toEqual([
      'dump  (needs attention)',
      '  FAIL  tool:pg_dump: pg_dump not found on PATH of this process: install postgresql-client',
      '  warn  docker: no engine',
      '  ok    registry: 2 projects',
      '',
      'to fix (1):',
      '  1. dump tool:pg_dump: pg_dump not found on PATH of this process: install postgresql-client',
    ]);
    expect(renderFindings(findings.slice(2)).endsWith('all good')).toBe(true);
  });
});

describe('chooseProfile', () => {
  const none = () => false;
  it("takes --embedded, and npm start's ./.flux-data when no data variable is set", () => {
    expect(chooseProfile(true, {}, '/w', none).profile).toBe('embedded');
    const beside = chooseProfile(false, {}, '/w', (p) => p === '/w/.flux-data');
    expect(beside).toEqual({
      profile: 'embedded',
      why: 'found ./.flux-data, as npm start makes it; --embedded says so explicitly',
    });
  });

  it('keeps production when a data variable is set, and says to add --embedded when its dirs are absent', () => {
    const set = chooseProfile(false, { FLUX_STATE_DIR: '/data/state' }, '/w', () => true);
    expect(set.profile).toBe('production');
    const absent = chooseProfile(false, {}, '/w', none);
    expect(absent.profile).toBe('production');
    expect(absent.why).toBe(
      "/srv/flux/state does not exist here; for npm start's data (./.flux-data), run flux-ops doctor --embedded",
    );
    expect(chooseProfile(false, {}, '/w', (p) => p === '/srv/flux/state').why).toBe(
      'the image and compose defaults',
    );
  });
});

describe('the day a token or webhook secret was made (for doctor --security)', () => {
  const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;

  it('id:sha:scopes:YYYY-MM-DD gives the token its created day; a secret keeps its suffix out of the key', () => {
    const c = config({
      FLUX_API_TOKENS: `ci:${sha}:backups:read+verify:2026-01-02,ops:${sha.replace(/^./, 'e')}:admin`,
      FLUX_WEBHOOK_SECRETS: `${secret}:2026-01-02`,
    });
    expect(c.FLUX_API_TOKENS).toEqual([
      { id: 'ci', sha256: sha, scopes: ['backups:read', 'verify'], created: '2026-01-02' },
      { id: 'ops', sha256: sha.replace(/^./, 'e'), scopes: ['admin'] },
    ]);
    // What signs and verifies is the secret itself, never its date.
    expect(c.FLUX_WEBHOOK_SECRETS).toEqual([secret]);
    expect(c.FLUX_SECRET_MAX_AGE).toBe('90d');
  });

  it('a day that is not a past calendar day is refused, naming the token or the secret', () => {
    expect(() => config({ FLUX_API_TOKENS: `ci:${sha}:backups:read:2026-02-30` })).toThrow(
      /token "ci" says it was made on 2026-02-30, which is no past calendar day/,
    );
    expect(() => config({ FLUX_WEBHOOK_SECRETS: `${secret}:2999-01-01` })).toThrow(
      /secret #1 says it was made on 2999-01-01/,
    );
    expect(() => config({ FLUX_SECRET_MAX_AGE: 'soon' })).toThrow(/FLUX_SECRET_MAX_AGE/);
  });
});
