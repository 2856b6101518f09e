import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTestPki, FakeApiServer, type TestPki } from '@weir/fake-apiserver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniPluginError } from './errors.js';
import { KubeClient, loadKubeconfig } from './kube-client.js';

let dir: string;
let pki: TestPki;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-cni-kube-'));
  pki = await createTestPki();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function getPod(kubeconfig: string): Promise<unknown> {
  const client = new KubeClient(await loadKubeconfig(kubeconfig), { timeoutMs: 3000 });
  try {
    return await client.get('/api/v1/namespaces/default/pods/web-0');
  } finally {
    client.close();
  }
}

describe('tiny kube client', () => {
  it('verifies HTTPS against the kubeconfig CA and sends the bearer token', async () => {
    const api = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }, token: 'tok-1' });
    try {
      api.createPod({ metadata: { name: 'web-0', namespace: 'default' } });
      const pod = (await getPod(await api.kubeconfig(join(dir, 'kc-token')))) as { metadata: { name: string } };
      expect(pod.metadata.name).toBe('web-0');
      expect(api.requests[0]).toMatchObject({ authorization: 'Bearer tok-1', path: '/api/v1/namespaces/default/pods/web-0' });
      const wrong = await getPod(await api.kubeconfig(join(dir, 'kc-wrong'), { token: 'nope' })).catch((e: unknown) => e);
      expect(wrong).toBeInstanceOf(CniPluginError);
      expect((wrong as CniPluginError).message).toContain('401');
    } finally {
      await api.close();
    }
  });

  it('authenticates with a client certificate from files relative to the kubeconfig, and a tokenFile', async () => {
    const api = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca, clientCa: pki.ca } });
    try {
      api.createPod({ metadata: { name: 'web-0', namespace: 'default' } });
      await writeFile(join(dir, 'ca.crt'), pki.ca);
      await writeFile(join(dir, 'client.crt'), pki.clientCert);
      await writeFile(join(dir, 'client.key'), pki.clientKey);
      const kc = join(dir, 'kc-cert');
      await writeFile(
        kc,
        [
          'apiVersion: v1',
          'kind: Config',
          'clusters:',
          `- name: c\n  cluster:\n    server: ${api.url}\n    certificate-authority: ca.crt`,
          'contexts:',
          '- name: ctx\n  context:\n    cluster: c\n    user: u',
          'current-context: ctx',
          'users:',
          '- name: u\n  user:\n    client-certificate: client.crt\n    client-key: client.key',
          '',
        ].join('\n'),
      );
      expect(await getPod(kc)).toMatchObject({ kind: 'Pod' });
      const conn = await loadKubeconfig(kc);
      expect(conn.server).toBe(api.url);
      expect(conn.clientCert?.toString()).toBe(pki.clientCert);
    } finally {
      await api.close();
    }
  });

  it('rejects a server certificate the CA did not sign, and names a missing kubeconfig', async () => {
    const other = await createTestPki();
    const api = await FakeApiServer.start({ tls: { cert: other.serverCert, key: other.serverKey, ca: pki.ca } });
    try {
      const err = await getPod(await api.kubeconfig(join(dir, 'kc-badca'))).catch((e: unknown) => e);
      expect((err as CniPluginError).code).toBe('ERR_CNI_KUBE_API');
      const missing = await loadKubeconfig(join(dir, 'nope')).catch((e: unknown) => e);
      expect((missing as CniPluginError).code).toBe('ERR_CNI_KUBECONFIG');
      expect((missing as CniPluginError).message).toContain(join(dir, 'nope'));
    } finally {
      await api.close();
    }
  });

  it('reads a tokenFile and answers non-200 with the Status message', async () => {
    const api = await FakeApiServer.start({ token: 'from-file' });
    try {
      await writeFile(join(dir, 'token'), 'from-file\n');
      const kc = join(dir, 'kc-tokenfile');
      await writeFile(
        kc,
        JSON.stringify({
          clusters: [{ name: 'c', cluster: { server: api.url } }],
          contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
          'current-context': 'x',
          users: [{ name: 'u', user: { tokenFile: 'token' } }],
        }),
      );
      const err = await getPod(kc).catch((e: unknown) => e);
      expect((err as CniPluginError).message).toContain('pods "web-0" not found');
      expect(api.requests[0]?.authorization).toBe('Bearer from-file');
    } finally {
      await api.close();
    }
  });

  it('reads JSON (as weir-cni-agent writes it) without the YAML parser and YAML flow style through it, alike', async () => {
    const json = join(dir, 'kc-json');
    const flow = join(dir, 'kc-flow');
    const doc = { clusters: [{ name: 'c', cluster: { server: 'https://10.0.0.1:6443/', 'insecure-skip-tls-verify': true } }], users: [{ name: 'u', user: { token: 't' } }], contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }], 'current-context': 'x' };
    await writeFile(json, ` ${JSON.stringify(doc)}`);
    await writeFile(flow, '{clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443/", insecure-skip-tls-verify: true}}], users: [{name: u, user: {token: t}}], contexts: [{name: x, context: {cluster: c, user: u}}], current-context: x}\n');
    const expected = { server: 'https://10.0.0.1:6443', token: 't', insecureSkipTlsVerify: true, ca: undefined, tlsServerName: undefined };
    expect(await loadKubeconfig(json)).toMatchObject(expected);
    expect(await loadKubeconfig(flow)).toMatchObject(expected);
  });

  it('reads the auth-provider tokenFile that @kubernetes/client-node exports (its in-cluster shape)', async () => {
    const api = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }, token: 'sa-token' });
    try {
      api.createPod({ metadata: { name: 'web-0', namespace: 'default' } });
      await writeFile(join(dir, 'sa-ca.crt'), pki.ca);
      await writeFile(join(dir, 'sa-token'), 'sa-token');
      const kc = join(dir, 'kc-exported');
      await writeFile(
        kc,
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          clusters: [{ name: 'inCluster', cluster: { server: api.url, 'certificate-authority': join(dir, 'sa-ca.crt'), 'insecure-skip-tls-verify': false } }],
          users: [{ name: 'inClusterUser', user: { 'auth-provider': { name: 'tokenFile', config: { tokenFile: join(dir, 'sa-token') } } } }],
          contexts: [{ name: 'inClusterContext', context: { cluster: 'inCluster', user: 'inClusterUser' } }],
          'current-context': 'inClusterContext',
        }),
      );
      expect(await getPod(kc)).toMatchObject({ kind: 'Pod' });
      expect(api.requests[0]?.authorization).toBe('Bearer sa-token');
      await rm(join(dir, 'sa-token'));
      const missing = await loadKubeconfig(kc).catch((e: unknown) => e);
      expect((missing as CniPluginError).message).toContain(`auth-provider.config.tokenFile ${join(dir, 'sa-token')} cannot be read`);
    } finally {
      await api.close();
    }
  });

  it('refuses credentials it cannot use, naming the field', async () => {
    const cases: [Record<string, unknown>, Record<string, unknown>, string][] = [
      [{}, { exec: { command: 'aws' } }, 'users["u"].user.exec is not supported'],
      [{}, { 'auth-provider': { name: 'oidc', config: {} } }, 'users["u"].user.auth-provider "oidc" is not supported'],
      [{}, { username: 'admin', password: 'x' }, 'users["u"].user.username is not supported'],
      [{}, { token: 't', as: 'system:admin' }, 'users["u"].user.as is not supported'],
      [{ 'proxy-url': 'http://proxy:3128' }, { token: 't' }, 'clusters["c"].cluster.proxy-url is not supported'],
    ];
    for (const [[clusterExtra, user, message], i] of cases.map((c, n) => [c, n] as const)) {
      const kc = join(dir, `kc-unsupported-${i}`);
      await writeFile(
        kc,
        JSON.stringify({
          clusters: [{ name: 'c', cluster: { server: 'https://10.0.0.1:6443', ...clusterExtra } }],
          users: [{ name: 'u', user }],
          contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
          'current-context': 'x',
        }),
      );
      const err = await loadKubeconfig(kc).catch((e: unknown) => e);
      expect(err, message).toBeInstanceOf(CniPluginError);
      expect((err as CniPluginError).code).toBe('ERR_CNI_KUBECONFIG');
      expect((err as CniPluginError).message).toContain(message);
    }
  });

  it('checks the server certificate against tls-server-name when given', async () => {
    const api = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca } });
    try {
      api.createPod({ metadata: { name: 'web-0', namespace: 'default' } });
      const write = async (name: string, serverName: string) => {
        const kc = join(dir, name);
        const doc = {
          clusters: [{ name: 'c', cluster: { server: api.url, 'certificate-authority-data': Buffer.from(pki.ca).toString('base64'), 'tls-server-name': serverName } }],
          users: [{ name: 'u', user: {} }],
          contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
          'current-context': 'x',
        };
        await writeFile(kc, JSON.stringify(doc));
        return kc;
      };
      expect(await getPod(await write('kc-sni-ok', 'localhost'))).toMatchObject({ kind: 'Pod' });
      const err = await getPod(await write('kc-sni-bad', 'api.example.com')).catch((e: unknown) => e);
      expect((err as CniPluginError).message).toMatch(/api\.example\.com/);
    } finally {
      await api.close();
    }
  });
});
