// Offsite copies encrypted in the age format (age-encryption.org/v1), so an operator can open any copy
// with the plain `age` CLI and no flux-ops. Writers hold recipients only (public keys,
// FLUX_BACKUP_AGE_RECIPIENTS); readers hold identities (FLUX_BACKUP_AGE_IDENTITY_FILE). Everything
// streams: memory stays at a few age chunks (64 KiB each) whatever the dump's size.
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { Decrypter, Encrypter, identityToRecipient } from 'age-encryption';
import { STREAM_CHUNK_BYTES } from '../atomic.js';
import { AppError, errnoOf } from '../errors.js';
import type { ContentHash } from './types.js';

/** The first line of every age file: how a stored object is known to be encrypted. */
export const AGE_MAGIC = Buffer.from('age-encryption.org/v1\n');
/** The payload's chunk size (plaintext) and each chunk's tag; a 16-byte nonce leads the payload. */
const AGE_CHUNK = 64 * 1024;
const AGE_TAG = 16;
const AGE_NONCE = 16;
/** A header this long holds far more recipients than any deployment names. */
const AGE_HEADER_MAX = 64 * 1024;
/** An identity file is a few lines of keys. */
const IDENTITY_FILE_MAX = 1024 * 1024;

export const AGE_FORMAT = 'age-encryption.org/v1';

export function isAgeHead(head: Uint8Array): boolean {
  return head.length >= AGE_MAGIC.length && Buffer.from(head.subarray(0, AGE_MAGIC.length)).equals(AGE_MAGIC);
}

/** The payload size of `plainSize` bytes: nonce, then each (possibly empty final) chunk with its tag. */
function payloadSize(plainSize: number): number {
  const chunks = Math.max(1, Math.ceil(plainSize / AGE_CHUNK));
  return AGE_NONCE + plainSize + chunks * AGE_TAG;
}

/**
 * Whether an object of `storedSize` bytes can be an age encryption of `plainSize` bytes (a header of
 * plausible length before the payload): the cheap listing check, as size equality is for a plain copy.
 */
export function ageSizeFits(storedSize: number, plainSize: number): boolean {
  const header = storedSize - payloadSize(plainSize);
  return header > AGE_MAGIC.length && header <= AGE_HEADER_MAX;
}

/** Whether a stored object's size is consistent with the manifest's size, encrypted or not. */
export function storedSizeFits(storedSize: number, plainSize: number): boolean {
  return storedSize === plainSize || ageSizeFits(storedSize, plainSize);
}

/**
 * The recipients of FLUX_BACKUP_AGE_RECIPIENTS: public keys (`age1…`), separated by commas, spaces or
 * new lines. Each one is parsed by the age library now, so a typo fails at start-up and not at the
 * first copy. An empty value means no encryption.
 */
export function parseRecipients(value: string | undefined): string[] {
  const recipients = (value ?? '')
    .split(/[\s,]+/)
    .map((r) => r.trim())
    .filter(Boolean);
  recipients.forEach((recipient, index) => {
    const shown = recipient.length > 16 ? `${recipient.slice(0, 12)}…` : recipient;
    if (recipient.startsWith('AGE-SECRET-KEY-')) {
      // Never echo a private key: say where it is and what to put there instead.
      throw new AppError(
        'bad_request',
        `FLUX_BACKUP_AGE_RECIPIENTS entry ${index + 1} is a secret key (AGE-SECRET-KEY-…), not a recipient: ` +
          'put the public key there (age-keygen -y <identity file> prints it) and keep the secret key on the hosts that read copies',
      );
    }
    try {
      new Encrypter().addRecipient(recipient);
    } catch (error) {
      throw new AppError(
        'bad_request',
        `FLUX_BACKUP_AGE_RECIPIENTS entry ${index + 1} ("${shown}") is not an age recipient ` +
          `(${(error as Error).message}): use public keys as age-keygen prints them, "age1…", separated by commas`,
      );
    }
  });
  return [...new Set(recipients)];
}

