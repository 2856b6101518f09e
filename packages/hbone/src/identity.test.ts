import { X509Certificate } from 'node:crypto';
import { LocalCa } from '@weir/pki';
import { describe, expect, it } from 'vitest';
import { HboneError } from './errors.js';
import { SpiffeId, certificateMatchesIdentities, identitiesFromCertificate } from './identity.js';

describe('SpiffeId', () => {
  it('parses and formats spiffe://<td>/ns/<ns>/sa/<sa>', () => {
    const id = SpiffeId.parse('spiffe://cluster.local/ns/default/sa/bookinfo-productpage');
    expect(id.trustDomain).toBe('cluster.local');
    expect(id.namespace).toBe('default');
    expect(id.serviceAccount).toBe('bookinfo-productpage');
    expect(id.toString()).toBe('spiffe://cluster.local/ns/default/sa/bookinfo-productpage');
    expect(id.equals('spiffe://cluster.local/ns/default/sa/bookinfo-productpage')).toBe(true);
    expect(id.equals(new SpiffeId('cluster.local', 'default', 'other'))).toBe(false);
  });

  it.each([
    'spiffe://cluster.local/ns/default',
    'spiffe://cluster.local/ns/default/sa/x/extra',
    'spiffe://Cluster.Local/ns/a/sa/b',
    'spiffe://cluster.local/ns//sa/b',
    'spiffe://cluster.local/ns/../sa/b',
    'spiffe://cluster.local/ns/a/sa/b?x=1',
    'http://cluster.local/ns/a/sa/b',
    ' spiffe://cluster.local/ns/a/sa/b',
    '',
  ])('rejects %j with ERR_HBONE_INVALID_IDENTITY', (s) => {
    expect(() => SpiffeId.parse(s)).toThrow(HboneError);
    expect(SpiffeId.tryParse(s)).toBeUndefined();
  });

  it('extracts identities from a certificate and compares them', async () => {
    const ca = await LocalCa.create({ trustDomain: 'example.org' });
    const wl = await ca.issueWorkloadCertificate({ identity: 'spiffe://example.org/ns/a/sa/b' });
    const cert = new X509Certificate(wl.certPem);
    expect(identitiesFromCertificate(cert).map(String)).toEqual(['spiffe://example.org/ns/a/sa/b']);
    expect(certificateMatchesIdentities(cert, ['spiffe://example.org/ns/x/sa/y', 'spiffe://example.org/ns/a/sa/b'])).toBe(true);
    expect(certificateMatchesIdentities(cert, ['spiffe://other.org/ns/a/sa/b'])).toBe(false);
    // The CA certificate's spiffe://<td> SAN is not a workload identity.
    expect(identitiesFromCertificate(new X509Certificate(ca.certPem))).toEqual([]);
  });
});
