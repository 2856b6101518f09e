/**
 * Request fields by lowercase name, pseudo-fields (`:method`, `:authority`) included, as node:http2's
 * IncomingHttpHeaders (which is accepted wherever this is).
 */
export interface HboneRawHeaders {
  [name: string]: string | string[] | undefined;
}

export interface TraceParent {
  version: string;
  traceId: string;
  parentId: string;
  flags: string;
}

export interface ForwardedElement {
  for?: string;
  by?: string;
  host?: string;
  proto?: string;
}

/**
 * The CONNECT request headers, with the ones ztunnel sends parsed when present: a plain object whose
 * `baggage`, `forwarded` and `traceparent` are own enumerable properties exactly when the request
 * carried that header (undefined when it is malformed), so spread, `Object.keys`, `JSON.stringify`
 * and `structuredClone` see them as they would on any headers object.
 */
export interface HboneRequestHeaders {
  raw: HboneRawHeaders;
  /** W3C baggage, `k8s.namespace.name=…,service.name=…` → record (values URI-decoded). */
  baggage?: Record<string, string>;
  /** RFC 7239 `Forwarded`, one element per hop. */
  forwarded?: ForwardedElement[];
  /** W3C trace context. */
  traceparent?: TraceParent;
}

/**
 * Wraps the request headers. Each of `baggage`, `forwarded` and `traceparent` the request carries is
 * parsed on first read (most tunnels never look at them, and the parse is measurable on the open
 * path): until then it is an own enumerable getter, shared by every object, that replaces itself with
 * the parsed value; reading the object any way (spread, keys, JSON) reads the getter.
 */
export function parseRequestHeaders(raw: HboneRawHeaders): HboneRequestHeaders {
  const h: HboneRequestHeaders = { raw };
  if (raw['baggage'] !== undefined) Object.defineProperty(h, 'baggage', LAZY_BAGGAGE);
  if (raw['forwarded'] !== undefined) Object.defineProperty(h, 'forwarded', LAZY_FORWARDED);
  if (raw['traceparent'] !== undefined) Object.defineProperty(h, 'traceparent', LAZY_TRACEPARENT);
  return h;
}

/**
 * A CONNECT's fields as raw headers: the server's H2Session hands them over flat ([name, value, …],
 * pseudo-fields apart). A null-prototype object as node:http2 made (a field named `__proto__` is a
 * field); a repeated field's values are joined with ', ' (RFC 9110 §5.3).
 */
export function connectHeaders(authority: string, fields: readonly string[]): HboneRawHeaders {
  const raw = Object.create(null) as Record<string, string>;
  raw[':method'] = 'CONNECT';
  raw[':authority'] = authority;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]!;
    const value = fields[i + 1]!;
    const seen = raw[name];
    raw[name] = seen === undefined ? value : `${seen}, ${value}`;
  }
  return raw;
}

type Parsed = 'baggage' | 'forwarded' | 'traceparent';

/** One descriptor per field for every object: V8 then gives all of them one shared shape. */
function lazy<K extends Parsed>(key: K, parse: (v: string | undefined) => HboneRequestHeaders[K]): PropertyDescriptor {
  const settle = (h: HboneRequestHeaders, value: HboneRequestHeaders[K]): void => {
    Object.defineProperty(h, key, { value, enumerable: true, writable: true, configurable: true });
  };
  return {
    enumerable: true,
    configurable: true,
    get(this: HboneRequestHeaders): HboneRequestHeaders[K] {
      const value = parse(first(this.raw[key]));
      settle(this, value);
      return value;
    },
    set(this: HboneRequestHeaders, value: HboneRequestHeaders[K]): void {
      settle(this, value);
    },
  };
}

const LAZY_BAGGAGE = lazy('baggage', parseBaggage);
const LAZY_FORWARDED = lazy('forwarded', parseForwarded);
const LAZY_TRACEPARENT = lazy('traceparent', parseTraceparent);

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(',') : v;
}

export function parseBaggage(v: string | undefined): Record<string, string> | undefined {
  if (v === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const member of v.split(',')) {
    // Properties after ';' carry metadata we have no use for.
    const kv = member.split(';')[0]!.trim();
    const eq = kv.indexOf('=');
    if (eq <= 0) continue;
    const key = kv.slice(0, eq).trim();
    const raw = kv.slice(eq + 1).trim();
    try {
      out[key] = decodeURIComponent(raw);
    } catch {
      out[key] = raw;
    }
  }
  return out;
}

export function parseForwarded(v: string | undefined): ForwardedElement[] | undefined {
  if (v === undefined) return undefined;
  const out: ForwardedElement[] = [];
  for (const element of splitOutsideQuotes(v, ',')) {
    const el: ForwardedElement = {};
    for (const pair of splitOutsideQuotes(element, ';')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const key = pair.slice(0, eq).trim().toLowerCase();
      let value = pair.slice(eq + 1).trim();
      if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1).replace(/\\(.)/g, '$1');
      if (key === 'for' || key === 'by' || key === 'host' || key === 'proto') el[key] = value;
    }
    out.push(el);
  }
  return out;
}

function splitOutsideQuotes(s: string, sep: string): string[] {
  const parts: string[] = [];
  let quoted = false;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '"' && s[i - 1] !== '\\') quoted = !quoted;
    else if (c === sep && !quoted) {
      parts.push(s.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(s.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

export function parseTraceparent(v: string | undefined): TraceParent | undefined {
  if (v === undefined) return undefined;
  const m = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(v.trim());
  if (m === null || m[1] === 'ff' || /^0+$/.test(m[2]!) || /^0+$/.test(m[3]!)) return undefined;
  return { version: m[1]!, traceId: m[2]!, parentId: m[3]!, flags: m[4]! };
}