export interface AgeIdentities {
  /** Where they were read from (for errors and logs; the keys themselves are never shown). */
  file: string;
  /** The public key of each identity, in file order: which recipients' copies this host can open. */
  recipients: readonly string[];
  /** A decrypter holding every identity. */
  decrypter(): Decrypter;
}

/**
 * The identities of an age identity file (as `age-keygen` writes it: `AGE-SECRET-KEY-1…` lines, `#`
 * comments, blank lines). Refused when it is missing, unreadable, readable by others than its owner,
 * or holds no key, each with the fix.
 */
export async function loadIdentities(file: string): Promise<AgeIdentities> {
  let text: string;
  try {
    const info = await stat(file);
    if (!info.isFile())
      throw new AppError('bad_request', `FLUX_BACKUP_AGE_IDENTITY_FILE ${file} is not a file`);
    if (info.size > IDENTITY_FILE_MAX) {
      throw new AppError(
        'bad_request',
        `FLUX_BACKUP_AGE_IDENTITY_FILE ${file} is ${info.size} B: not an identity file`,
      );
    }
    if ((info.mode & 0o077) !== 0) {
      throw new AppError(
        'bad_request',
        `FLUX_BACKUP_AGE_IDENTITY_FILE ${file} is readable by others (mode ${(info.mode & 0o777).toString(8)}): chmod 600 ${file}`,
      );
    }
    text = await readFile(file, 'utf8');
  } catch (error) {
    if (error instanceof AppError) throw error;
    const code = errnoOf(error);
    throw new AppError(
      'bad_request',
      code === 'ENOENT'
        ? `FLUX_BACKUP_AGE_IDENTITY_FILE ${file} does not exist: point it at the file age-keygen wrote (age-keygen -o ${file})`
        : `FLUX_BACKUP_AGE_IDENTITY_FILE ${file} cannot be read (${code ?? 'error'}): make it readable by this process's user`,
    );
  }
  const lines = text.split(/\r?\n/).map((l) => l.trim());
  const keys = lines.filter((l) => l !== '' && !l.startsWith('#'));
  if (keys.length === 0) {
    throw new AppError(
      'bad_request',
      `FLUX_BACKUP_AGE_IDENTITY_FILE ${file} holds no identity: it needs AGE-SECRET-KEY-1… lines (age-keygen -o ${file})`,
    );
  }
  const recipients: string[] = [];
  for (const [index, key] of keys.entries()) {
    try {
      if (!key.startsWith('AGE-SECRET-KEY-')) throw new Error('not an AGE-SECRET-KEY line');
      recipients.push(await identityToRecipient(key));
    } catch {
      throw new AppError(
        'bad_request',
        `FLUX_BACKUP_AGE_IDENTITY_FILE ${file}: key line ${index + 1} is not an age identity: ` +
          'the file must hold AGE-SECRET-KEY-1… lines as age-keygen writes them (passphrase-protected files are not supported)',
      );
    }
  }
  return {
    file,
    recipients,
    decrypter() {
      const d = new Decrypter();
      for (const key of keys) d.addIdentity(key);
      return d;
    },
  };
}

/** A short, stable label of a recipient for status and logs: `age1abcd…wxyz`. */
export function recipientLabel(recipient: string): string {
  return recipient.length > 20 ? `${recipient.slice(0, 9)}…${recipient.slice(-6)}` : recipient;
}

/** Passes bytes through, hashing them; `result()` once the stream has ended. */
export function hashingPassThrough(): { stream: Transform; result(): ContentHash } {
  const hash = createHash('sha256');
  let sizeBytes = 0;
  let digest: string | undefined;
  const stream = new Transform({
    highWaterMark: STREAM_CHUNK_BYTES,
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      sizeBytes += chunk.length;
      callback(null, chunk);
    },
  });
  return {
    stream,
    result() {
      digest ??= hash.digest('hex');
      return { sha256: digest, sizeBytes };
    },
  };
}

