// Local retention uses the one selection shared with replicate's offsite retention (shared/catalog/retention.ts).
export {
  isRetentionEnabled,
  type RetentionPolicy,
  selectForDeletion,
} from '../../shared/catalog/retention.js';
