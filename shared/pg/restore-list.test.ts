import { describe, expect, it } from 'vitest';
import { excludeEntries, extensionEntries } from './restore-list.js';

const LIST = [
  ';',
  '; Selected TOC Entries:',
  ';',
  '7; 2615 16392 SCHEMA - t_550e8400e29b_api postgres',
  '217; 1259 16394 TABLE t_550e8400e29b_api customers postgres',
  '8; 2615 16500 SCHEMA - t_550e8400e29b_api_old postgres',
  '3366; 3256 16419 POLICY t_550e8400e29b_api orders orders_owner postgres',
].join('\n');

describe('excludeEntries: one schema', () => {
  it('comments out exactly the entry creating the schema', () => {
    const { list, excluded } = excludeEntries(LIST, { schemas: ['t_550e8400e29b_api'] });
    expect(excluded.schemas.t_550e8400e29b_api).toBe(1);
    const lines = list.split('\n');
    expect(lines[3]).toBe(';7; 2615 16392 SCHEMA - t_550e8400e29b_api postgres');
    expect(lines.filter((l) => !l.startsWith(';'))).toEqual([
      '217; 1259 16394 TABLE t_550e8400e29b_api customers postgres',
      '8; 2615 16500 SCHEMA - t_550e8400e29b_api_old postgres',
      '3366; 3256 16419 POLICY t_550e8400e29b_api orders orders_owner postgres',
    ]);
  });

  it('reports when there is no such entry', () => {
    expect(
      excludeEntries(LIST, { schemas: ['t_ffffffffffff_api'] }).excluded.schemas.t_ffffffffffff_api,
    ).toBe(0);
  });
});

// As pg_dump --no-owner lists them: no owner column.
const V1_LIST = [
  ';',
  '; Selected TOC Entries:',
  ';',
  '6; 2615 16390 SCHEMA - extensions',
  '5; 2615 2200 SCHEMA - public',
  '2; 3079 16391 EXTENSION - pgcrypto',
  '3821; 0 0 COMMENT - EXTENSION pgcrypto',
  '3; 3079 16400 EXTENSION - citext',
  '217; 1259 16394 TABLE public todos',
  '3822; 0 0 COMMENT - TABLE todos',
].join('\n');

describe('extensionEntries / excludeEntries', () => {
  it('names the extensions an archive creates', () => {
    expect(extensionEntries(V1_LIST)).toEqual(['pgcrypto', 'citext']);
    expect(extensionEntries(LIST)).toEqual([]);
  });

  it('leaves out the extensions, their comments and the named schemas; nothing else', () => {
    const { list, excluded } = excludeEntries(V1_LIST, { schemas: ['extensions'], extensions: true });
    expect(excluded).toEqual({ schemas: { extensions: 1 }, extensions: 3 });
    expect(list.split('\n').filter((l) => /^\d/.test(l))).toEqual([
      '5; 2615 2200 SCHEMA - public',
      '217; 1259 16394 TABLE public todos',
      '3822; 0 0 COMMENT - TABLE todos',
    ]);
  });

  it('keeps every entry when nothing is to be left out', () => {
    expect(excludeEntries(V1_LIST, {}).list).toBe(V1_LIST);
  });
});
