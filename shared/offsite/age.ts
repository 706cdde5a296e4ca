// Offsite copies encrypted in the age format (age-encryption.org/v1), so an operator can open any copy
// with the plain `age` CLI and no flux-ops. Writers hold recipients only (public keys,
// FLUX_BACKUP_AGE_RECIPIENTS); readers hold identities (FLUX_BACKUP_AGE_IDENTITY_FILE). Everything
// streams: memory stays at a few age chunks (64 KiB each) whatever the dump's size.
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { type Readable, Transform } from 'node:stream';
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

// The header (recipient stanzas and MAC) comes from the age library; the payload, where all the bytes
// are, is the spec's STREAM construction on Node's native ChaCha20-Poly1305, several times faster than
// the library's JavaScript cipher. The CLI interop tests (age.test.ts) hold the two to the same format.
const PAYLOAD_LABEL = Buffer.from('payload');

function streamKeyOf(fileKey: Uint8Array, nonce: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', fileKey, nonce, PAYLOAD_LABEL, 32));
}

/** The STREAM nonce of chunk `counter`: an 11-byte big-endian counter, then 1 for the last chunk. */
function chunkNonce(counter: number, last: boolean): Buffer {
  const nonce = Buffer.alloc(12);
  nonce.writeUIntBE(counter, 5, 6);
  nonce[11] = last ? 1 : 0;
  return nonce;
}

/** The header of a file for `recipients`, and the file key it wraps (for the payload). */
async function headerFor(recipients: readonly string[]): Promise<{ header: Buffer; fileKey: Uint8Array }> {
  const encrypter = new Encrypter();
  for (const r of recipients) encrypter.addRecipient(r);
  let fileKey: Uint8Array | undefined;
  // Adds no stanza: it only sees the file key the real recipients' stanzas wrap.
  encrypter.addRecipient({
    wrapFileKey(key: Uint8Array) {
      fileKey = Uint8Array.from(key);
      return [];
    },
  });
  const empty = await encrypter.encrypt(new Uint8Array(0));
  // An empty file is its header, a 16-byte nonce and one empty chunk (its 16-byte tag): this payload
  // is discarded, and ours gets a nonce (so a stream key) of its own.
  return { header: Buffer.from(empty.subarray(0, empty.length - AGE_NONCE - AGE_TAG)), fileKey: fileKey! };
}

/** `source` (of `plainSize` bytes) encrypted to `recipients`, streaming. */
export async function seal(
  source: Readable,
  plainSize: number,
  recipients: readonly string[],
): Promise<SealedStream> {
  if (recipients.length === 0) throw new AppError('internal', 'sealing needs at least one recipient');
  const { header, fileKey } = await headerFor(recipients);
  const nonce = randomBytes(AGE_NONCE);
  const key = streamKeyOf(fileKey, nonce);
  const hash = createHash('sha256');
  let plainBytes = 0;
  let counter = 0;
  let held: Buffer[] = [];
  let heldBytes = 0;
  const encryptChunk = (data: Buffer, last: boolean): Buffer => {
    const cipher = createCipheriv('chacha20-poly1305', key, chunkNonce(counter++, last), {
      authTagLength: AGE_TAG,
    });
    return Buffer.concat([cipher.update(data), cipher.final(), cipher.getAuthTag()]);
  };
  const sealer = new Transform({
    highWaterMark: STREAM_CHUNK_BYTES,
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      plainBytes += chunk.length;
      held.push(chunk);
      heldBytes += chunk.length;
      // A full chunk leaves only once more follows: the last chunk (full or not) is the flush's.
      if (heldBytes <= AGE_CHUNK) return callback();
      let all = Buffer.concat(held);
      const out: Buffer[] = [];
      while (all.length > AGE_CHUNK) {
        out.push(encryptChunk(all.subarray(0, AGE_CHUNK), false));
        all = all.subarray(AGE_CHUNK);
      }
      held = [all];
      heldBytes = all.length;
      callback(null, Buffer.concat(out));
    },
    flush(callback) {
      callback(null, encryptChunk(Buffer.concat(held), true));
    },
  });
  sealer.push(Buffer.concat([header, nonce]));
  source.once('error', (error) => sealer.destroy(error));
  let digest: string | undefined;
  return {
    stream: source.pipe(sealer),
    storedSizeBytes: header.length + payloadSize(plainSize),
    plain() {
      digest ??= hash.digest('hex');
      return { sha256: digest, sizeBytes: plainBytes };
    },
  };
}

export interface OpenedCopy {
  /** The plaintext. Fails (`artifact_invalid`) at the first chunk whose tag does not authenticate. */
  stream: Readable;
  /** The plaintext size, from the stored size (known once the header was read). */
  plainSizeBytes: number;
}

