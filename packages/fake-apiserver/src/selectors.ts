import type { KubeObject } from './types.js';

/** A parsed selector: true when the object matches. */
export type Matcher = (obj: KubeObject) => boolean;

export class SelectorError extends Error {
  override name = 'SelectorError';
}

type LabelRequirement =
  | { op: 'exists' | 'notexists'; key: string }
  | { op: 'eq' | 'neq'; key: string; value: string }
  | { op: 'in' | 'notin'; key: string; values: string[] };

/** Splits on commas that are not inside `( … )`, as the apiserver's lexer does. */
function splitTop(s: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  parts.push(cur);
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

const KEY = /^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$/;
const VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;

function checkKey(key: string, whole: string): string {
  if (!KEY.test(key)) throw new SelectorError(`unable to parse requirement: invalid label key "${key}" in "${whole}"`);
  return key;
}

function checkValue(value: string, whole: string): string {
  if (!VALUE.test(value)) throw new SelectorError(`unable to parse requirement: invalid label value "${value}" in "${whole}"`);
  return value;
}

function parseLabelRequirement(req: string): LabelRequirement {
  let m = /^(\S+)\s+(in|notin)\s*\((.*)\)$/.exec(req);
  if (m) {
    const values = (m[3] ?? '').split(',').map((v) => checkValue(v.trim(), req));
    return { op: m[2] === 'in' ? 'in' : 'notin', key: checkKey(m[1] ?? '', req), values };
  }
  m = /^([^=!\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(req);
  if (m) {
    return { op: m[2] === '!=' ? 'neq' : 'eq', key: checkKey(m[1] ?? '', req), value: checkValue(m[3] ?? '', req) };
  }
  if (req.startsWith('!')) return { op: 'notexists', key: checkKey(req.slice(1).trim(), req) };
  return { op: 'exists', key: checkKey(req, req) };
}

/** Parses a `labelSelector` query value (`a=b,c!=d,e in (x,y),!f`). Throws SelectorError when malformed. */
export function parseLabelSelector(selector: string): Matcher {
  const reqs = splitTop(selector).map(parseLabelRequirement);
  return (obj) => {
    const labels = obj.metadata.labels ?? {};
    return reqs.every((r) => {
      const has = Object.hasOwn(labels, r.key);
      const v = labels[r.key];
      switch (r.op) {
        case 'exists':
          return has;
        case 'notexists':
          return !has;
        case 'eq':
          return has && v === r.value;
        case 'neq':
          return !has || v !== r.value;
        case 'in':
          return has && r.values.includes(v ?? '');
        case 'notin':
          return !has || !r.values.includes(v ?? '');
      }
    });
  };
}

/** The field labels the real apiserver accepts, per resource (anything else is a 400). */
const FIELD_LABELS: Record<string, readonly string[]> = {
  pods: [
    'metadata.name',
    'metadata.namespace',
    'spec.nodeName',
    'spec.restartPolicy',
    'spec.schedulerName',
    'spec.serviceAccountName',
    'spec.hostNetwork',
    'status.phase',
    'status.podIP',
    'status.nominatedNodeName',
  ],
  namespaces: ['metadata.name', 'status.phase'],
  events: ['metadata.name', 'metadata.namespace'],
};

function fieldValue(obj: KubeObject, path: string): string {
  let cur: unknown = obj;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object') return '';
    cur = (cur as Record<string, unknown>)[part];
  }
  if (cur === undefined || cur === null) return path === 'spec.hostNetwork' ? 'false' : '';
  return String(cur);
}

/** Parses a `fieldSelector` query value for `resource` (`spec.nodeName=n1,status.phase!=Failed`). */
export function parseFieldSelector(resource: string, selector: string): Matcher {
  const allowed = FIELD_LABELS[resource] ?? ['metadata.name', 'metadata.namespace'];
  const reqs = splitTop(selector).map((req) => {
    const m = /^([^=!\s]+)\s*(==|=|!=)\s*(.*)$/.exec(req);
    if (!m) throw new SelectorError(`invalid selector: '${req}'; can't understand '${req}'`);
    const field = m[1] ?? '';
    if (!allowed.includes(field)) {
      throw new SelectorError(`"${field}" is not a known field selector: only "${allowed.join('", "')}"`);
    }
    return { field, negate: m[2] === '!=', value: m[3] ?? '' };
  });
  return (obj) => reqs.every((r) => (fieldValue(obj, r.field) === r.value) !== r.negate);
}
