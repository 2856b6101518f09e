import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiException, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeApiServer } from './server.js';
import { createTestPki, type TestPki } from './tls.js';

let dir: string;
let pki: TestPki;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-fake-tls-'));
  pki = await createTestPki();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function clientFor(server: FakeApiServer, opts: Parameters<FakeApiServer['kubeconfig']>[1]): Promise<CoreV1Api> {
  const kc = new KubeConfig();
  kc.loadFromFile(await server.kubeconfig(join(dir, `kc-${Math.random()}`), opts));
  return kc.makeApiClient(CoreV1Api);
}

describe('HTTPS and authentication', () => {
  it('serves HTTPS verified against the kubeconfig CA and requires the bearer token', async () => {
    const server = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }, token: 's3cret' });
    try {
      expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const ok = await clientFor(server, {});
      expect((await ok.readNamespace({ name: 'default' })).metadata?.name).toBe('default');
      const bad = await clientFor(server, { token: 'wrong' });
      const err = await bad.readNamespace({ name: 'default' }).catch((e: unknown) => e);
      expect((err as ApiException<unknown>).code).toBe(401);
      expect(server.requests.map((r) => r.authorization)).toEqual(['Bearer s3cret', 'Bearer wrong']);
    } finally {
      await server.close();
    }
  });

  it('accepts a client certificate signed by clientCa instead of a token', async () => {
    const server = await FakeApiServer.start({
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca, clientCa: pki.ca },
      token: 'unused-here',
    });
    try {
      const api = await clientFor(server, { token: '', clientCert: pki.clientCert, clientKey: pki.clientKey });
      expect((await api.listNamespace()).items.map((n) => n.metadata?.name)).toEqual(['default', 'kube-system']);
      const anon = await clientFor(server, { token: '' });
      expect(((await anon.listNamespace().catch((e: unknown) => e)) as ApiException<unknown>).code).toBe(401);
    } finally {
      await server.close();
    }
  });
});
