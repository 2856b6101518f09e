import { describe, expect, it } from 'vitest';
import {
  CaptureBypassGuard,
  captureBypassOf,
  describeCaptureBypass,
  normalizeCapability,
  RUNTIME_DEFAULT_CAPABILITIES,
  type CaptureBypassMode,
} from './capture-bypass.js';
import { CniAgentError } from './errors.js';
import type { Logger } from './logger.js';
import { AgentMetrics } from './metrics.js';
import type { ContainerSecurity, PodInfo } from './pod.js';
import type { PodEvent } from './pod-source.js';

function c(name: string, over: Partial<ContainerSecurity> = {}): ContainerSecurity {
  return { name, kind: 'container', privileged: false, add: [], drop: [], ...over };
}

const crio = { runtimeDefaultCapabilities: RUNTIME_DEFAULT_CAPABILITIES['cri-o'] };

describe('captureBypassOf', () => {
  it('flags a container that keeps NET_RAW from containerd’s default set (the default)', () => {
    expect(captureBypassOf([c('app')])).toEqual([
      {
        name: 'app',
        kind: 'container',
        capabilities: ['NET_RAW'],
        reasons: ['keeps NET_RAW (runtime default)'],
        canRewriteRules: false,
        fix: 'securityContext.capabilities.drop: ["NET_RAW"]',
      },
    ]);
  });

  it('passes the same container under CRI-O’s default set (no NET_RAW since 1.18)', () => {
    expect(captureBypassOf([c('app')], crio)).toEqual([]);
  });

  it('passes a container dropping NET_RAW or ALL, in any case, with or without CAP_', () => {
    for (const drop of [['NET_RAW'], ['net_raw'], ['CAP_NET_RAW'], ['cap_Net_Raw'], ['ALL'], ['all'], ['CAP_ALL']]) {
      expect(captureBypassOf([c('app', { drop })]), JSON.stringify(drop)).toEqual([]);
    }
  });

  it('flags NET_ADMIN added (any spelling): it can also rewrite the rules', () => {
    for (const add of [['NET_ADMIN'], ['net_admin'], ['CAP_NET_ADMIN']]) {
      const [found] = captureBypassOf([c('app', { add, drop: ['NET_RAW'] })]);
      expect(found, JSON.stringify(add)).toMatchObject({ capabilities: ['NET_ADMIN'], reasons: ['adds NET_ADMIN'], canRewriteRules: true, fix: 'remove NET_ADMIN from securityContext.capabilities.add' });
    }
  });

  it('flags drop ALL + add NET_RAW (the add comes after drop ALL), also under CRI-O', () => {
    for (const opts of [{}, crio]) {
      expect(captureBypassOf([c('app', { drop: ['ALL'], add: ['NET_RAW'] })], opts)).toMatchObject([
        { capabilities: ['NET_RAW'], reasons: ['adds NET_RAW'], canRewriteRules: false, fix: 'remove NET_RAW from securityContext.capabilities.add' },
      ]);
    }
  });

  it('a capability both added and dropped is dropped', () => {
    expect(captureBypassOf([c('app', { add: ['NET_RAW', 'NET_ADMIN'], drop: ['net_raw', 'CAP_NET_ADMIN'] })])).toEqual([]);
  });

  it('add ALL gives both; add ALL with drop ALL gives none; add ALL minus NET_ADMIN keeps NET_RAW', () => {
    expect(captureBypassOf([c('app', { add: ['ALL'] })], crio)).toMatchObject([
      { capabilities: ['NET_ADMIN', 'NET_RAW'], reasons: ['adds ALL'], canRewriteRules: true, fix: 'remove ALL from securityContext.capabilities.add' },
    ]);
    expect(captureBypassOf([c('app', { add: ['ALL'], drop: ['ALL'] })])).toEqual([]);
    expect(captureBypassOf([c('app', { add: ['ALL'], drop: ['NET_ADMIN'] })])).toMatchObject([{ capabilities: ['NET_RAW'], reasons: ['adds ALL'], canRewriteRules: false }]);
  });

  it('privileged means everything, whatever it drops', () => {
    expect(captureBypassOf([c('app', { privileged: true, drop: ['ALL'] })], crio)).toEqual([
      { name: 'app', kind: 'container', capabilities: ['NET_ADMIN', 'NET_RAW'], reasons: ['privileged'], canRewriteRules: true, fix: 'securityContext.privileged: false' },
    ]);
  });

  it('checks init and ephemeral containers too, each with its own reasons', () => {
    const found = captureBypassOf(
      [
        c('setup', { kind: 'initContainer', add: ['NET_ADMIN'] }),
        c('app', { drop: ['ALL'] }),
        c('debugger', { kind: 'ephemeralContainer', add: ['NET_ADMIN'] }),
      ],
      crio,
    );
    expect(found.map((f) => [f.name, f.kind, f.reasons])).toEqual([
      ['setup', 'initContainer', ['adds NET_ADMIN']],
      ['debugger', 'ephemeralContainer', ['adds NET_ADMIN']],
    ]);
  });

  it('a custom runtime default set holding NET_ADMIN: both kept, one drop fix naming both', () => {
    const [found] = captureBypassOf([c('app')], { runtimeDefaultCapabilities: ['cap_net_admin', 'NET_RAW'] });
    expect(found).toMatchObject({
      capabilities: ['NET_ADMIN', 'NET_RAW'],
      reasons: ['keeps NET_ADMIN (runtime default)', 'keeps NET_RAW (runtime default)'],
      fix: 'securityContext.capabilities.drop: ["NET_ADMIN", "NET_RAW"]',
    });
  });

  it('mixes an added NET_ADMIN with the default NET_RAW in one container', () => {
    const [found] = captureBypassOf([c('app', { add: ['NET_ADMIN'] })]);
    expect(found).toMatchObject({
      reasons: ['adds NET_ADMIN', 'keeps NET_RAW (runtime default)'],
      fix: 'remove NET_ADMIN from securityContext.capabilities.add and securityContext.capabilities.drop: ["NET_RAW"]',
    });
  });

  it('no containers known: nothing to say', () => {
    expect(captureBypassOf([])).toEqual([]);
  });

  it('normalizeCapability', () => {
    expect(['cap_net_raw', ' NET_RAW ', 'Net_Raw', 'CAP_NET_RAW'].map(normalizeCapability)).toEqual(['NET_RAW', 'NET_RAW', 'NET_RAW', 'NET_RAW']);
  });

  it('describes each container with its reasons and fix, shortened past three', () => {
    const found = captureBypassOf([c('a'), c('b', { kind: 'initContainer', privileged: true }), c('c'), c('d')]);
    const text = describeCaptureBypass(found);
    expect(text).toContain('container "a" keeps NET_RAW (runtime default), so it can set SO_MARK to skip ztunnel; fix: securityContext.capabilities.drop: ["NET_RAW"]');
    expect(text).toContain('initContainer "b" privileged, so it can set SO_MARK to skip ztunnel and rewrite the in-pod rules; fix: securityContext.privileged: false');
    expect(text).toContain('and 1 more');
    expect(text).not.toContain('"d"');
  });
});

