// Manifest authentication: the manifest's form of record-auth.ts (HMAC-SHA256 over its canonical JSON under
// FLUX_MANIFEST_SECRETS, the first key tags, any verifies), kept for its callers.
import { type Authenticity, authenticateRecord, tagRecord } from './record-auth.js';
import { type Manifest, ManifestSchema } from './records.js';

export { canonicalJson } from './record-auth.js';

export type ManifestAuthenticity = Authenticity;

/** The manifest with its tag under the first key; unchanged when no key is configured. */
export function signManifest(manifest: Manifest, secrets: readonly string[]): Manifest {
  return tagRecord('manifest', ManifestSchema, manifest, secrets);
}

export function authenticateManifest(manifest: Manifest, secrets: readonly string[]): ManifestAuthenticity {
  return authenticateRecord('manifest', ManifestSchema, manifest, secrets);
}
