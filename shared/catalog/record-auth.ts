// Record authentication. Manifests hold the facts verify and restore hold a backup to; receipts hold what
// was proven about it (verified, replicated, restored). Anyone who can write where they lie could edit
// them, so each carries an HMAC-SHA256 tag over its canonical JSON under the first FLUX_MANIFEST_SECRETS
// key; a reader holding any of the keys (rotation: add the new key first, keep the old ones) tells a
// record its writer made from an edited or forged one. Without keys nothing is tagged or checked.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';

export const RECORD_AUTH_ALG = 'hmac-sha256';

/** The `auth` member of every authenticated record. */
export const RecordAuthSchema = z.object({ alg: z.literal(RECORD_AUTH_ALG), tag: z.string().min(1) });
export type RecordAuth = z.infer<typeof RecordAuthSchema>;

/**
 * What a tag domain-separates: a receipt's tag is never a valid tag of another kind of record. Manifests
 * have none (their tags predate the receipts' and stay valid).
 */
export type RecordKind =
  | 'manifest'
  | 'verify-receipt'
  | 'verify-offsite-receipt'
  | 'offsite-receipt'
  | 'rehash-record'
  | 'restore-receipt';

/**
 * authentic: a key's tag matches; forged: it carries a tag no key gives (edited, or tagged with a key
 * this process lacks); unsigned: it carries none; unchecked: no key is configured here.
 */
export type Authenticity = 'authentic' | 'forged' | 'unsigned' | 'unchecked';

/** The keys a process authenticates records with, and whether untagged records are still accepted. */
export interface RecordKeys {
  secrets: readonly string[];
  /** FLUX_MANIFEST_ALLOW_UNSIGNED: records written before the keys were set stay usable. */
  allowUnsigned?: boolean;
}

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

type Tagged = { auth?: RecordAuth | undefined };

/**
 * The tag of a record: over its parsed form (defaults applied, unknown members dropped: what any reader
 * parses back), without the tag itself.
 */
function tagOf<T extends object>(
  kind: RecordKind,
  schema: z.ZodType<T> | undefined,
  record: T,
  secret: string,
): Buffer {
  const { auth: _auth, ...facts } = (schema ? schema.parse(record) : record) as Tagged;
  const prefix = kind === 'manifest' ? '' : `${kind}\n`;
  return createHmac('sha256', keyBytes(secret))
    .update(prefix + canonicalJson(facts))
    .digest();
}

/** The record with its tag under the first key; unchanged when no key is configured. */
export function tagRecord<T extends object>(
  kind: RecordKind,
  schema: z.ZodType<T> | undefined,
  record: T,
  secrets: readonly string[],
): T {
  const [first] = secrets;
  if (!first) return record;
  const tag = tagOf(kind, schema, record, first).toString('base64');
  return { ...record, auth: { alg: RECORD_AUTH_ALG, tag } };
}

export function authenticateRecord<T extends object>(
  kind: RecordKind,
  schema: z.ZodType<T> | undefined,
  record: T,
  secrets: readonly string[],
): Authenticity {
  if (secrets.length === 0) return 'unchecked';
  const { auth } = record as Tagged;
  if (!auth) return 'unsigned';
  if (typeof auth.tag !== 'string') return 'forged';
  const given = Buffer.from(auth.tag, 'base64');
  const matches = secrets.some((secret) => {
    const expected = tagOf(kind, schema, record, secret);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
  return matches ? 'authentic' : 'forged';
}

/**
 * Why a record is not to be believed under these keys, or undefined when it is: a tag no key gives is
 * never believed; a record without one only when no key is set or FLUX_MANIFEST_ALLOW_UNSIGNED says so.
 */
export function distrustOf(authenticity: Authenticity, keys: RecordKeys): string | undefined {
  if (authenticity === 'forged')
    return 'its authentication tag matches none of FLUX_MANIFEST_SECRETS: edited where it lies, or tagged with a key this process lacks';
  if (authenticity === 'unsigned' && !keys.allowUnsigned)
    return 'it carries no authentication tag while FLUX_MANIFEST_SECRETS is set (written before the keys were? set FLUX_MANIFEST_ALLOW_UNSIGNED=true to accept such records)';
  return undefined;
}
