// The age layer against the real `age` CLI (Debian's package): what flux-ops seals the CLI opens, what
// the CLI encrypts flux-ops opens, sizes are predicted exactly, and damage, truncation, a wrong key and
// a bad config each give their own clear error.
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAppError } from '../errors.js';
import {
  ageSizeFits,
  isAgeHead,
  loadIdentities,
  parseRecipients,
  seal,
  storedSizeFits,
  unseal,
} from './age.js';

let dir: string;
let idFile: string;
let recipient: string;
let otherFile: string;

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
async function keygen(file: string): Promise<string> {
  const r = await execa('age-keygen', ['-o', file]);
  await chmod(file, 0o600);
  return /Public key: (age1\S+)/.exec(r.stderr)![1]!;
}
async function sealBytes(plain: Buffer, recipients: string[]) {
  const sealed = await seal(Readable.from([plain]), plain.length, recipients);
  const bytes = await readAll(sealed.stream);
  return { bytes, sealed };
}
async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (error) {
    return isAppError(error) ? error.code : String(error);
  }
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'flux-age-'));
  idFile = path.join(dir, 'id.txt');
  otherFile = path.join(dir, 'other.txt');
  recipient = await keygen(idFile);
  await keygen(otherFile);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('age sealing', () => {
  it.each([0, 1, 65_535, 65_536, 65_537, 300_001])(
    '%i B: the age CLI opens what flux-ops seals, to the same bytes; the stored size is predicted exactly',
    async (size) => {
      const plain = Buffer.alloc(size);
      for (let i = 0; i < size; i++) plain[i] = (i * 31) % 251;
      const { bytes, sealed } = await sealBytes(plain, [recipient]);
      expect(isAgeHead(bytes)).toBe(true);
      expect(bytes.length).toBe(sealed.storedSizeBytes);
      expect(sealed.plain()).toEqual({ sha256: sha(plain), sizeBytes: size });
      expect(ageSizeFits(bytes.length, size)).toBe(true);
      expect(storedSizeFits(bytes.length, size)).toBe(true);
      expect(ageSizeFits(bytes.length, size + 65_536)).toBe(false);
      const file = path.join(dir, `sealed-${size}.age`);
      await writeFile(file, bytes);
      const opened = await execa('age', ['-d', '-i', idFile, file], { encoding: 'buffer' });
      expect(sha(Buffer.from(opened.stdout))).toBe(sha(plain));
    },
  );

  it('flux-ops opens what the age CLI encrypts (several recipients), with the plaintext size known up front', async () => {
    const plain = Buffer.from('a pg_dump archive, as far as age knows\n'.repeat(5000));
    const src = path.join(dir, 'plain.bin');
    await writeFile(src, plain);
    const out = path.join(dir, 'cli.age');
    const other = (await execa('age-keygen', ['-y', otherFile])).stdout.trim();
    await execa('age', ['-r', other, '-r', recipient, '-o', out, src]);
    const bytes = await readFile(out);
    const opened = await unseal(
      Readable.from([bytes]),
      bytes.length,
      await loadIdentities(idFile),
      'the copy',
    );
    expect(opened.plainSizeBytes).toBe(plain.length);
    expect((await readAll(opened.stream)).equals(plain)).toBe(true);
  });

  it('a flipped byte or a truncation fails authentication (artifact_invalid); a wrong or missing key says which file to fix', async () => {
    const plain = Buffer.alloc(200_000, 7);
    const { bytes } = await sealBytes(plain, [recipient]);
    const identities = await loadIdentities(idFile);
    const flipped = Buffer.from(bytes);
    flipped[flipped.length - 1000]! ^= 1;
    const read = async (b: Buffer, ids = identities) =>
      readAll((await unseal(Readable.from([b]), b.length, ids, 'the copy')).stream);
    expect(await codeOf(read(flipped))).toBe('artifact_invalid');
    expect(await codeOf(read(bytes.subarray(0, bytes.length - 70_000)))).toBe('artifact_invalid');
    const wrong = await loadIdentities(otherFile);
    const refused = read(bytes, wrong);
    await expect(refused).rejects.toThrow(
      /no identity in FLUX_BACKUP_AGE_IDENTITY_FILE \(.*other\.txt\) opens the copy/,
    );
    expect(await codeOf(read(bytes, wrong))).toBe('encryption_key_missing');
    await expect(unseal(Readable.from([bytes]), bytes.length, undefined, 'the copy')).rejects.toThrow(
      /set FLUX_BACKUP_AGE_IDENTITY_FILE/,
    );
    // Intact, it reads whole.
    expect((await read(bytes)).equals(plain)).toBe(true);
  });
});

describe('age config', () => {
  it('recipients: several, deduplicated; a typo or a secret key is refused by its position, never echoed whole', async () => {
    const other = (await execa('age-keygen', ['-y', otherFile])).stdout.trim();
    expect(parseRecipients(` ${recipient}, ${other}\n${recipient}`)).toEqual([recipient, other]);
    expect(parseRecipients('')).toEqual([]);
    expect(parseRecipients(undefined)).toEqual([]);
    expect(() => parseRecipients(`${recipient},age1notakey`)).toThrow(
      /entry 2 \("age1notakey"\) is not an age recipient/,
    );
    const secret = (await readFile(idFile, 'utf8')).split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-'))!;
    let message = '';
    try {
      parseRecipients(secret);
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/entry 1 is a secret key .*age-keygen -y/);
    expect(message).not.toContain(secret.slice(15));
  });

  it('identity files: missing, readable by others, empty or not age keys are refused with the fix; the secret never shows', async () => {
    await expect(loadIdentities(path.join(dir, 'none.txt'))).rejects.toThrow(
      /does not exist: .*age-keygen -o/,
    );
    const loose = path.join(dir, 'loose.txt');
    await writeFile(loose, await readFile(idFile), { mode: 0o644 });
    await chmod(loose, 0o644);
    await expect(loadIdentities(loose)).rejects.toThrow(/readable by others \(mode 644\): chmod 600/);
    const empty = path.join(dir, 'empty.txt');
    await writeFile(empty, '# only a comment\n\n', { mode: 0o600 });
    await expect(loadIdentities(empty)).rejects.toThrow(/holds no identity/);
    const garbage = path.join(dir, 'garbage.txt');
    await writeFile(
      garbage,
      'AGE-SECRET-KEY-1NOTAKEYATALLXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n',
      { mode: 0o600 },
    );
    const bad = await loadIdentities(garbage).catch((e: Error) => e);
    expect((bad as Error).message).toMatch(/key line 1 is not an age identity/);
    expect((bad as Error).message).not.toContain('NOTAKEY');
    const ok = await loadIdentities(idFile);
    expect(ok.recipients).toEqual([recipient]);
  });
});
