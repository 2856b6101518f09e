import { KubeConfig } from '@kubernetes/client-node';
import { FakeApiServer } from '@weir/fake-apiserver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideUninstallOnExit } from '../src/uninstall-check.js';
import { DaemonSetApi } from './daemonset-api.js';

function kubeConfig(server: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server, skipTLSVerify: true }],
    users: [{ name: 'u' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return kc;
}

describe('uninstall on exit: only when the agent DaemonSet is gone or being deleted', () => {
  let api: FakeApiServer;
  let ds: DaemonSetApi;
  const daemonSet = { name: 'weir-cni-agent', namespace: 'weir-system' };

  beforeAll(async () => {
    api = await FakeApiServer.start();
    ds = await DaemonSetApi.start(api);
  });
  afterAll(async () => {
    await ds?.close();
    await api?.close();
  });

  it('keeps the plugin on upgrade or restart (DaemonSet there), removes it when deleted or being deleted', async () => {
    const decide = () => decideUninstallOnExit({ enabled: true, kubeConfig: kubeConfig(ds.url), daemonSet });
    ds.set(daemonSet.namespace, daemonSet.name);
    expect(await decide()).toEqual({ uninstall: false, reason: 'DaemonSet weir-system/weir-cni-agent still exists (upgrade or restart)' });
    ds.set(daemonSet.namespace, daemonSet.name, { deleting: true });
    expect(await decide()).toEqual({ uninstall: true, reason: 'DaemonSet weir-system/weir-cni-agent is being deleted' });
    ds.delete(daemonSet.namespace, daemonSet.name);
    expect(await decide()).toEqual({ uninstall: true, reason: 'DaemonSet weir-system/weir-cni-agent is gone' });
    expect(ds.requests.map((r) => r.path)).toEqual(Array(3).fill('/apis/apps/v1/namespaces/weir-system/daemonsets/weir-cni-agent'));
  });

  it('keeps the plugin when the flag is off, and whenever the API cannot say', async () => {
    ds.delete(daemonSet.namespace, daemonSet.name);
    expect(await decideUninstallOnExit({ enabled: false, kubeConfig: kubeConfig(ds.url), daemonSet })).toMatchObject({ uninstall: false });
    // A 404 for the route (here: the fake alone, which serves no apps/v1) is not "the DaemonSet is gone".
    const noRoute = await decideUninstallOnExit({ enabled: true, kubeConfig: kubeConfig(api.url), daemonSet });
    expect(noRoute).toEqual({ uninstall: false, reason: 'cannot read DaemonSet weir-system/weir-cni-agent (HTTP 404), so it may be an upgrade' });
    // Server trouble says nothing about an uninstall.
    for (const status of [500, 503]) {
      api.failNext(1, status);
      const viaFake = await decideUninstallOnExit({ enabled: true, kubeConfig: kubeConfig(api.url), daemonSet });
      expect(viaFake).toEqual({ uninstall: false, reason: `cannot read DaemonSet weir-system/weir-cni-agent (HTTP ${status}), so it may be an upgrade` });
    }
    // Nobody listening.
    const down = await FakeApiServer.start();
    const url = down.url;
    await down.close();
    expect(await decideUninstallOnExit({ enabled: true, kubeConfig: kubeConfig(url), daemonSet })).toMatchObject({ uninstall: false });
  });

  it('takes 401/403 as the uninstall they are: helm deletes the ServiceAccount and RBAC right after the DaemonSet', async () => {
    const secured = await FakeApiServer.start({ token: 'agent-token' });
    try {
      // The ServiceAccount is gone: its token no longer authenticates.
      const unauthenticated = await decideUninstallOnExit({ enabled: true, kubeConfig: kubeConfig(secured.url), daemonSet });
      expect(unauthenticated).toMatchObject({ uninstall: true });
      expect(unauthenticated.reason).toContain('(HTTP 401)');
    } finally {
      await secured.close();
    }
    // The Role is gone.
    api.failNext(1, 403);
    const forbidden = await decideUninstallOnExit({ enabled: true, kubeConfig: kubeConfig(api.url), daemonSet });
    expect(forbidden).toMatchObject({ uninstall: true });
    expect(forbidden.reason).toContain('(HTTP 403)');
  });
});
