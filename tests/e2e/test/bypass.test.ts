/**
 * Issue 9, bypass suite: from a captured pod, and from outside it, try to reach every kind of destination
 * directly. Each attempt must be proxied (ztunnel's access log names it) or fail; none may reach its
 * destination unseen. Last, killing ztunnel must make pod traffic fail, never flow uncaptured.
 *
 * "Reached" is decided by the destination (a socat listener logs every accepted connection and answers a
 * unique banner); "seen" by the ztunnel logs of both nodes naming the destination port. In both
 * control-plane modes (local file, test control plane over xDS).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Topology } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTROL_PLANE_MODES, Sandbox, eventually, type Background, type SandboxPod } from '../src/sandbox.js';

describe.each(CONTROL_PLANE_MODES)('control plane %s', (mode) => {
  const sandbox = new Sandbox('b', mode);
  let sleep: SandboxPod;
  let httpbin: SandboxPod;
  let legacy: SandboxPod;
  const listeners = new Map<number, Background>();

  /** Port → where it listens; each port is unique so a log line names exactly one listener. */
  const PORTS = { legacy: 9100, node1: 9101, node2: 9102, sleep: 9103, legacy6: 9106, node1v6: 9107, sleep6: 9108 } as const;

  beforeAll(async () => {
    await sandbox.up();
    const status = await sandbox.status();
    const pod = (name: string): SandboxPod => status.pods.find((p) => p.name === name) ?? (() => { throw new Error(`no pod ${name}`); })();
    sleep = pod('sleep');
    httpbin = pod('httpbin');
    legacy = pod('legacy-client');
    listeners.set(PORTS.legacy, await sandbox.listener('legacy-client', PORTS.legacy, 'reached-9100'));
    listeners.set(PORTS.node1, await sandbox.listener('node-1', PORTS.node1, 'reached-9101'));
    listeners.set(PORTS.node2, await sandbox.listener('node-2', PORTS.node2, 'reached-9102'));
    listeners.set(PORTS.sleep, await sandbox.listener('sleep', PORTS.sleep, 'reached-9103'));
    listeners.set(PORTS.legacy6, await sandbox.listener('legacy-client', PORTS.legacy6, 'reached-9106', { ipv6: true }));
    listeners.set(PORTS.node1v6, await sandbox.listener('node-1', PORTS.node1v6, 'reached-9107', { ipv6: true }));
    listeners.set(PORTS.sleep6, await sandbox.listener('sleep', PORTS.sleep6, 'reached-9108', { ipv6: true }));
  });

  afterAll(async () => {
    await sandbox.down();
  });

  interface Attempt {
    reached: boolean;
    seen: boolean;
    detail: string;
  }

  /** Connect from `from` to host:port; `reached` = the banner came back, `seen` = a ztunnel logged that port. */
  async function attempt(from: string, host: string, port: number, options: { ipv6Iface?: string } = {}): Promise<Attempt> {
    const logsBefore = await ztunnelLogs();
    const address = options.ipv6Iface ? `TCP6:[${host}%${options.ipv6Iface}]:${port},connect-timeout=5` : `TCP:${host}:${port},connect-timeout=5`;
    const r = await sandbox.exec(from, ['socat', '-T', '5', '-', address], { timeoutMs: 30_000 });
    const reached = r.out.includes(`reached-${port}`);
    const logLine = (text: string): string | undefined =>
      text
        .split('\n')
        .find((l) => /connection (complete|failed)/.test(l) && new RegExp(`dst\\.addr=\\S*:${port}\\b`).test(l));
    let seen = false;
    let line: string | undefined;
    if (reached) {
      // The access log is written when the connection closes: give it a moment.
      line = await eventually(`a ztunnel log line for port ${port}`, async () => logLine(newText(logsBefore, await ztunnelLogs())), 5_000).catch(() => undefined);
      seen = line !== undefined;
    } else {
      line = logLine(newText(logsBefore, await ztunnelLogs()));
      seen = line !== undefined;
    }
    return { reached, seen, detail: `${from} -> ${host}:${port}: exit ${r.code}, out ${JSON.stringify(r.out.trim())}, err ${JSON.stringify(r.err.trim().slice(0, 200))}, ztunnel: ${line ?? 'nothing logged'}` };
  }

  /**
   * The two ztunnel logs, read from the files `weirctl sandbox logs` prints (the e2e suite uses the command;
   * here it is read dozens of times, and each CLI start costs a second on a loaded machine).
   */
  async function ztunnelLogs(): Promise<Record<string, string>> {
    const topology = await Topology.attach(join(sandbox.dir, sandbox.name));
    const read = async (node: string): Promise<string> => {
      const proc = topology.process(`${node}.ztunnel`);
      if (!proc) throw new Error(`sandbox ${sandbox.name} has no ${node}.ztunnel process record`);
      return readFile(proc.logFile, 'utf8');
    };
    return { 'node-1': await read('node-1'), 'node-2': await read('node-2') };
  }

  function newText(before: Record<string, string>, after: Record<string, string>): string {
    return Object.keys(after)
      .map((k) => (after[k] ?? '').slice((before[k] ?? '').length))
      .join('\n');
  }

  /** The acceptance rule: proxied (seen) or refused; never reached unseen. */
  function expectNoBypass(a: Attempt): void {
    expect(a.reached && !a.seen, `reached its destination without ztunnel seeing it: ${a.detail}`).toBe(false);
  }

  async function linkLocal(target: string, iface: string): Promise<string> {
    const out = await sandbox.execOk(target, ['ip', '-6', '-o', 'addr', 'show', 'dev', iface, 'scope', 'link']);
    const m = /inet6 (fe80::[0-9a-f:]+)\//.exec(out);
    if (!m?.[1]) throw new Error(`${target} has no IPv6 link-local address on ${iface}: ${out}`);
    return m[1];
  }

  describe('from a captured pod (sleep), direct connections are proxied or refused', () => {
    it('another pod on another node, on its app port (httpbin:8000): proxied as HBONE', async () => {
      const logsBefore = await ztunnelLogs();
      const r = await sandbox.exec('sleep', ['curl', '-sS', '-m', '10', `http://${httpbin.ip}:8000/bypass`], { timeoutMs: 30_000 });
      expect(r.code, r.err).toBe(0);
      const text = await eventually('the outbound access log line', async () => {
        const t = newText(logsBefore, await ztunnelLogs());
        return /direction=outbound/.test(t) && /direction=inbound/.test(t) ? t : undefined;
      }, 8_000);
      expect(text).toMatch(new RegExp(`dst\\.addr=${httpbin.ip.replaceAll('.', '\\.')}:8000 dst\\.hbone_addr=`));
    });

    it('another pod on the same node, not in the mesh (legacy-client:9100): proxied (passthrough, logged)', async () => {
      const a = await attempt('sleep', legacy.ip, PORTS.legacy);
      expectNoBypass(a);
      expect(a.reached, a.detail).toBe(true);
      expect(a.seen, a.detail).toBe(true);
    });

    it('the other node\'s address (172.18.0.12:9102): proxied', async () => {
      const a = await attempt('sleep', (await sandbox.node('node-2')).ip, PORTS.node2);
      expectNoBypass(a);
      expect(a.seen, a.detail).toBe(true);
    });

    it('its own node: node address and the pod gateway (host IP, :9101): proxied', async () => {
      for (const host of [(await sandbox.node('node-1')).ip, sleep.ip.replace(/\.\d+$/, '.1')]) {
        const a = await attempt('sleep', host, PORTS.node1);
        expectNoBypass(a);
        expect(a.seen, a.detail).toBe(true);
      }
    });

    it('ztunnel\'s own ports at another pod (httpbin:15006, :15008) do not reach httpbin\'s app unseen', async () => {
      for (const port of [15006, 15008]) {
        const r = await sandbox.exec('sleep', ['curl', '-sS', '-m', '5', `http://${httpbin.ip}:${port}/`], { timeoutMs: 30_000 });
        expect(r.out, `sleep -> httpbin:${port} got an answer from the app`).not.toContain('"server":"httpbin"');
      }
    });

    it('the probe address 169.254.7.127 is not a way out', async () => {
      const a = await attempt('sleep', '169.254.7.127', PORTS.node1);
      expectNoBypass(a);
    });

    it('IPv6 link-local to a same-node pod and to the node: proxied or refused (IPv6 is on in the pod)', async () => {
      expect(await sandbox.execOk('sleep', ['sysctl', '-n', 'net.ipv6.conf.all.disable_ipv6'])).toBe('0\n');
      const results = [
        await attempt('sleep', await linkLocal('legacy-client', 'eth0'), PORTS.legacy6, { ipv6Iface: 'eth0' }),
        await attempt('sleep', await linkLocal('node-1', 'cni0'), PORTS.node1v6, { ipv6Iface: 'eth0' }),
      ];
      for (const a of results) expect.soft(a.reached && !a.seen, `reached its destination without ztunnel seeing it: ${a.detail}`).toBe(false);
    });
  });

  describe('from outside, a captured pod\'s app ports are reached only through 15006/15008', () => {
    it('legacy pod -> sleep:9103 (same node) goes through sleep\'s 15006', async () => {
      const a = await attempt('legacy-client', sleep.ip, PORTS.sleep);
      expectNoBypass(a);
      expect(a.reached && a.seen, a.detail).toBe(true);
      // The app saw the real client (not the node, not 169.254.7.127).
      expect(listeners.get(PORTS.sleep)?.output()).toContain(`accepting connection from AF=2 ${legacy.ip}:`);
    });

    it('legacy pod -> httpbin:8000 (other node) goes through httpbin\'s 15006', async () => {
      const logsBefore = await ztunnelLogs();
      const r = await sandbox.exec('legacy-client', ['curl', '-sS', '-m', '10', `http://${httpbin.ip}:8000/from-legacy`], { timeoutMs: 30_000 });
      expect(r.code, r.err).toBe(0);
      await eventually('node-2 ztunnel to log the inbound connection', async () => (new RegExp(`src\\.addr=${legacy.ip.replaceAll('.', '\\.')}:\\d+ .*dst\\.addr=${httpbin.ip.replaceAll('.', '\\.')}:8000 .*direction=inbound`).test(newText(logsBefore, await ztunnelLogs())) ? true : undefined), 8_000);
    });

    it('legacy pod -> sleep over IPv6 link-local: proxied or refused', async () => {
      expectNoBypass(await attempt('legacy-client', await linkLocal('sleep', 'eth0'), PORTS.sleep6, { ipv6Iface: 'eth0' }));
    });

    it('node-1 netns -> httpbin:8000 (a pod on another node) goes through httpbin\'s 15006', async () => {
      const logsBefore = await ztunnelLogs();
      const r = await sandbox.exec('node-1', ['curl', '-sS', '-m', '10', `http://${httpbin.ip}:8000/from-node-1`], { timeoutMs: 30_000 });
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ client: { address: '172.18.0.11' } });
      await eventually('node-2 ztunnel to log the inbound connection from node-1', async () => (/src\.addr=172\.18\.0\.11:\d+ .*dst\.addr=\S+:8000 .*direction=inbound/.test(newText(logsBefore, await ztunnelLogs())) ? true : undefined), 8_000);
    });

    it('node-2 netns -> httpbin:8000 (its own pod) is the kubelet-probe exemption: SNAT to 169.254.7.127, nothing else', async () => {
      // The seed's design: the node's own sockets reach its pods from 169.254.7.127, which the pod accepts
      // unproxied (kubelet probes). It must be only that: identifiable at the app, and only for node-local sockets.
      const r = await sandbox.exec('node-2', ['curl', '-sS', '-m', '10', `http://${httpbin.ip}:8000/probe`], { timeoutMs: 30_000 });
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ client: { address: '169.254.7.127' } });
    });
  });

  describe('killing ztunnel', () => {
    it('makes the pod\'s traffic fail, never flow uncaptured', async () => {
      const node1 = await sandbox.node('node-1');
      expect(node1.ztunnelPid, 'node-1 ztunnel pid').toEqual(expect.any(Number));
      const topology = await Topology.attach(join(sandbox.dir, sandbox.name));
      const wire = await topology.capture(topology.node('node-1').netnsPath, { name: `kill-${process.pid}`, iface: 'any', filter: 'tcp' });
      const acceptedBefore = [...listeners].map(([port, l]) => [port, (l.output().match(/accepting connection/g) ?? []).length] as const);
      process.kill(node1.ztunnelPid as number, 'SIGKILL');
      await eventually('node-1 ztunnel to be gone', async () => ((await sandbox.node('node-1')).ztunnelPid === null ? true : undefined), 10_000);
      try {
        const curl = await sandbox.exec('sleep', ['curl', '-sS', '-m', '5', `http://${httpbin.ip}:8000/after-kill`], { timeoutMs: 30_000 });
        expect(curl.code, `sleep -> httpbin still works with ztunnel dead: ${curl.out}`).not.toBe(0);
        for (const [from, host, port] of [
          ['sleep', legacy.ip, PORTS.legacy],
          ['sleep', node1.ip, PORTS.node1],
          ['sleep', '172.18.0.12', PORTS.node2],
          ['legacy-client', sleep.ip, PORTS.sleep],
        ] as const) {
          const r = await sandbox.exec(from, ['socat', '-T', '3', '-', `TCP:${host}:${port},connect-timeout=5`], { timeoutMs: 30_000 });
          expect(r.out, `${from} -> ${host}:${port} reached its destination with ztunnel dead`).not.toContain(`reached-${port}`);
        }
      } finally {
        await wire.stop();
      }
      for (const [port, count] of acceptedBefore) {
        expect((listeners.get(port)?.output().match(/accepting connection/g) ?? []).length, `listener :${port} accepted a connection with ztunnel dead`).toBe(count);
      }
      const raw = await wire.bytes();
      expect(raw.includes('after-kill'), 'the request left the node in plaintext').toBe(false);
      // httpbin's node still works: legacy -> httpbin is captured by node-2's ztunnel.
      expect((await sandbox.exec('legacy-client', ['curl', '-sS', '-m', '10', `http://${httpbin.ip}:8000/`], { timeoutMs: 30_000 })).code).toBe(0);
    });
  });
});