function pod(name: string, containers: ContainerSecurity[]): PodInfo {
  return {
    uid: `uid-${name}`,
    name,
    namespace: 'apps',
    labels: {},
    annotations: {},
    hostNetwork: false,
    serviceAccount: 'default',
    nodeName: 'n1',
    ips: [],
    phase: 'Running',
    terminating: false,
    netnsPath: undefined,
    containers,
  };
}

function guard(mode: CaptureBypassMode, report?: (work: () => Promise<void>) => void) {
  const events: { pod: string; event: PodEvent }[] = [];
  const warnings: { obj: Record<string, unknown>; msg: string | undefined }[] = [];
  const logger: Logger = {
    info: () => undefined,
    debug: () => undefined,
    error: () => undefined,
    warn: (obj, msg) => warnings.push({ obj: obj as Record<string, unknown>, msg }),
    child: () => logger,
  };
  const metrics = new AgentMetrics({ processMetrics: false });
  const g = new CaptureBypassGuard({
    mode,
    source: { recordEvent: async (p, event) => void events.push({ pod: `${p.namespace}/${p.name}`, event }) },
    metrics,
    logger,
    ...(report ? { report } : {}),
  });
  const gauge = async (): Promise<number> => (await metrics.podsCaptureBypassable.get()).values[0]?.value ?? 0;
  return { g, events, warnings, gauge };
}

