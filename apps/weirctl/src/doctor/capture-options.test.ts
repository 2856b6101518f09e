import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AgentMetrics, HealthServer, IptablesPodRules } from '@weir/cni-agent';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_DEFAULT_CAPTURE, resolveCapture } from './capture-options.js';

// The agent's own health server and rules object, as weir-cni-agent wires them (DNS capture off, redirect).
const rules = new IptablesPodRules({ mode: 'redirect', dnsCapture: false, ipv6: false, backend: 'legacy' });
const health = new HealthServer({ host: '127.0.0.1', port: 0, registry: new AgentMetrics().registry, notReadyReason: () => undefined, config: () => ({ node: 'n1', capture: rules.captureConfig() }) });
let agentUrl = '';
/** Answers 200 with a body that is not the agent's config. */
let other: Server;
let otherUrl = '';

beforeAll(async () => {
  agentUrl = `http://127.0.0.1:${(await health.start()).port}`;
  other = createServer((_req, res) => res.end('{"capture":null}'));
  await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
  otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await health.close();
  rules.close();
  await new Promise((resolve) => other.close(resolve));
});

describe("doctor's capture options", () => {
  it("are the agent's, read from its /debug/config", async () => {
    const r = await resolveCapture(undefined, `${agentUrl}/`, {});
    expect(r.fromAgent).toBe(true);
    expect(r.capture).toEqual({ mode: 'redirect', dnsCapture: false, ipv6: false, probeSnatIp: '169.254.7.127', probeSnatIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff', backend: 'legacy' });
    expect(r.note).toBe(
      `capture options of weir-cni-agent (${agentUrl}/debug/config): mode redirect, DNS capture off, IPv6 off, probe SNAT 169.254.7.127 and fd16:9254:7127:1337:ffff:ffff:ffff:ffff, iptables backend legacy`,
    );
  });

  it('take explicit flags over the agent’s', async () => {
    const r = await resolveCapture(undefined, agentUrl, { dnsCapture: true, mode: 'tproxy' });
    expect(r.capture).toMatchObject({ mode: 'tproxy', dnsCapture: true, ipv6: false, backend: 'legacy' });
    expect(r.note).toContain(`(${agentUrl}/debug/config), --mode, --[no-]dns-capture from the command line: mode tproxy, DNS capture on`);
  });

  it("fall back to flags over the agent's defaults only when it does not answer, and say so", async () => {
    // A port that was just free: nothing listens there.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const down = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`;
    await new Promise((resolve) => closed.close(resolve));
    const r = await resolveCapture(undefined, down, { ipv6: true });
    expect(r.fromAgent).toBe(false);
    expect(r.capture).toEqual({ ...AGENT_DEFAULT_CAPTURE, ipv6: true });
    expect(r.note).toMatch(new RegExp(`^weir-cni-agent does not answer \\(GET ${down}/debug/config: .+\\): using --\\[no-\\]ipv6 from the command line and the agent's defaults: mode tproxy, DNS capture on, IPv6 on`));
  });

  it('fall back when the answer is not an agent config', async () => {
    const r = await resolveCapture(undefined, otherUrl, {});
    expect(r.fromAgent).toBe(false);
    expect(r.capture).toEqual(AGENT_DEFAULT_CAPTURE);
    expect(r.note).toMatch(/^weir-cni-agent does not answer \(http:\/\/127\.0\.0\.1:\d+\/debug\/config has no capture options \(capture: .*\)\): using the agent's defaults: mode tproxy, DNS capture on, IPv6 auto/);
  });
});
