import { describe, expect, it } from 'vitest';
import { parseCniArgs, parseCniEnv } from './env.js';

const base = { CNI_CONTAINERID: 'abc', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin:/usr/lib/cni' };

describe('parseCniEnv', () => {
  it('parses the environment and the Kubernetes CNI_ARGS', () => {
    const env = parseCniEnv({
      ...base,
      CNI_COMMAND: 'ADD',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234',
    });
    expect(env).toMatchObject({ command: 'ADD', netns: '/var/run/netns/x', ifName: 'eth0', path: ['/opt/cni/bin', '/usr/lib/cni'] });
    expect(env.args).toEqual({ K8S_POD_NAMESPACE: 'default', K8S_POD_NAME: 'web-0', K8S_POD_INFRA_CONTAINER_ID: 'abc', K8S_POD_UID: '1234' });
  });

  it('names what is missing or wrong, with CNI code 4', () => {
    const fail = (env: Record<string, string>) => {
      try {
        parseCniEnv(env);
      } catch (err) {
        return err as { cniCode: number; message: string };
      }
      throw new Error('expected a failure');
    };
    expect(fail({ ...base })).toMatchObject({ cniCode: 4, message: 'required env variables [CNI_COMMAND] missing' });
    expect(fail({ ...base, CNI_COMMAND: 'FOO' })).toMatchObject({ cniCode: 4, message: 'unknown CNI_COMMAND: FOO' });
    expect(fail({ ...base, CNI_COMMAND: 'ADD', CNI_NETNS: '' })).toMatchObject({ cniCode: 4, message: 'required env variables [CNI_NETNS] missing' });
    expect(fail({ ...base, CNI_COMMAND: 'ADD', CNI_ARGS: 'K8S_POD_NAME' }).message).toContain('CNI_ARGS');
    expect(fail({ ...base, CNI_COMMAND: 'ADD', CNI_IFNAME: 'a-very-long-interface-name' }).message).toContain('CNI_IFNAME');
    expect(fail({ ...base, CNI_COMMAND: 'ADD', CNI_CONTAINERID: '-bad id' }).message).toContain('CNI_CONTAINERID');
    // DEL does not need the netns (it may already be gone).
    expect(parseCniEnv({ ...base, CNI_COMMAND: 'DEL', CNI_NETNS: '' }).netns).toBeUndefined();
  });

  it('CNI_ARGS: keeps only the Kubernetes keys, in one order; a bad value is named by the schema', () => {
    expect(JSON.stringify(parseCniArgs('K8S_POD_UID=u;Foo=bar;K8S_POD_NAME=n;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns'))).toBe(
      JSON.stringify({ K8S_POD_NAMESPACE: 'ns', K8S_POD_NAME: 'n', K8S_POD_UID: 'u' }),
    );
    expect(parseCniArgs(undefined)).toEqual({});
    expect(() => parseCniArgs('K8S_POD_NAME=a b')).toThrow(/CNI_ARGS: K8S_POD_NAME: must be printable ASCII without spaces/);
    // Unknown keys are not checked (IgnoreUnknown), as before.
    expect(parseCniArgs('Other=a b;K8S_POD_NAME=x')).toEqual({ K8S_POD_NAME: 'x' });
  });
});
