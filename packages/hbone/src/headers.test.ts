import { describe, expect, it } from 'vitest';
import { connectHeaders, parseBaggage, parseForwarded, parseRequestHeaders, parseTraceparent } from './headers.js';

describe('request headers', () => {
  it('parses ztunnel baggage', () => {
    expect(parseBaggage('k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=web,service.name=web,service.version=v1;p=1')).toEqual({
      'k8s.cluster.name': 'Kubernetes',
      'k8s.namespace.name': 'default',
      'k8s.deployment.name': 'web',
      'service.name': 'web',
      'service.version': 'v1',
    });
    expect(parseBaggage('bad,=x,k=%E0%A4%A')).toEqual({ k: '%E0%A4%A' });
  });

  it('parses Forwarded with quotes and several hops', () => {
    expect(parseForwarded('for="10.0.0.1:4321"')).toEqual([{ for: '10.0.0.1:4321' }]);
    expect(parseForwarded('for="[fd00::1]:80";proto=https, for=1.2.3.4;by="x,y"')).toEqual([
      { for: '[fd00::1]:80', proto: 'https' },
      { for: '1.2.3.4', by: 'x,y' },
    ]);
  });

  it('parses a valid traceparent and ignores invalid ones', () => {
    expect(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')).toEqual({
      version: '00',
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
      parentId: '00f067aa0ba902b7',
      flags: '01',
    });
    expect(parseTraceparent('00-00000000000000000000000000000000-00f067aa0ba902b7-01')).toBeUndefined();
    expect(parseTraceparent('ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')).toBeUndefined();
    expect(parseTraceparent('garbage')).toBeUndefined();
  });

  it('leaves absent headers out', () => {
    const h = parseRequestHeaders({ ':method': 'CONNECT', ':authority': '10.0.0.1:80' });
    expect(h).toEqual({ raw: { ':method': 'CONNECT', ':authority': '10.0.0.1:80' } });
  });

  it('behaves as a plain headers object: spread, keys, JSON and structuredClone see the parsed fields', () => {
    const raw = {
      ':method': 'CONNECT',
      ':authority': '10.0.0.1:80',
      baggage: 'service.name=web',
      forwarded: 'for="10.0.0.2:4321"',
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    };
    const parsed = {
      baggage: { 'service.name': 'web' },
      forwarded: [{ for: '10.0.0.2:4321' }],
      traceparent: { version: '00', traceId: '4bf92f3577b34da6a3ce929d0e0e4736', parentId: '00f067aa0ba902b7', flags: '01' },
    };
    // Each check on a fresh object: none of them may depend on an earlier read having parsed a field.
    expect(Object.keys(parseRequestHeaders(raw))).toEqual(['raw', 'baggage', 'forwarded', 'traceparent']);
    expect({ ...parseRequestHeaders(raw) }).toStrictEqual({ raw, ...parsed });
    expect(JSON.parse(JSON.stringify(parseRequestHeaders(raw)))).toStrictEqual({ raw, ...parsed });
    expect(structuredClone(parseRequestHeaders(raw))).toStrictEqual({ raw, ...parsed });
    expect(Object.entries(parseRequestHeaders(raw))).toStrictEqual(Object.entries({ raw, ...parsed }));
    const h = parseRequestHeaders(raw);
    expect(h.baggage).toBe(h.baggage);
    expect(Object.getOwnPropertyDescriptor(h, 'baggage')).toMatchObject({ value: parsed.baggage, enumerable: true, writable: true });
    h.traceparent = undefined;
    expect(h.traceparent).toBeUndefined();
  });

  it('has a key only for the headers the request carried; a malformed one reads as undefined', () => {
    const h = parseRequestHeaders({ ':method': 'CONNECT', ':authority': '10.0.0.1:80', traceparent: 'garbage' });
    expect(Object.keys(h)).toEqual(['raw', 'traceparent']);
    expect(h.traceparent).toBeUndefined();
    expect('baggage' in h).toBe(false);
    expect(JSON.stringify(h)).toBe(JSON.stringify({ raw: { ':method': 'CONNECT', ':authority': '10.0.0.1:80', traceparent: 'garbage' } }));
  });

  it('turns a CONNECT\'s flat fields into raw headers: pseudo-fields included, repeats joined, __proto__ only a name', () => {
    const raw = connectHeaders('10.0.0.1:80', ['baggage', 'service.name=web', 'x-via', 'a', 'x-via', 'b', '__proto__', 'x', 'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01']);
    expect({ ...raw }).toStrictEqual({
      ':method': 'CONNECT',
      ':authority': '10.0.0.1:80',
      baggage: 'service.name=web',
      'x-via': 'a, b',
      ['__proto__']: 'x',
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    });
    expect(Object.getPrototypeOf(raw)).toBeNull();
    const h = parseRequestHeaders(raw);
    expect(Object.keys(h)).toEqual(['raw', 'baggage', 'traceparent']);
    expect(h.baggage).toEqual({ 'service.name': 'web' });
    expect(h.traceparent?.traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
  });
});