export interface SealedStream {
  /** The age file's bytes. */
  stream: Readable;
  /** Its exact size, known before a byte is read. */
  storedSizeBytes: number;
  /** What went in, once `stream` has ended. */
  plain(): ContentHash;
}

/** `source` (of `plainSize` bytes) encrypted to `recipients`, streaming. */
export async function seal(
  source: Readable,
  plainSize: number,
  recipients: readonly string[],
): Promise<SealedStream> {
  if (recipients.length === 0) throw new AppError('internal', 'sealing needs at least one recipient');
  const encrypter = new Encrypter();
  for (const r of recipients) encrypter.addRecipient(r);
  const counted = hashingPassThrough();
  source.once('error', (error) => counted.stream.destroy(error));
  const web = await encrypter.encrypt(
    Readable.toWeb(source.pipe(counted.stream)) as ReadableStream<Uint8Array>,
  );
  return {
    stream: Readable.fromWeb(web as import('node:stream/web').ReadableStream<Uint8Array>, {
      highWaterMark: 4,
    }),
    storedSizeBytes: web.size(plainSize),
    plain: counted.result,
  };
}

export interface OpenedCopy {
  /** The plaintext. Fails (`artifact_invalid`) at the first chunk whose tag does not authenticate. */
  stream: Readable;
  /** The plaintext size, from the stored size (known once the header was read). */
  plainSizeBytes: number;
}

/**
 * Decrypts an age file read from `source` (of `storedSize` bytes) with `identities`. A copy no identity
 * opens fails with `encryption_key_missing`; a damaged header or chunk with `artifact_invalid`.
 */
export async function unseal(
  source: Readable,
  storedSize: number,
  identities: AgeIdentities | undefined,
  label: string,
): Promise<OpenedCopy> {
  if (!identities) {
    source.destroy();
    throw new AppError(
      'encryption_key_missing',
      `${label} is age-encrypted and this process has no identity to open it: set FLUX_BACKUP_AGE_IDENTITY_FILE ` +
        'to a file holding the secret key of one of its recipients',
      { details: { reason: 'encryption_key_missing' } },
    );
  }
  let web: Awaited<ReturnType<Decrypter['decrypt']>> extends infer T ? T : never;
  try {
    web = await identities.decrypter().decrypt(Readable.toWeb(source) as ReadableStream<Uint8Array>);
  } catch (error) {
    source.destroy();
    const message = (error as Error).message;
    if (/no identity matched/i.test(message)) {
      throw new AppError(
        'encryption_key_missing',
        `no identity in FLUX_BACKUP_AGE_IDENTITY_FILE (${identities.file}) opens ${label}: it is encrypted to other recipients; ` +
          'add the secret key of one of the recipients its receipt names to that file',
        { details: { reason: 'encryption_key_missing' } },
      );
    }
    throw new AppError('artifact_invalid', `${label} is not a valid age file (${message})`, {
      details: { reason: 'artifact_invalid' },
    });
  }
  let plainSizeBytes: number;
  try {
    plainSizeBytes = web.size(storedSize);
  } catch {
    plainSizeBytes = -1;
  }
  const plain = Readable.fromWeb(web as import('node:stream/web').ReadableStream<Uint8Array>, {
    highWaterMark: 4,
  });
  // The library's errors ("invalid tag", "stream ended early") become the artifact error readers expect.
  const out = new Transform({
    highWaterMark: STREAM_CHUNK_BYTES,
    transform(chunk: Buffer, _encoding, callback) {
      callback(null, chunk);
    },
  });
  plain.once('error', (error) =>
    out.destroy(
      new AppError(
        'artifact_invalid',
        `${label} fails age authentication (${error.message}): the stored copy was altered or truncated`,
        {
          details: { reason: 'artifact_invalid' },
        },
      ),
    ),
  );
  out.once('close', () => plain.destroy());
  return { stream: plain.pipe(out), plainSizeBytes };
}