/** The plaintext size of an age payload (nonce included) of `payloadBytes`, or -1 when none fits. */
function plainSizeOf(payloadBytes: number): number {
  const sealed = payloadBytes - AGE_NONCE;
  if (sealed < AGE_TAG) return -1;
  const chunks = Math.ceil(sealed / (AGE_CHUNK + AGE_TAG));
  const last = sealed - (chunks - 1) * (AGE_CHUNK + AGE_TAG);
  if (last < AGE_TAG || (last === AGE_TAG && chunks > 1)) return -1;
  return sealed - chunks * AGE_TAG;
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
  const invalid = (why: string) =>
    new AppError(
      'artifact_invalid',
      `${label} fails age authentication (${why}): the stored copy was altered or truncated`,
      { details: { reason: 'artifact_invalid' } },
    );
  let headerBytes = -1;
  /** The file key, from the header; the stream key once the payload's nonce has been read. */
  let pendingKey: Uint8Array | undefined;
  let key: Buffer | undefined;
  let counter = 0;
  let buffered: Buffer = Buffer.alloc(0);
  let plainSizeBytes = -1;
  let ready!: { resolve: () => void; reject: (error: unknown) => void };
  const headerRead = new Promise<void>((resolve, reject) => {
    ready = { resolve, reject };
  });
  const decryptChunk = (data: Buffer, last: boolean): Buffer => {
    const decipher = createDecipheriv('chacha20-poly1305', key!, chunkNonce(counter++, last), {
      authTagLength: AGE_TAG,
    });
    decipher.setAuthTag(data.subarray(data.length - AGE_TAG));
    try {
      return Buffer.concat([decipher.update(data.subarray(0, data.length - AGE_TAG)), decipher.final()]);
    } catch {
      throw invalid(`chunk ${counter - 1}`);
    }
  };
  async function openHeader(): Promise<void> {
    const end = buffered.indexOf('\n--- ');
    const eol = end < 0 ? -1 : buffered.indexOf(0x0a, end + 1);
    if (eol < 0) {
      if (buffered.length > AGE_HEADER_MAX) throw invalid('no header end within 64 KiB');
      return;
    }
    const header = buffered.subarray(0, eol + 1);
    let fileKey: Uint8Array;
    try {
      fileKey = await identities!.decrypter().decryptHeader(header);
    } catch (error) {
      const message = (error as Error).message;
      if (/no identity matched/i.test(message)) {
        throw new AppError(
          'encryption_key_missing',
          `no identity in FLUX_BACKUP_AGE_IDENTITY_FILE (${identities!.file}) opens ${label}: it is encrypted to other recipients; ` +
            'add the secret key of one of the recipients its receipt names to that file',
          { details: { reason: 'encryption_key_missing' } },
        );
      }
      throw new AppError('artifact_invalid', `${label} is not a valid age file (${message})`, {
        details: { reason: 'artifact_invalid' },
      });
    }
    headerBytes = header.length;
    plainSizeBytes = plainSizeOf(storedSize - headerBytes);
    buffered = buffered.subarray(headerBytes);
    pendingKey = fileKey;
    ready.resolve();
  }
  const takeNonce = () => {
    if (key || !pendingKey || buffered.length < AGE_NONCE) return;
    key = streamKeyOf(pendingKey, buffered.subarray(0, AGE_NONCE));
    buffered = buffered.subarray(AGE_NONCE);
  };
  const opener = new Transform({
    highWaterMark: STREAM_CHUNK_BYTES,
    transform(chunk: Buffer, _encoding, callback) {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const step = async () => {
        if (headerBytes < 0) await openHeader();
        takeNonce();
        if (!key) return undefined;
        const out: Buffer[] = [];
        // A chunk is known not to be the last only once more bytes follow it.
        while (buffered.length > AGE_CHUNK + AGE_TAG) {
          out.push(decryptChunk(buffered.subarray(0, AGE_CHUNK + AGE_TAG), false));
          buffered = buffered.subarray(AGE_CHUNK + AGE_TAG);
        }
        return out.length > 0 ? Buffer.concat(out) : undefined;
      };
      step().then(
        (out) => callback(null, out),
        (error) => callback(error),
      );
    },
    flush(callback) {
      try {
        if (headerBytes < 0) throw invalid('the file ends inside its header');
        takeNonce();
        if (!key) throw invalid('the file ends before its payload');
        if (buffered.length < AGE_TAG) throw invalid('the last chunk is cut short');
        if (buffered.length === AGE_TAG && counter > 0) throw invalid('an empty last chunk after others');
        callback(null, decryptChunk(buffered, true));
      } catch (error) {
        callback(error as Error);
      }
    },
  });
  opener.once('error', (error) => ready.reject(error));
  source.once('error', (error) => opener.destroy(error));
  opener.once('close', () => source.destroy());
  source.pipe(opener);
  try {
    await headerRead;
  } catch (error) {
    opener.destroy();
    throw error;
  }
  return { stream: opener, plainSizeBytes };
}
