/**
 * Issue 9, same node: `weirctl sandbox up --nodes 1` puts sleep and httpbin on node-1. Their traffic still
 * goes through both pods' ztunnel listeners as HBONE, and what crosses the node's bridge is TLS on 15008.
 * In both control-plane modes (local file, test control plane over xDS).
 */
import { join } from 'node:path';
import { Topology } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePcap, parseTlsRecords, tcpStreams } from '../src/pcap.js';
import { expectConfigSource } from '../src/control-plane.js';
import { CONTROL_PLANE_MODES, Sandbox, type SandboxPod } from '../src/sandbox.js';

describe.each(CONTROL_PLANE_MODES)('control plane %s', (mode) => {
  const sandbox = new Sandbox('s', mode);
  let sleep: SandboxPod;
  let httpbin: SandboxPod;

  beforeAll(async () => {
    await sandbox.up(['--nodes', '1']);
    sleep = await sandbox.pod('sleep');
    httpbin = await sandbox.pod('httpbin');
  });

  afterAll(async () => {
    await sandbox.down();
  });

  describe('same-node traffic', () => {
    it('sleep -> httpbin on one node is HBONE through both pods\' listeners; the bridge carries only TLS 1.3 on 15008', async () => {
      expect([sleep.node, httpbin.node, sleep.captured, httpbin.captured]).toEqual(['node-1', 'node-1', true, true]);
      const topology = await Topology.attach(join(sandbox.dir, sandbox.name));
      // `any` in the node netns: every veth port of cni0 (the bridge itself sees only frames for the node).
      const wire = await topology.capture(topology.node('node-1').netnsPath, { name: `same-${process.pid}`, iface: 'any', filter: 'tcp' });
      let r;
      try {
        r = await sandbox.exec('sleep', ['curl', '-sS', '-m', '10', `http://${httpbin.ip}:8000/same-node-path`], { timeoutMs: 30_000 });
      } finally {
        await wire.stop();
      }
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ path: '/same-node-path', client: { address: sleep.ip } });

      const raw = await wire.bytes();
      expect(raw.includes('same-node-path'), 'the request crossed the bridge in plaintext').toBe(false);
      const streams = tcpStreams(parsePcap(raw)).filter((s) => [s.src, s.dst].includes(sleep.ip) && [s.src, s.dst].includes(httpbin.ip));
      expect(streams.length).toBeGreaterThan(0);
      for (const s of streams) {
        expect(s.dport === 15008 || s.sport === 15008, `${s.key} is not to or from 15008`).toBe(true);
        if (s.bytes.length === 0) continue;
        const tls = parseTlsRecords(s.bytes);
        expect(tls.error, `${s.key}: ${tls.error}`).toBeUndefined();
      }
      const serverHello = streams.filter((s) => s.sport === 15008).map((s) => parseTlsRecords(s.bytes).records[0]).find((rec) => rec?.type === 22);
      expect(serverHello).toMatchObject({ handshakeType: 2, selectedVersion: 0x0304 });

      const log = await sandbox.logs('node-1', 'ztunnel');
      const ip = (a: string): string => a.replaceAll('.', '\\.');
      expect(log).toMatch(new RegExp(`connection complete .*src\\.workload=sleep .*dst\\.addr=${ip(httpbin.ip)}:8000 .*dst\\.hbone_addr=${ip(httpbin.ip)}:15008 .*direction=outbound`));
      expect(log).toMatch(new RegExp(`connection complete .*src\\.addr=${ip(sleep.ip)}:\\d+ .*dst\\.addr=${ip(httpbin.ip)}:8000 .*direction=inbound`));
    });

    it('its ztunnel got its state and certificates from this mode\'s source', async () => {
      await expectConfigSource(sandbox);
    });
  });
});
