import { describe, expect, it } from 'vitest';
import { CniAgentError } from './errors.js';
import { podFromV1 } from './pod.js';

function v1(spec: Record<string, unknown>): unknown {
  return { metadata: { uid: 'u-1', name: 'web-0', namespace: 'apps' }, spec };
}

describe('podFromV1 containers', () => {
  it('reads privileged and capabilities of init, regular and ephemeral containers', () => {
    const pod = podFromV1(
      v1({
        initContainers: [{ name: 'setup', image: 'busybox', securityContext: { capabilities: { add: ['NET_ADMIN', 'NET_RAW'] }, runAsUser: 0 } }],
        containers: [
          { name: 'app', image: 'nginx', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } },
          { name: 'plain', image: 'nginx' },
          { name: 'nulls', securityContext: { privileged: null, capabilities: { add: null, drop: null } } },
        ],
        ephemeralContainers: [{ name: 'debugger-x', securityContext: { privileged: true } }],
      }),
    );
    expect(pod.containers).toEqual([
      { name: 'setup', kind: 'initContainer', privileged: false, add: ['NET_ADMIN', 'NET_RAW'], drop: [] },
      { name: 'app', kind: 'container', privileged: false, add: [], drop: ['ALL'] },
      { name: 'plain', kind: 'container', privileged: false, add: [], drop: [] },
      { name: 'nulls', kind: 'container', privileged: false, add: [], drop: [] },
      { name: 'debugger-x', kind: 'ephemeralContainer', privileged: true, add: [], drop: [] },
    ]);
  });

  it('a pod without a spec has no containers', () => {
    expect(podFromV1({ metadata: { uid: 'u', name: 'n', namespace: 'ns' } }).containers).toEqual([]);
  });

  it('a malformed securityContext is ERR_AGENT_MALFORMED_POD naming the pod and the field, never a crash', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ containers: [{ name: 'app', securityContext: { capabilities: { add: 'NET_RAW' } } }] }, /spec\.containers\.0\.securityContext\.capabilities\.add: .*expected array/],
      [{ containers: [{ name: 'app', securityContext: { privileged: 'yes' } }] }, /spec\.containers\.0\.securityContext\.privileged: .*expected boolean/],
      [{ initContainers: [{ name: 'setup', securityContext: { capabilities: { drop: [7] } } }] }, /spec\.initContainers\.0\.securityContext\.capabilities\.drop\.0: .*expected string/],
      [{ ephemeralContainers: [{ name: 'dbg', securityContext: 'privileged' }] }, /spec\.ephemeralContainers\.0\.securityContext: .*expected object/],
      [{ containers: [{ securityContext: {} }] }, /spec\.containers\.0\.name: /],
      [{ containers: [{ name: 'app', securityContext: { capabilities: [] } }] }, /spec\.containers\.0\.securityContext\.capabilities: .*expected object/],
      [{ containers: { name: 'app' } }, /spec\.containers: .*expected array/],
      // Every bad field at once, the pod's own and its containers'.
      [{ hostNetwork: 'yes', containers: [{ name: 'app', securityContext: { privileged: 1 } }] }, /spec\.hostNetwork: .*; spec\.containers\.0\.securityContext\.privileged: /],
    ];
    for (const [spec, field] of bad) {
      let err: unknown;
      try {
        podFromV1(v1(spec));
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(spec)).toBeInstanceOf(CniAgentError);
      expect((err as CniAgentError).code).toBe('ERR_AGENT_MALFORMED_POD');
      expect((err as Error).message).toMatch(/^malformed pod apps\/web-0: /);
      expect((err as Error).message).toMatch(field);
    }
  });
});
