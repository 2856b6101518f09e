import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PodController, type PodControllerOptions } from './controller.js';
import { AgentMetrics } from './metrics.js';
import { NetnsHints } from './netns-hints.js';
import type { NamespaceInfo, PodInfo } from './pod.js';
import type { PodEvent, PodSource } from './pod-source.js';
import type { NetnsHandle, PodRules, RepairReport, WorkloadHandoff } from './ports.js';

// The state machine against in-memory ports that record what they were asked to do; the real
// ports are exercised as root in test/.

// Stand-ins for netns paths: files, so the vanished-netns check (stat + inode) works on them.
const dir = mkdtempSync(join(tmpdir(), 'weir-ctl-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pod(name: string, over: Partial<PodInfo> = {}): PodInfo {
  writeFileSync(join(dir, name), '');
  return {
    uid: `uid-${name}`,
    name,
    namespace: 'apps',
    labels: {},
    annotations: {},
    hostNetwork: false,
    serviceAccount: 'default',
    nodeName: 'n1',
    ips: ['10.0.0.5'],
    phase: 'Running',
    terminating: false,
    netnsPath: join(dir, name),
    ...over,
  };
}

class Ports {
  calls: string[] = [];
  applyMs = 5;
  failRules = 0;
  failRemove = 0;
  nack = false;
  connected = true;
  active = 0;
  maxActive = 0;
  annotations = new Map<string, string | null>();
  events: PodEvent[] = [];
  namespaces = new Map<string, NamespaceInfo>([['apps', { name: 'apps', labels: { 'istio.io/dataplane-mode': 'ambient' } }]]);
  /** `apply <pod> <netns file>` and `zds add <uid> <netns file>`, with `(closed handle)` when the handle was closed. */
  trace: string[] = [];
  /** Every handle openNetns returned. */
  opened: NetnsHandle[] = [];
  /** Netns files (basename) holding none of any pod's IPs: another pod's netns, a recreated sandbox's path. */
  foreign = new Set<string>();
  /** Netns files asked whether they hold a pod's IPs. */
  ipChecks: string[] = [];
  /** Netns paths whose handle reports another device than the file (same inode): a different netns. */
  wrongDev = new Set<string>();
  /** Holds the ZDS add of a netns path until the promise settles (a slow ztunnel ack). */
  zdsGate: (path: string) => Promise<void> | undefined = () => undefined;

  private where(ns: NetnsHandle): string {
    return `${(ns.path ?? '?').split('/').pop()}${ns.closed ? ' (closed handle)' : ''}`;
  }

  rules: PodRules = {
    setupHost: async () => undefined,
    apply: async (p, ns): Promise<RepairReport> => {
      this.trace.push(`apply ${p.name} ${this.where(ns)}`);
      this.active++;
      this.maxActive = Math.max(this.maxActive, this.active);
      await new Promise((r) => setTimeout(r, this.applyMs));
      this.active--;
      if (this.failRules > 0) {
        this.failRules--;
        throw new Error('iptables-restore: line 3 failed');
      }
      this.calls.push(`apply ${p.name}`);
      return { changed: true, repaired: [] };
    },
    remove: async (p) => {
      if (this.failRemove > 0) {
        this.failRemove--;
        throw new Error('iptables busy');
      }
      this.calls.push(`remove ${p.name}`);
    },
    addHostProbe: async (p, ips) => void this.calls.push(`probe+ ${p.name} ${ips.join(',')}`),
    removeHostProbe: async (p) => void this.calls.push(`probe- ${p.name}`),
    syncHostProbes: async () => [],
    teardownHost: async () => undefined,
  };

  ztunnel: WorkloadHandoff = {
    get connected() {
      return ports.connected;
    },
    addWorkload: async (uid, _info, ns) => {
      if (!this.connected) throw new Error('no ztunnel connected');
      if (this.nack) throw new Error('nack: bind failed');
      await this.zdsGate(ns.path ?? '');
      this.calls.push(`zds add ${uid}`);
      this.trace.push(`zds add ${uid} ${this.where(ns)}`);
    },
    removeWorkload: async (uid) => void this.calls.push(`zds del ${uid}`),
  };

  source: PodSource = {
    start: async () => undefined,
    stop: async () => undefined,
    pods: () => [],
    pod: () => undefined,
    fetchPod: async () => undefined,
    namespace: (name) => this.namespaces.get(name),
    fetchNamespace: async (name) => this.namespaces.get(name),
    setRedirection: async (p, v) => void this.annotations.set(p.uid, v),
    recordEvent: async (_p, e) => void this.events.push(e),
  };
}

let ports: Ports;

function controller(p: Ports, logger?: PodControllerOptions['logger'], over: Partial<PodControllerOptions> = {}): PodController {
  ports = p;
  return new PodController({
    ...(logger ? { logger } : {}),
    ...over,
    source: p.source,
    rules: p.rules,
    ztunnel: p.ztunnel,
    openNetns: (path): NetnsHandle => {
      const st = statSync(path); // throws ENOENT for a missing netns, like openNetns
      let closed = false;
      const id = { dev: st.dev + (p.wrongDev.has(path) ? 1 : 0), ino: st.ino };
      const h: NetnsHandle = { fd: 99, id, path, get closed() { return closed; }, close: () => void (closed = true) };
      p.opened.push(h);
      return h;
    },
    netnsHoldsIp: (ns) => {
      const file = (ns.path ?? '').split('/').pop() ?? '';
      p.ipChecks.push(file);
      return !p.foreign.has(file);
    },
    enrolled: (p, ns) => p.labels['istio.io/dataplane-mode'] !== 'none' && ns?.labels['istio.io/dataplane-mode'] === 'ambient',
    metrics: new AgentMetrics({ processMetrics: false }),
    procRoot: '/nonexistent-proc',
    retryInitialMs: 10,
    retryMaxMs: 40,
    concurrency: 3,
  });
}

/** Polls until cond holds; 10 s, so a loaded machine is not mistaken for a stuck controller. */
async function until(cond: () => boolean): Promise<void> {
  const end = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const now = (): bigint => process.hrtime.bigint();

/** A promise held until `open()`: a slow API write, a ztunnel that has not acked yet. */
function gate(): { held: Promise<void>; open: () => void } {
  let open!: () => void;
  const held = new Promise<void>((r) => (open = r));
  return { held, open };
}

describe('PodController', () => {
  it('cmdAdd resolves only once rules, probe ipset and ztunnel are done and the pod is annotated (as istio-cni answers)', async () => {
    const p = new Ports();
    const c = controller(p);
    const web = pod('web', { ips: [], netnsPath: undefined });
    await c.cmdAdd(web, join(dir, 'web'), ['10.0.0.9'], now(), 2000);
    expect(p.calls).toEqual(['probe+ web 10.0.0.9', 'apply web', 'zds add uid-web']);
    expect(c.status()[0]).toMatchObject({ state: 'captured', netns: join(dir, 'web') });
    expect(p.annotations.get('uid-web')).toBe('enabled');
    // Already annotated (a new sandbox of the same pod): answered without another write.
    let writes = 0;
    p.source.setRedirection = async () => void writes++;
    writeFileSync(join(dir, 'web-2'), '');
    await c.cmdAdd({ ...web, annotations: { 'ambient.istio.io/redirection': 'enabled' } }, join(dir, 'web-2'), ['10.0.0.9'], now(), 2000);
    expect(writes).toBe(0);
    await c.stop();
  });

  it('the redirection annotation holds no capture slot: slow API writes delay the answers, not other pods\' captures', async () => {
    const p = new Ports();
    const c = controller(p);
    const api = gate();
    p.source.setRedirection = async (x, v) => {
      await api.held;
      p.annotations.set(x.uid, v);
    };
    // concurrency 3: with the annotation inside the slot, the fourth capture would wait for the API.
    const pods = ['s0', 's1', 's2', 's3'].map((n) => pod(n));
    let answered = 0;
    const adds = pods.map((x) => c.cmdAdd(x, join(dir, x.name), [], now(), 5000).then(() => void answered++));
    await until(() => pods.every((x) => p.calls.includes(`zds add ${x.uid}`)));
    expect(answered).toBe(0);
    expect(p.annotations.size).toBe(0);
    api.open();
    await Promise.all(adds);
    expect(pods.map((x) => p.annotations.get(x.uid))).toEqual(Array(4).fill('enabled'));
    await c.stop();
  });

  it('report(): an Event write waits while captures run or wait (a burst keeps the CPU for captures), then runs; a failed one throws nowhere', async () => {
    const p = new Ports();
    const c = controller(p);
    const ack = gate();
    let holding = false;
    p.zdsGate = (path) => (path.endsWith('/held') ? ((holding = true), ack.held) : undefined);
    const slow = c.cmdAdd(pod('held'), join(dir, 'held'), [], now(), 5000);
    await until(() => holding);
    const written: string[] = [];
    c.report(async () => void written.push('event'));
    c.report(async () => {
      throw new Error('apiserver: 500');
    });
    await new Promise((r) => setTimeout(r, 200));
    expect(written).toEqual([]);
    ack.open();
    await slow;
    await until(() => written.length === 1);
    await c.stop();
  });

  it('at debug, says where an answered ADD\'s time went: the capture, then the annotation write', async () => {
    const p = new Ports();
    const lines: { obj: Record<string, unknown>; msg: string | undefined }[] = [];
    const logger: PodControllerOptions['logger'] = {
      info: () => undefined,
      warn: () => undefined,
      error: () => undefined,
      debug: (obj: object, msg?: string) => void lines.push({ obj: obj as Record<string, unknown>, msg }),
      child: () => logger!,
    };
    const c = controller(p, logger);
    const slow = gate();
    p.source.setRedirection = async (x, v) => {
      await slow.held;
      p.annotations.set(x.uid, v);
    };
    const x = pod('t1');
    const add = c.cmdAdd(x, join(dir, x.name), [], now(), 5000);
    await until(() => p.calls.includes(`zds add ${x.uid}`));
    await new Promise((r) => setTimeout(r, 60));
    slow.open();
    await add;
    const line = lines.find((l) => l.msg === 'cmdadd answered, pod captured and annotated');
    expect(line?.obj).toMatchObject({ uid: x.uid, name: 't1', capturedMs: expect.any(Number), annotationMs: expect.any(Number) });
    expect(line?.obj.annotationMs as number).toBeGreaterThanOrEqual(50);
    await c.stop();
  });

  it('Events hold at most two of the four API write slots and start only while no CNI ADD waits: an annotation never queues behind them', async () => {
    const p = new Ports();
    const c = controller(p);
    const order: string[] = [];
    p.source.setRedirection = async (x, v) => {
      order.push(`annotate ${x.name}`);
      p.annotations.set(x.uid, v);
    };
    const slow = [gate(), gate(), gate()];
    let started = 0;
    for (const g of slow) {
      c.report(async () => {
        started++;
        await g.held;
      });
    }
    for (let i = 0; i < 6; i++) c.report(async () => void order.push(`event ${i}`));
    await new Promise((r) => setTimeout(r, 20));
    expect(started).toBe(2);
    const ack = gate();
    let holding = false;
    p.zdsGate = (path) => (path.endsWith('/x1') ? ((holding = true), ack.held) : undefined);
    const x = pod('x1');
    const add = c.cmdAdd(x, join(dir, x.name), [], now(), 5000);
    await until(() => holding);
    // An Event ends while the ADD waits for ztunnel: the next one waits too.
    slow[0]?.open();
    await new Promise((r) => setTimeout(r, 120));
    expect(started).toBe(2);
    // Two write slots are free all along: the annotation is written at once.
    ack.open();
    await add;
    expect(order).toEqual(['annotate x1']);
    // Quiet again: the queued Events go, in order.
    await until(() => started === 3);
    for (const g of slow) g.open();
    await until(() => order.length === 7);
    expect(order).toEqual(['annotate x1', ...Array.from({ length: 6 }, (_, i) => `event ${i}`)]);
    await c.stop();
  });

  it('API writes that never answer (a black-holed API connection) give their write slot back at apiWriteTimeoutMs, and never hold up a pod\'s own work', async () => {
    const p = new Ports();
    const c = controller(p, undefined, { apiWriteTimeoutMs: 300 });
    const hung = new Set(['uid-h1', 'uid-h2']);
    const writing: string[] = [];
    p.source.setRedirection = (x, v) => (writing.push(x.uid), hung.has(x.uid) ? new Promise(() => undefined) : (p.annotations.set(x.uid, v), Promise.resolve()));
    // Every write slot taken by writes that never answer: two Events (the most they take), then two annotations.
    for (let i = 0; i < 2; i++) c.report(() => new Promise(() => undefined));
    await new Promise((r) => setTimeout(r, 50));
    const [h1, h2, a, b] = [pod('h1'), pod('h2'), pod('a1'), pod('b1')];
    const hungAdds = Promise.allSettled([h1, h2].map((x) => c.cmdAdd(x, join(dir, x.name), [], now(), 5000)));
    await until(() => writing.includes('uid-h1') && writing.includes('uid-h2'));
    // Settled as they come (a's is rejected while the test still waits for its cleanup).
    const adds = Promise.allSettled([a, b].map((x) => c.cmdAdd(x, join(dir, x.name), [], now(), 5000)));
    await until(() => [a, b].every((x) => p.calls.includes(`zds add ${x.uid}`)));
    // Deleted while its annotation waits for a slot: the cleanup does not wait for the API.
    c.podDeleted(a);
    await until(() => p.calls.includes('zds del uid-a1') && p.calls.includes('probe- a1'));
    // A new sandbox for a pod whose annotation waits is captured at once.
    writeFileSync(join(dir, 'b1-2'), '');
    const b2 = c.cmdAdd(b, join(dir, 'b1-2'), [], now(), 5000);
    await until(() => p.trace.includes('zds add uid-b1 b1-2'));
    // The slots come back: the healthy annotation is written and answers b's ADDs; h1's write, which
    // never answers, is given up at the deadline: its ADD fails (the runtime retries it), the pod stays
    // captured and the annotation is retried.
    const [aAdd, bAdd] = await adds;
    const [h1Add, h2Add] = await hungAdds;
    await b2;
    expect(p.annotations.get('uid-b1')).toBe('enabled');
    expect(bAdd?.status).toBe('fulfilled');
    expect(aAdd).toMatchObject({ status: 'rejected', reason: { code: 'ERR_AGENT_POD_NOT_FOUND' } });
    for (const add of [h1Add, h2Add]) expect(add).toMatchObject({ status: 'rejected', reason: { code: 'ERR_AGENT_KUBE_API', message: expect.stringContaining('no answer within 300 ms') } });
    expect(p.annotations.has('uid-a1')).toBe(false);
    expect(c.status().find((x) => x.uid === 'uid-h1')?.state).toBe('captured');
    hung.clear();
    await until(() => p.annotations.get('uid-h1') === 'enabled' && p.annotations.get('uid-h2') === 'enabled');
    await c.stop();
  });

  it('annotation writes run four at a time (each in parallel is another API connection)', async () => {
    const p = new Ports();
    const c = controller(p);
    let active = 0;
    let most = 0;
    p.source.setRedirection = async (x, v) => {
      most = Math.max(most, ++active);
      await new Promise((r) => setTimeout(r, 20));
      active--;
      p.annotations.set(x.uid, v);
    };
    const pods = Array.from({ length: 8 }, (_, i) => pod(`w${i}`));
    await Promise.all(pods.map((x) => c.cmdAdd(x, join(dir, x.name), [], now(), 2000)));
    await until(() => pods.every((x) => p.annotations.get(x.uid) === 'enabled'));
    expect(most).toBe(4);
    await c.stop();
  });

  it('a failed annotation is written again later; the pod stays captured meanwhile', async () => {
    const p = new Ports();
    const c = controller(p);
    let failures = 2;
    p.source.setRedirection = async (x, v) => {
      if (failures-- > 0) throw new Error('apiserver: 500');
      p.annotations.set(x.uid, v);
    };
    const web = pod('ann');
    // Not answered 200 unannotated: the ADD fails with the API's error (the runtime retries it).
    await expect(c.cmdAdd(web, join(dir, 'ann'), [], now(), 2000)).rejects.toMatchObject({
      code: 'ERR_AGENT_KUBE_API',
      message: expect.stringContaining('captured, but writing its ambient.istio.io/redirection annotation failed: apiserver: 500'),
    });
    await until(() => p.annotations.get('uid-ann') === 'enabled');
    expect(failures).toBe(-1);
    expect(c.status()[0]?.state).toBe('captured');
    expect(p.calls.filter((x) => x === 'zds add uid-ann')).toHaveLength(1);
    await c.stop();
  });

  it('cmdAdd never resolves for a pod it did not capture: the agent found it enrolled, the cache (not caught up) says not', async () => {
    const p = new Ports();
    const c = controller(p);
    // The agent looked up namespace "fresh" (labeled ambient) from the API; its watch has not delivered it yet.
    const web = pod('web', { namespace: 'fresh', netnsPath: undefined });
    await expect(c.cmdAdd(web, join(dir, 'web'), ['10.0.0.9'], now(), 2000)).rejects.toMatchObject({
      code: 'ERR_AGENT_NOT_CAPTURED',
      message: expect.stringContaining('pod fresh/web is not enrolled as the pod source has it now'),
    });
    expect(p.calls).not.toContain('zds add uid-web');
    await c.stop();
  });

  it('a rules failure fails the cmdAdd, leaves the pod pending with an Event, and the retry captures it', async () => {
    const p = new Ports();
    p.failRules = 1;
    const c = controller(p);
    const web = pod('web', { netnsPath: undefined });
    await expect(c.cmdAdd(web, join(dir, 'web'), [], now(), 2000)).rejects.toThrow(/applying in-pod rules for apps\/web .*iptables-restore: line 3 failed/);
    expect(c.status()[0]?.state).toBe('pending');
    await until(() => c.status()[0]?.state === 'captured' && p.events.length > 0);
    expect(p.events[0]).toMatchObject({ type: 'Warning', reason: 'AmbientCaptureFailed' });
    await c.stop();
  });

  it('a netns that vanishes mid-capture fails the capture instead of capturing an orphan', async () => {
    const p = new Ports();
    const c = controller(p);
    const web = pod('web');
    const apply = p.rules.apply;
    p.rules.apply = async (pd, ns) => {
      rmSync(join(dir, 'web'));
      return apply(pd, ns);
    };
    await expect(c.cmdAdd(web, join(dir, 'web'), [], now(), 2000)).rejects.toThrow(/vanished mid-capture/);
    expect(p.calls).not.toContain('zds add uid-web');
    await c.stop();
  });

  it('a nack keeps the pod pending and retried; ztunnel absence waits for the snapshot instead', async () => {
    const p = new Ports();
    p.nack = true;
    const c = controller(p);
    c.podChanged(pod('web'));
    await until(() => (c.status()[0]?.lastError ?? '').includes('nack: bind failed'));
    expect(c.status()[0]?.state).toBe('pending');
    p.nack = false;
    await until(() => c.status()[0]?.state === 'captured');

    p.connected = false;
    c.podChanged(pod('db'));
    await until(() => (c.status().find((s) => s.name === 'db')?.lastError ?? '').includes('no ztunnel connected'));
    await new Promise((r) => setTimeout(r, 100));
    expect(p.calls.filter((x) => x === 'apply db')).toHaveLength(1); // no backoff loop while ztunnel is away
    p.connected = true;
    c.retryPending();
    await until(() => c.status().find((s) => s.name === 'db')?.state === 'captured');
    await c.stop();
  });

  it('a nack of a captured pod in a later snapshot makes it pending and retried', async () => {
    const p = new Ports();
    const c = controller(p);
    c.podChanged(pod('web'));
    await until(() => c.status()[0]?.state === 'captured');
    p.calls = [];
    c.nacked('uid-web', 'bind 15001: address in use');
    expect(c.status()[0]).toMatchObject({ state: 'pending', lastError: 'ztunnel nacked the pod in its snapshot: bind 15001: address in use' });
    await until(() => c.status()[0]?.state === 'captured');
    expect(p.calls).toContain('zds add uid-web');
    c.nacked('uid-unknown', 'x');
    await c.stop();
  });

  it('waits for the CNI event for a pod without network yet; never enrolls opted-out pods', async () => {
    const p = new Ports();
    const c = controller(p);
    c.podChanged(pod('new', { ips: [], netnsPath: undefined }));
    c.podChanged(pod('optout', { labels: { 'istio.io/dataplane-mode': 'none' } }));
    await new Promise((r) => setTimeout(r, 50));
    expect(p.calls).toEqual([]);
    expect(c.status().map((s) => s.state)).toEqual(['idle', 'idle']);
    await c.stop();
  });

  it('a pod enrolled again before the watch shows its annotation removed gets it written again before its ADD is answered', async () => {
    const p = new Ports();
    const c = controller(p);
    const web = pod('again');
    await c.cmdAdd(web, join(dir, 'again'), [], now(), 2000);
    expect(p.annotations.get('uid-again')).toBe('enabled');
    // Released: the annotation is removed, but the source's copy of the pod still shows it.
    const stale = { 'ambient.istio.io/redirection': 'enabled' };
    c.podChanged(pod('again', { labels: { 'istio.io/dataplane-mode': 'none' }, annotations: stale }));
    await until(() => c.status()[0]?.state === 'idle');
    expect(p.annotations.get('uid-again')).toBeNull();
    // Enrolled again with a new sandbox, the cache not caught up yet.
    writeFileSync(join(dir, 'again-2'), '');
    await c.cmdAdd(pod('again', { annotations: stale }), join(dir, 'again-2'), [], now(), 2000);
    expect(p.annotations.get('uid-again')).toBe('enabled');
    await c.stop();
  });

  it('releases on label removal (retrying a failed removal), forgets on deletion without netns work', async () => {
    const p = new Ports();
    const c = controller(p);
    c.podChanged(pod('web'));
    await until(() => c.status()[0]?.state === 'captured');
    p.calls = [];
    p.failRemove = 1;
    c.podChanged(pod('web', { labels: { 'istio.io/dataplane-mode': 'none' }, annotations: { 'ambient.istio.io/redirection': 'enabled' } }));
    await until(() => c.status()[0]?.state === 'idle');
    expect(p.calls).toEqual(['remove web', 'zds del uid-web', 'probe- web']);
    expect(p.annotations.get('uid-web')).toBeNull();

    c.podChanged(pod('db'));
    await until(() => c.status().find((s) => s.name === 'db')?.state === 'captured');
    p.calls = [];
    c.podDeleted(pod('db'));
    await until(() => !c.status().some((s) => s.name === 'db'));
    expect(p.calls).toEqual(['zds del uid-db', 'probe- db']);
    await c.stop();
  });

  it('after a restart, a pod still annotated but no longer enrolled is released', async () => {
    const p = new Ports();
    const c = controller(p);
    c.podChanged(pod('left', { labels: { 'istio.io/dataplane-mode': 'none' }, annotations: { 'ambient.istio.io/redirection': 'enabled' } }), 'startup');
    await until(() => p.annotations.get('uid-left') === null);
    expect(p.calls).toEqual(['remove left', 'zds del uid-left', 'probe- left']);
    expect(c.status()[0]?.state).toBe('idle');
    await c.stop();
  });

  it('bounds concurrent captures and captures every pod of a burst', async () => {
    const p = new Ports();
    const c = controller(p);
    for (let i = 0; i < 20; i++) c.podChanged(pod(`p${i}`));
    await until(() => c.status().filter((s) => s.state === 'captured').length === 20);
    expect(p.maxActive).toBeLessThanOrEqual(3);
    expect(p.maxActive).toBeGreaterThan(1);
    await c.stop();
  });

  it('a drift pass checks two pods at a time, so a CNI ADD arriving meanwhile does not wait for the whole pass', async () => {
    const p = new Ports();
    const c = controller(p);
    const pods = Array.from({ length: 12 }, (_, i) => pod(`d${i}`));
    await Promise.all(pods.map((x) => c.cmdAdd(x, join(dir, x.name), [], now(), 2000)));
    p.calls = [];
    p.maxActive = 0;
    p.applyMs = 20;
    const pass = c.checkDrift();
    await until(() => p.calls.length >= 2);
    const late = pod('late');
    await c.cmdAdd(late, join(dir, 'late'), [], now(), 2000);
    // The ADD went through with most of the pass still to come (at most 2 drift checks ahead of it).
    expect(p.calls.filter((x) => x.startsWith('apply d')).length).toBeLessThanOrEqual(6);
    expect(await pass).toBe(12);
    expect(p.calls.filter((x) => x.startsWith('apply d'))).toHaveLength(12);
    expect(p.maxActive).toBeLessThanOrEqual(3);
    await c.stop();
  });

  it('a burst past the /cmdadd deadline: pods still queued are not captured at their turn but retried later', async () => {
    const p = new Ports();
    p.applyMs = 300;
    const lines: { msg: string; name?: string }[] = [];
    const log = {
      info: (o: object, msg?: string) => void lines.push({ msg: msg ?? '', ...(o as { name?: string }) }),
      warn: () => undefined,
      error: () => undefined,
      debug: () => undefined,
      child: () => log,
    };
    const c = controller(p, log);
    // Concurrency 3, 300 ms each, a 450 ms deadline: 1-3 make it, 4-6 are capturing when it
    // passes, 7-9 are still queued.
    const pods = Array.from({ length: 9 }, (_, i) => pod(`b${i + 1}`));
    const answers = await Promise.allSettled(pods.map((x) => c.cmdAdd(x, x.netnsPath as string, x.ips, now(), 450)));
    expect(answers.map((a) => a.status)).toEqual([...Array(3).fill('fulfilled'), ...Array(6).fill('rejected')]);
    await until(() => c.status().filter((s) => s.state === 'captured').length === 9);
    const deferred = lines.filter((l) => l.msg.startsWith('cmdadd answered (timed out) before its capture began')).map((l) => l.name);
    expect(deferred.sort()).toEqual(['b7', 'b8', 'b9']);
    await c.stop();
  });

  it('a netns that cannot be found leaves the pod pending, naming what was tried', async () => {
    const p = new Ports();
    const c = controller(p);
    c.podChanged(pod('ghost', { netnsPath: join(dir, 'gone') }));
    await until(() => (c.status()[0]?.lastError ?? '').includes('not found'));
    expect(c.status()[0]?.lastError).toMatch(/netns of pod apps\/ghost \(uid uid-ghost\) not found: .*gone: ENOENT/);
    expect(c.status()[0]?.state).toBe('pending');
    await c.stop();
  });

  // Review 5 #1: a new sandbox's ADD arriving while ztunnel is slow to ack the old sandbox.
  describe('a new sandbox while the previous one is being handed to ztunnel', () => {
    function sandboxes(): { s1: string; s2: string } {
      const s1 = join(dir, 's1');
      const s2 = join(dir, 's2');
      writeFileSync(s1, '');
      writeFileSync(s2, '');
      return { s1, s2 };
    }

    it("the new sandbox's ADD is answered only once its own netns has rules and was acked by ztunnel", async () => {
      const p = new Ports();
      const c = controller(p);
      const { s1, s2 } = sandboxes();
      const ack = gate();
      p.zdsGate = (path) => (path === s1 ? ack.held : undefined);
      const web = pod('web', { netnsPath: undefined });
      await expect(c.cmdAdd(web, s1, [], now(), 100)).rejects.toThrow(/not captured within 100 ms/);
      const add2 = c.cmdAdd(web, s2, [], now(), 3000).then(() => [...p.trace]);
      await new Promise((r) => setTimeout(r, 30));
      ack.open();
      const atAnswer = await add2;
      expect(atAnswer).toEqual(['apply web s1', 'zds add uid-web s1', 'apply web s2', 'zds add uid-web s2']);
      expect(c.status()[0]).toMatchObject({ state: 'captured', netns: s2 });
      // The old sandbox's handle is closed; the drift pass works on the new one and finds nothing to do.
      expect(p.opened.map((h) => `${h.path === s1 ? 's1' : 's2'} ${h.closed ? 'closed' : 'open'}`)).toEqual(['s1 closed', 's2 open']);
      p.trace = [];
      await c.checkDrift();
      expect(p.trace).toEqual(['apply web s2']);
      await c.stop();
    });

    it("a failure in the old sandbox after the new ADD arrived does not fail the new ADD", async () => {
      const p = new Ports();
      const c = controller(p);
      const { s1, s2 } = sandboxes();
      let fail!: (err: Error) => void;
      const gate = new Promise<void>((_, r) => (fail = r));
      p.zdsGate = (path) => (path === s1 ? gate : undefined);
      const web = pod('web', { netnsPath: undefined });
      await expect(c.cmdAdd(web, s1, [], now(), 100)).rejects.toThrow(/not captured within 100 ms/);
      const add2 = c.cmdAdd(web, s2, [], now(), 3000);
      await new Promise((r) => setTimeout(r, 30));
      fail(new Error('ack deadline passed'));
      await add2;
      expect(p.trace.slice(-2)).toEqual(['apply web s2', 'zds add uid-web s2']);
      expect(c.status()[0]).toMatchObject({ state: 'captured', netns: s2, lastError: undefined });
      await c.stop();
    });
  });

  it('the drift pass captures again a captured pod whose netns handle is gone, instead of skipping or using it', async () => {
    const p = new Ports();
    const c = controller(p);
    const web = pod('web');
    await c.cmdAdd(web, join(dir, 'web'), [], now(), 2000);
    p.opened[0]?.close();
    p.trace = [];
    expect(await c.checkDrift()).toBe(1);
    expect(p.trace).toEqual(['apply web web', 'zds add uid-web web']);
    expect(c.status()[0]?.state).toBe('captured');
    await c.stop();
  });

  it('a netns whose device differs from the file at its path (same inode) is a replaced netns', async () => {
    const p = new Ports();
    p.wrongDev.add(join(dir, 'web'));
    const c = controller(p);
    await expect(c.cmdAdd(pod('web'), join(dir, 'web'), [], now(), 2000)).rejects.toThrow(/was replaced mid-capture \(dev \d+ inode \d+, opened dev \d+ inode \d+\)/);
    expect(p.calls).not.toContain('zds add uid-web');
    await c.stop();
  });

  it('a failed rules apply on a captured pod does not claim its traffic is blocked: a rolled-back family flows', async () => {
    const p = new Ports();
    const warns: string[] = [];
    const log = {
      info: () => undefined,
      warn: (_o: object, msg?: string) => void warns.push(msg ?? ''),
      error: () => undefined,
      debug: () => undefined,
      child: () => log,
    };
    const c = controller(p, log);
    c.podChanged(pod('web'));
    await until(() => c.status()[0]?.state === 'captured');
    p.failRules = 1;
    c.nacked('uid-web', 'bind 15001: address in use');
    await until(() => warns.some((m) => m.startsWith('pod pending: applying in-pod rules failed')));
    const msg = warns.find((m) => m.startsWith('pod pending: applying in-pod rules failed')) ?? '';
    expect(msg).toContain('rolled back');
    expect(msg).not.toContain('traffic is blocked until it completes');
    await until(() => c.status()[0]?.state === 'captured');
    await c.stop();
  });

  describe('a netns path that is not the ADD\'s (a hint, the pods file) is used only when it holds one of the pod\'s IPs', () => {
    function warnings(): { lines: { obj: Record<string, unknown>; msg: string | undefined }[]; logger: PodControllerOptions['logger'] } {
      const lines: { obj: Record<string, unknown>; msg: string | undefined }[] = [];
      const logger: PodControllerOptions['logger'] = {
        info: () => undefined,
        warn: (obj: object, msg?: string) => void lines.push({ obj: obj as Record<string, unknown>, msg }),
        error: () => undefined,
        debug: () => undefined,
        child: () => logger!,
      };
      return { lines, logger };
    }

    it('a hint naming another pod\'s netns is removed and logged, never captured; the pod stays pending naming why', async () => {
      const p = new Ports();
      pod('other');
      p.foreign.add('other');
      const hints = new NetnsHints(undefined);
      hints.set('uid-web', join(dir, 'other'));
      const { lines, logger } = warnings();
      const c = controller(p, logger, { hints });
      c.podChanged(pod('web', { netnsPath: undefined }));
      await until(() => (c.status()[0]?.lastError ?? '').includes('not found'));
      expect(p.ipChecks).toEqual(['other']);
      expect(p.trace).toEqual([]);
      expect(hints.get('uid-web')).toBeUndefined();
      expect(c.status()[0]).toMatchObject({ state: 'pending' });
      expect(c.status()[0]?.lastError).toContain(`${join(dir, 'other')} (hint): it holds none of the pod's IPs 10.0.0.5`);
      const line = lines.find((l) => l.msg?.startsWith('netns path not proven the pod\'s'));
      expect(line?.obj).toMatchObject({ uid: 'uid-web', netns: join(dir, 'other'), from: 'hint', reason: expect.stringContaining("holds none of the pod's IPs 10.0.0.5") });
      await c.stop();
    });

    it('a pods-file path naming another netns is not captured either', async () => {
      const p = new Ports();
      pod('recreated');
      p.foreign.add('recreated');
      const c = controller(p);
      c.podChanged(pod('web', { netnsPath: join(dir, 'recreated') }));
      await until(() => (c.status()[0]?.lastError ?? '').includes('not found'));
      expect(p.trace).toEqual([]);
      expect(c.status()[0]?.lastError).toContain(`${join(dir, 'recreated')} (pods-file): it holds none of the pod's IPs`);
      await c.stop();
    });

    it('a valid hint is captured (no scan needed); the ADD\'s own netns is taken without the check', async () => {
      const p = new Ports();
      pod('sandbox');
      const hints = new NetnsHints(undefined);
      hints.set('uid-web', join(dir, 'sandbox'));
      const c = controller(p, undefined, { hints });
      c.podChanged(pod('web', { netnsPath: undefined }));
      await until(() => c.status()[0]?.state === 'captured');
      expect(p.trace).toEqual(['apply web sandbox', 'zds add uid-web sandbox']);
      expect(p.ipChecks).toEqual(['sandbox']);
      expect(hints.get('uid-web')).toBe(join(dir, 'sandbox'));
      // The runtime's CNI_NETNS is authoritative (its IPs may not even be on it in a fake like this).
      pod('s2');
      p.foreign.add('s2');
      await c.cmdAdd(pod('web', { netnsPath: undefined }), join(dir, 's2'), ['10.0.0.5'], now(), 2000);
      expect(p.trace.slice(-2)).toEqual(['apply web s2', 'zds add uid-web s2']);
      expect(p.ipChecks).toEqual(['sandbox']);
      await c.stop();
    });

    it('with no IPs known, a hint or pods-file path proves nothing and is not used (the /proc scan decides)', async () => {
      const p = new Ports();
      pod('quiet');
      const hints = new NetnsHints(undefined);
      hints.set('uid-web', join(dir, 'quiet'));
      const c = controller(p, undefined, { hints });
      c.podChanged(pod('web', { ips: [], netnsPath: join(dir, 'quiet') }));
      await until(() => (c.status()[0]?.lastError ?? '').includes('not found'));
      expect(p.trace).toEqual([]);
      expect(p.ipChecks).toEqual([]);
      expect(c.status()[0]?.lastError).toContain('the pod has no IPs yet to check it against');
      expect(c.status()[0]?.lastError).toContain('/proc scan');
      await c.stop();
    });
  });
});