describe('CaptureBypassGuard', () => {
  it('warn: one warning line and one Warning Event per captured pod, the gauge counts them, release uncounts', async () => {
    const { g, events, warnings, gauge } = guard('warn');
    const web = pod('web', [c('app'), c('sidecar', { drop: ['ALL'] })]);
    g.admit(web);
    g.captured(web);
    g.captured(web);
    g.captured(pod('safe', [c('app', { drop: ['ALL'] })]));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.msg).toBe('captured pod can bypass ztunnel capture');
    expect(warnings[0]!.obj).toMatchObject({ pod: 'apps/web', uid: 'uid-web', mode: 'warn', containers: [{ name: 'app', reasons: ['keeps NET_RAW (runtime default)'] }] });
    expect(events).toEqual([
      {
        pod: 'apps/web',
        event: {
          type: 'Warning',
          reason: 'AmbientCaptureBypassable',
          message:
            'captured, but container "app" keeps NET_RAW (runtime default), so it can set SO_MARK to skip ztunnel; fix: securityContext.capabilities.drop: ["NET_RAW"] (PodSecurity "restricted" drops ALL)',
        },
      },
    ]);
    expect(await gauge()).toBe(1);
    g.released('uid-web');
    expect(await gauge()).toBe(0);
  });

  it('warns again when a captured pod gains a container that can bypass (kubectl debug)', async () => {
    const { g, warnings, events, gauge } = guard('warn');
    g.captured(pod('web', [c('app', { drop: ['ALL'] })]));
    expect(warnings).toHaveLength(0);
    g.captured(pod('web', [c('app', { drop: ['ALL'] }), c('debugger', { kind: 'ephemeralContainer', add: ['NET_ADMIN'] })]));
    expect(warnings).toHaveLength(1);
    expect(events[0]!.event.message).toContain('ephemeralContainer "debugger" adds NET_ADMIN');
    expect(await gauge()).toBe(1);
  });

  it('enforce: admit refuses with a message naming the container, capability and fix; a captured (label-enrolled) pod is only warned', async () => {
    const { g, warnings, events, gauge } = guard('enforce');
    const web = pod('web', [c('app')]);
    let err: unknown;
    try {
      g.admit(web);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CniAgentError);
    expect((err as CniAgentError).code).toBe('ERR_AGENT_CAPTURE_BYPASS');
    expect((err as Error).message).toBe(
      'pod apps/web refused (capture-bypass enforce): container "app" keeps NET_RAW (runtime default), so it can set SO_MARK to skip ztunnel; fix: securityContext.capabilities.drop: ["NET_RAW"] (PodSecurity "restricted" drops ALL)',
    );
    // The runtime retries the sandbox: the Event and the log line are not repeated.
    expect(() => g.admit(web)).toThrow(CniAgentError);
    expect(warnings.map((w) => w.msg)).toEqual(['cmdadd refused: pod can bypass ztunnel capture']);
    expect(events.map((e) => e.event.message)).toEqual([expect.stringMatching(/^not started: container "app" keeps NET_RAW/)]);
    expect(await gauge()).toBe(0);
    expect(() => g.admit(pod('safe', [c('app', { drop: ['NET_RAW'] })]))).not.toThrow();
    g.captured(web);
    expect(warnings.map((w) => w.msg)).toContain('captured pod can bypass ztunnel capture');
    expect(await gauge()).toBe(1);
  });

  it('with report: the warning line and Event wait for it (the gauge does not); one for a pod released or flagged anew meanwhile says nothing', async () => {
    const later: (() => Promise<void>)[] = [];
    const { g, warnings, events, gauge } = guard('warn', (work) => void later.push(work));
    g.captured(pod('web', [c('app')]));
    g.captured(pod('gone', [c('app')]));
    g.captured(pod('debugged', [c('app', { drop: ['ALL'] }), c('debugger', { kind: 'ephemeralContainer', add: ['NET_RAW'] })]));
    g.captured(pod('debugged', [c('app', { drop: ['ALL'] }), c('debugger', { kind: 'ephemeralContainer', add: ['NET_ADMIN'] })]));
    expect(await gauge()).toBe(3);
    expect(warnings).toEqual([]);
    expect(events).toEqual([]);
    g.released('uid-gone');
    for (const work of later.splice(0)) await work();
    expect(warnings.map((w) => w.obj.pod)).toEqual(['apps/web', 'apps/debugged']);
    expect(events.map((e) => e.event.message)).toEqual([expect.stringContaining('container "app" keeps NET_RAW'), expect.stringContaining('"debugger" adds NET_ADMIN')]);
  });

  it('off: admits everything, says nothing, counts nothing', async () => {
    const { g, warnings, events, gauge } = guard('off');
    const web = pod('web', [c('app', { privileged: true })]);
    g.admit(web);
    g.captured(web);
    expect(warnings).toEqual([]);
    expect(events).toEqual([]);
    expect(await gauge()).toBe(0);
  });
});
