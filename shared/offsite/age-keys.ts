// The age keys of one process, from its config: the recipients new offsite copies are encrypted to
// (FLUX_BACKUP_AGE_RECIPIENTS) and the identities that open them (FLUX_BACKUP_AGE_IDENTITY_FILE). The
// identity file is read at start-up, and checked against the newest encrypted copy in the store, so a
// wrong key fails the start with the fix instead of the first restore that needs it.
import type { Config } from '../config.js';
import { AppError, isAppError } from '../errors.js';
import type { Logger } from '../log.js';
import { type AgeIdentities, isAgeHead, loadIdentities, parseRecipients, unseal } from './age.js';
import type { OffsiteObject, OffsiteStore } from './types.js';

export interface AgeKeys {
  /** Public keys every new copy is encrypted to; empty = copies are stored plain. */
  readonly recipients: readonly string[];
  /** The identities, once `load` has read them; undefined when none are configured. */
  identities(): AgeIdentities | undefined;
  /** Reads the identity file (when configured); throws with the fix. */
  load(): Promise<AgeIdentities | undefined>;
  /**
   * Start-up: the newest encrypted copy in `store` opens with these identities. A store that cannot be
   * listed now only gets a warning (readiness reports it); a copy no identity opens fails the start.
   */
  checkNewest(store: OffsiteStore | (() => OffsiteStore), log: Logger): Promise<void>;
}

export type AgeConfig = Pick<Config, 'FLUX_BACKUP_AGE_RECIPIENTS' | 'FLUX_BACKUP_AGE_IDENTITY_FILE'>;

export function ageKeysFromConfig(config: AgeConfig): AgeKeys {
  const recipients = parseRecipients(config.FLUX_BACKUP_AGE_RECIPIENTS);
  const file = config.FLUX_BACKUP_AGE_IDENTITY_FILE;
  let loaded: AgeIdentities | undefined;
  return {
    recipients,
    identities: () => loaded,
    async load() {
      if (file && !loaded) loaded = await loadIdentities(file);
      return loaded;
    },
    async checkNewest(storeOrGetter, log) {
      const identities = await this.load();
      if (!identities) return;
      const store = typeof storeOrGetter === 'function' ? storeOrGetter() : storeOrGetter;
      let newest: OffsiteObject | undefined;
      try {
        for await (const object of store.list('')) {
          if (!object.key.endsWith('.dump')) continue;
          if (!newest || object.modifiedAt > newest.modifiedAt) newest = object;
        }
      } catch (error) {
        log.warn(
          { err: error, store: store.location },
          'could not list the offsite store to check FLUX_BACKUP_AGE_IDENTITY_FILE against the newest copy',
        );
        return;
      }
      if (!newest) return;
      const label = `the newest offsite copy ${store.location}/${newest.key}`;
      let stream: import('node:stream').Readable;
      try {
        stream = await store.get(newest.key);
      } catch (error) {
        log.warn(
          { err: error, key: newest.key },
          'could not read the newest offsite copy to check the age identity',
        );
        return;
      }
      let head: Buffer = Buffer.alloc(0);
      for await (const chunk of stream) {
        head = chunk as Buffer;
        break;
      }
      stream.destroy();
      if (!isAgeHead(head)) return;
      try {
        const opened = await unseal(await store.get(newest.key), newest.sizeBytes, identities, label);
        opened.stream.destroy();
      } catch (error) {
        if (isAppError(error) && error.code === 'encryption_key_missing') {
          throw new AppError('bad_request', `${error.message} (checked at start-up)`);
        }
        throw error;
      }
      log.info(
        { key: newest.key, identities: identities.recipients.length },
        'FLUX_BACKUP_AGE_IDENTITY_FILE opens the newest encrypted offsite copy',
      );
    },
  };
}
