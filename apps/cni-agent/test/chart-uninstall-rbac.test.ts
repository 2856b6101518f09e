import { loadAllYaml } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { chartDir, helmBinary } from '../../../tests/shipping/src/helm.js';
import { runOk } from '../../../tests/shipping/src/workspace.js';

interface Doc {
  kind: string;
  metadata: { name: string; namespace?: string };
  rules?: { apiGroups: string[]; resources: string[]; resourceNames?: string[]; verbs: string[] }[];
  roleRef?: { kind: string; name: string };
  subjects?: { kind: string; name: string; namespace: string }[];
  spec?: { template: { spec: { serviceAccountName: string; containers: { env: { name: string; value?: string; valueFrom?: unknown }[] }[] } } };
}

/** The chart (rendered by the real helm) lets the agent make the read its uninstall-on-exit decision needs. */
describe('chart: uninstall on exit', () => {
  it('is on by default, names the DaemonSet, and RBAC lets the agent get exactly that DaemonSet', async () => {
    const helm = await helmBinary();
    const out = await runOk(helm, ['template', 'rel', chartDir, '--namespace', 'mesh-sys']);
    const docs = (loadAllYaml(out.stdout) as (Doc | null)[]).filter((d): d is Doc => d !== null);
    const ds = docs.find((d) => d.kind === 'DaemonSet' && d.metadata.name.endsWith('-cni-agent'))!;
    const pod = ds.spec!.template.spec;
    const env = Object.fromEntries(pod.containers[0]!.env.map((e) => [e.name, e.value ?? e.valueFrom]));
    expect(env['CNI_UNINSTALL_ON_EXIT']).toBe('true');
    expect(env['DAEMONSET_NAME']).toBe(ds.metadata.name);
    expect(env['POD_NAMESPACE']).toEqual({ fieldRef: { fieldPath: 'metadata.namespace' } });

    const bindings = docs.filter(
      (d) => d.kind === 'RoleBinding' && d.metadata.namespace === 'mesh-sys' && d.subjects?.some((s) => s.kind === 'ServiceAccount' && s.name === pod.serviceAccountName && s.namespace === 'mesh-sys'),
    );
    const roles = bindings.map((b) => docs.find((d) => d.kind === 'Role' && d.metadata.namespace === 'mesh-sys' && d.metadata.name === b.roleRef?.name));
    const grants = roles.flatMap((r) => r?.rules ?? []);
    expect(
      grants.some(
        (g) => g.apiGroups.includes('apps') && g.resources.includes('daemonsets') && g.verbs.includes('get') && (g.resourceNames === undefined || g.resourceNames.includes(ds.metadata.name)),
      ),
    ).toBe(true);

    const off = await runOk(helm, ['template', 'rel', chartDir, '--namespace', 'mesh-sys', '--set', 'cni.uninstallOnExit=false']);
    expect(off.stdout).toMatch(/name: CNI_UNINSTALL_ON_EXIT\n\s+value: "false"/);
  });
});
