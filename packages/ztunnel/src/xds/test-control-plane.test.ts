import { X509Certificate, createPrivateKey } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { createCertificateSigningRequest } from '@weir/pki';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CREATE_CERTIFICATE_PATH } from '../ca-client/ca-client.js';
import { parseLocalConfig } from '../local-config.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE } from './client.js';
import { IstioCertificateRequestSchema, IstioCertificateResponseSchema, type IstioCertificateResponse } from './gen/citadel_pb.js';
import { deserializer, serializer } from './grpc.js';
import { TestControlPlane } from './test-control-plane.js';

const yaml = (ip: string, policies = '[]'): string => `
workloads:
  - {uid: u-a, name: a, namespace: ns1, serviceAccount: sa-a, workloadIps: [10.0.0.1], protocol: HBONE}
  - {uid: u-b, name: b, namespace: ns1, serviceAccount: sa-b, workloadIps: [${ip}], protocol: HBONE}
policies: ${policies}
`;

let cp: TestControlPlane;
beforeAll(async () => {
  cp = await TestControlPlane.start({ tls: false, token: null });
});
afterAll(async () => {
  await cp?.close();
});

function createCertificate(csr: string): Promise<IstioCertificateResponse> {
  const client = new grpc.Client(cp.address, grpc.credentials.createInsecure());
  const req = create(IstioCertificateRequestSchema, { csr, validityDuration: 600n });
  return new Promise<IstioCertificateResponse>((resolve, reject) => {
    client.makeUnaryRequest(CREATE_CERTIFICATE_PATH, serializer(IstioCertificateRequestSchema), deserializer(IstioCertificateResponseSchema), req, (err, value) => {
      client.close();
      if (err) reject(err);
      else if (value) resolve(value);
      else reject(new Error('empty response'));
    });
  });
}

it('reloading a local config changes the version only of resources that changed (delta xDS, as istiod)', () => {
  cp.loadLocalConfig(parseLocalConfig(yaml('10.0.0.2')));
  const first = cp.versions(ADDRESS_TYPE);
  expect(Object.keys(first).sort()).toEqual(['u-a', 'u-b']);

  cp.loadLocalConfig(parseLocalConfig(yaml('10.0.0.2')));
  expect(cp.versions(ADDRESS_TYPE)).toEqual(first);

  cp.loadLocalConfig(parseLocalConfig(yaml('10.0.0.3', '[{name: deny, namespace: ns1, action: Deny}]')));
  const second = cp.versions(ADDRESS_TYPE);
  expect(second['u-a']).toBe(first['u-a']);
  expect(second['u-b']).not.toBe(first['u-b']);
  expect(Object.keys(cp.versions(AUTHORIZATION_TYPE))).toEqual(['ns1/deny']);
});

it('CreateCertificate signs the key of a verified CSR and refuses a tampered one with INVALID_ARGUMENT', async () => {
  const id = 'spiffe://cluster.local/ns/ns1/sa/sa-a';
  const { csrPem, keyPem } = await createCertificateSigningRequest({ identity: id });
  const resp = await createCertificate(csrPem);
  expect(resp.certChain).toEqual([expect.stringContaining('BEGIN CERTIFICATE'), cp.rootCaPem]);
  const leaf = new X509Certificate(resp.certChain[0]!);
  expect(leaf.subjectAltName).toBe(`URI:${id}`);
  expect(leaf.checkPrivateKey(createPrivateKey(keyPem))).toBe(true);
  expect(leaf.verify(new X509Certificate(cp.rootCaPem).publicKey)).toBe(true);
  expect(cp.issued.at(-1)).toMatchObject({ identity: id, serial: leaf.serialNumber.toLowerCase() });

  const der = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  der[der.indexOf(Buffer.from('sa-a')) + 3] = 'b'.charCodeAt(0);
  const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  await expect(createCertificate(tampered)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/CSR signature does not verify/) });
  await expect(createCertificate('not a csr')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/no PEM CERTIFICATE REQUEST/) });
});
