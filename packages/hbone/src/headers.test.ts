import { describe, expect, it } from 'vitest';
import { parseBaggage, parseForwarded, parseRequestHeaders, parseTraceparent } from './headers.js';

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
});
