import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseLocalConfig } from '../local-config.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE } from './client.js';
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
