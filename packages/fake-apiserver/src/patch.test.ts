import { describe, expect, it } from 'vitest';
import { applyJsonPatch, applyMergePatch, PatchError } from './patch.js';

describe('applyMergePatch (RFC 7386)', () => {
  it('merges objects, deletes on null, replaces arrays and scalars', () => {
    const target = { a: { b: 1, c: [1, 2] }, d: 'x' };
    expect(applyMergePatch(target, { a: { b: null, c: [3], e: { f: 1 } }, d: 'y' })).toEqual({ a: { c: [3], e: { f: 1 } }, d: 'y' });
    expect(target).toEqual({ a: { b: 1, c: [1, 2] }, d: 'x' });
  });

  it('ignores strategic-merge directives', () => {
    expect(applyMergePatch({ m: { a: '1' } }, { $patch: 'merge', m: { $retainKeys: ['a'], b: '2' } })).toEqual({ m: { a: '1', b: '2' } });
  });
});

describe('applyJsonPatch (RFC 6902)', () => {
  it('applies add, replace, remove, move, copy and test', () => {
    const doc = { metadata: { labels: { a: '1' } }, list: [1, 2] };
    const out = applyJsonPatch(doc, [
      { op: 'add', path: '/metadata/labels/b', value: '2' },
      { op: 'replace', path: '/metadata/labels/a', value: 'one' },
      { op: 'add', path: '/list/-', value: 3 },
      { op: 'remove', path: '/list/0' },
      { op: 'copy', from: '/metadata/labels/b', path: '/metadata/annotations' },
      { op: 'move', from: '/metadata/annotations', path: '/metadata/moved' },
      { op: 'test', path: '/list', value: [2, 3] },
      { op: 'add', path: '/metadata/labels/x~1y', value: 'slash' },
    ]);
    expect(out).toEqual({ metadata: { labels: { a: 'one', b: '2', 'x/y': 'slash' }, moved: '2' }, list: [2, 3] });
  });

  it('is all-or-nothing and reports 422 for a failed test or a missing path, 400 for a malformed patch', () => {
    const doc = { a: 1 };
    const err = (ops: unknown) => {
      try {
        applyJsonPatch(doc, ops);
      } catch (e) {
        return e as PatchError;
      }
      throw new Error('expected a PatchError');
    };
    expect(err([{ op: 'replace', path: '/a', value: 2 }, { op: 'test', path: '/a', value: 1 }]).httpStatus).toBe(422);
    expect(doc).toEqual({ a: 1 });
    expect(err([{ op: 'remove', path: '/nope' }]).httpStatus).toBe(422);
    expect(err({ op: 'add' }).httpStatus).toBe(400);
    expect(err([{ op: 'frob', path: '/a' }]).httpStatus).toBe(400);
  });
});
