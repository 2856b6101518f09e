/** Patch application: RFC 7386 JSON merge patch and RFC 6902 JSON patch. */

export class PatchError extends Error {
  override name = 'PatchError';
  constructor(
    message: string,
    /** HTTP status the apiserver answers with: 422 for a failed `test`/bad path, 400 for a malformed patch. */
    readonly httpStatus: number,
  ) {
    super(message);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * RFC 7386: objects merge recursively, `null` deletes, everything else (arrays included) replaces.
 * Strategic-merge patches are applied the same way, which is exact for metadata maps and for the
 * status fields the node agent touches (lists are replaced rather than merged by key).
 */
export function applyMergePatch(target: unknown, patch: unknown): unknown {
  if (!isPlainObject(patch)) return structuredClone(patch);
  const out: Record<string, unknown> = isPlainObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (k.startsWith('$')) continue; // strategic-merge directives ($patch, $retainKeys, …)
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}

interface JsonPatchOp {
  op: string;
  path: string;
  from?: string;
  value?: unknown;
}

function parsePointer(pointer: string): string[] {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) throw new PatchError(`invalid JSON pointer "${pointer}"`, 400);
  return pointer
    .slice(1)
    .split('/')
    .map((t) => t.replaceAll('~1', '/').replaceAll('~0', '~'));
}

function parentOf(doc: unknown, tokens: string[], pointer: string): { parent: unknown; key: string } {
  let cur = doc;
  for (const t of tokens.slice(0, -1)) {
    if (Array.isArray(cur)) cur = cur[Number(t)];
    else if (isPlainObject(cur)) cur = cur[t];
    else cur = undefined;
    if (cur === undefined) throw new PatchError(`doc is missing path: "${pointer}"`, 422);
  }
  const key = tokens[tokens.length - 1];
  if (key === undefined) throw new PatchError(`cannot patch the document root with "${pointer}"`, 422);
  return { parent: cur, key };
}

function getAt(doc: unknown, pointer: string): unknown {
  let cur = doc;
  for (const t of parsePointer(pointer)) {
    if (Array.isArray(cur)) cur = cur[Number(t)];
    else if (isPlainObject(cur)) cur = cur[t];
    else cur = undefined;
    if (cur === undefined) throw new PatchError(`doc is missing path: "${pointer}"`, 422);
  }
  return cur;
}

function removeAt(doc: unknown, pointer: string): unknown {
  const { parent, key } = parentOf(doc, parsePointer(pointer), pointer);
  if (Array.isArray(parent)) {
    const i = Number(key);
    if (!Number.isInteger(i) || i < 0 || i >= parent.length) throw new PatchError(`doc is missing path: "${pointer}"`, 422);
    return parent.splice(i, 1)[0];
  }
  if (isPlainObject(parent) && Object.hasOwn(parent, key)) {
    const v = parent[key];
    delete parent[key];
    return v;
  }
  throw new PatchError(`doc is missing path: "${pointer}"`, 422);
}

function addAt(doc: unknown, pointer: string, value: unknown, replace: boolean): unknown {
  const tokens = parsePointer(pointer);
  if (tokens.length === 0) return structuredClone(value);
  const { parent, key } = parentOf(doc, tokens, pointer);
  if (Array.isArray(parent)) {
    const i = key === '-' ? parent.length : Number(key);
    if (!Number.isInteger(i) || i < 0 || i > parent.length || (replace && i >= parent.length)) {
      throw new PatchError(`doc is missing path: "${pointer}"`, 422);
    }
    parent.splice(i, replace ? 1 : 0, structuredClone(value));
  } else if (isPlainObject(parent)) {
    if (replace && !Object.hasOwn(parent, key)) throw new PatchError(`doc is missing path: "${pointer}"`, 422);
    parent[key] = structuredClone(value);
  } else {
    throw new PatchError(`doc is missing path: "${pointer}"`, 422);
  }
  return doc;
}

/** RFC 6902 (`add`, `remove`, `replace`, `move`, `copy`, `test`), all-or-nothing. */
export function applyJsonPatch(target: unknown, ops: unknown): unknown {
  if (!Array.isArray(ops)) throw new PatchError('json patch must be an array of operations', 400);
  let doc = structuredClone(target);
  for (const raw of ops as JsonPatchOp[]) {
    if (!isPlainObject(raw) || typeof raw.op !== 'string' || typeof raw.path !== 'string') {
      throw new PatchError(`invalid json patch operation ${JSON.stringify(raw)}`, 400);
    }
    switch (raw.op) {
      case 'add':
        doc = addAt(doc, raw.path, raw.value, false);
        break;
      case 'replace':
        doc = addAt(doc, raw.path, raw.value, true);
        break;
      case 'remove':
        removeAt(doc, raw.path);
        break;
      case 'move': {
        const v = removeAt(doc, raw.from ?? '');
        doc = addAt(doc, raw.path, v, false);
        break;
      }
      case 'copy':
        doc = addAt(doc, raw.path, getAt(doc, raw.from ?? ''), false);
        break;
      case 'test':
        if (JSON.stringify(getAt(doc, raw.path)) !== JSON.stringify(raw.value)) {
          throw new PatchError(`testing value ${raw.path} failed`, 422);
        }
        break;
      default:
        throw new PatchError(`Unexpected kind: ${raw.op}`, 400);
    }
  }
  return doc;
}
