import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, destroyCa, type TestCa } from '../../test/support/tls.js';
import { loadTrust, parsePemBundle } from './trust.js';

describe('loadTrust', () => {
  let a: TestCa;
  let b: TestCa;
  let c: TestCa;
  let bundle: string;

  beforeAll(async () => {
    [a, b, c] = await Promise.all([createCa('CA a'), createCa('CA b'), createCa('CA c')]);
    bundle = path.join(b.dir, 'bundle.pem');
    await writeFile(bundle, `# private CAs\n${b.certPem}\n${c.certPem}`);
  });

  afterAll(async () => {
    await Promise.all([a, b, c].map((ca) => ca && destroyCa(ca)));
  });

  it('is the system roots alone when nothing extra is configured', () => {
    const trust = loadTrust({ env: {} });
    expect(trust.ca).toEqual(tls.rootCertificates);
    expect(trust.sources).toEqual([{ name: 'system', certificates: tls.rootCertificates.length }]);
  });

  it('appends NODE_EXTRA_CA_CERTS then FLUX_PROBE_CA_FILE to the roots (an explicit ca replaces them)', () => {
    const trust = loadTrust({ env: { NODE_EXTRA_CA_CERTS: a.certPath }, caFile: bundle });
    const roots = tls.rootCertificates.length;
    expect(trust.ca.slice(0, roots)).toEqual(tls.rootCertificates);
    expect(trust.ca.slice(roots).map((p) => p.trim())).toEqual(
      [a.certPem, b.certPem, c.certPem].map((p) => p.trim()),
    );
    expect(trust.sources).toEqual([
      { name: 'system', certificates: roots },
      { name: 'NODE_EXTRA_CA_CERTS', path: a.certPath, certificates: 1 },
      { name: 'FLUX_PROBE_CA_FILE', path: bundle, certificates: 2 },
    ]);
  });

  it('refuses an unreadable or empty CA file, naming the variable', async () => {
    expect(() => loadTrust({ env: {}, caFile: path.join(a.dir, 'missing.pem') })).toThrow(
      expect.objectContaining({
        code: 'config_invalid',
        message: expect.stringContaining('FLUX_PROBE_CA_FILE='),
      }),
    );
    const empty = path.join(a.dir, 'empty.pem');
    await writeFile(empty, 'not a certificate\n');
    expect(() => loadTrust({ env: { NODE_EXTRA_CA_CERTS: empty } })).toThrow(
      expect.objectContaining({
        code: 'config_invalid',
        message: expect.stringContaining('NODE_EXTRA_CA_CERTS='),
      }),
    );
  });

  it('rejects a PEM block that does not parse', () => {
    const broken = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
    expect(() => parsePemBundle(broken, 'x')).toThrow(/certificate #1 does not parse/);
  });
});
