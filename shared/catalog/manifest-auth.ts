// Manifest authentication. A manifest holds the facts verify and restore hold a backup to (size, SHA-256,
// row counts, sequences); stored offsite, anyone who can write to the store could edit them. dump tags
// each manifest with HMAC-SHA256 over its canonical JSON under the first FLUX_MANIFEST_SECRETS key; a
// reader holding any of the keys (rotation: add the new key first, keep the old ones) tells the manifest
// dump wrote from an edited one. Without keys nothing is tagged and nothing can be told apart.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { type Manifest, ManifestSchema } from './records.js';

export const MANIFEST_AUTH_ALG = 'hmac-sha256';

/** JSON with object keys sorted at every level and undefined members left out: one text per value. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(',')}]`;
  if (value && typeof value === 'object') {
    const members = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`);
    return `{${members.join(',')}}`;
  }
  return JSON.stringify(value);
}

function keyBytes(secret: string): Buffer {
  return Buffer.from(secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret, 'base64');
}

function tagOf(manifest: Manifest, secret: string): Buffer {
  // The parsed form (defaults applied), without the tag itself: what any reader parses back.
  const { auth: _auth, ...facts } = ManifestSchema.parse(manifest);
  return createHmac('sha256', keyBytes(secret)).update(canonicalJson(facts)).digest();
}

/** The manifest with its tag under the first key; unchanged when no key is configured. */
export function signManifest(manifest: Manifest, secrets: readonly string[]): Manifest {
  const [first] = secrets;
  if (!first) return manifest;
  return { ...manifest, auth: { alg: MANIFEST_AUTH_ALG, tag: tagOf(manifest, first).toString('base64') } };
}

/**
 * authentic: a key's tag matches; forged: it carries a tag no key gives (edited, or tagged with a key
 * this process lacks); unsigned: it carries none; unchecked: no key is configured here.
 */
export type ManifestAuthenticity = 'authentic' | 'forged' | 'unsigned' | 'unchecked';

export function authenticateManifest(manifest: Manifest, secrets: readonly string[]): ManifestAuthenticity {
  if (secrets.length === 0) return 'unchecked';
  if (!manifest.auth) return 'unsigned';
  const given = Buffer.from(manifest.auth.tag, 'base64');
  const matches = secrets.some((secret) => {
    const expected = tagOf(manifest, secret);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
  return matches ? 'authentic' : 'forged';
}
