import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { HealthServer } from './health-server.js';
import { IptablesPodRules } from './iptables-rules.js';

let server: HealthServer | undefined;
let rules: IptablesPodRules | undefined;

afterEach(async () => {
  await server?.close();
  server = undefined;
  rules?.close();
  rules = undefined;
});

async function start(config?: () => unknown): Promise<string> {
  server = new HealthServer({ host: '127.0.0.1', port: 0, registry: new Registry(), notReadyReason: () => undefined, ...(config ? { config } : {}) });
  const addr = await server.start();
  return `http://127.0.0.1:${addr.port}`;
}

describe('HealthServer /debug/config', () => {
  it("serves the agent's resolved capture options as JSON, defaults filled in", async () => {
    rules = new IptablesPodRules({ mode: 'redirect', dnsCapture: false, probeSnatIp: '169.254.9.9' });
    const base = await start(() => ({ node: 'n1', capture: rules?.captureConfig() }));
    const res = await fetch(`${base}/debug/config`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(await res.json()).toEqual({
      node: 'n1',
      capture: { mode: 'redirect', dnsCapture: false, ipv6: 'auto', probeSnatIp: '169.254.9.9', probeSnatIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff', backend: 'auto' },
    });
  });

  it('reads the options on every request (a backend detected later shows), and is read-only', async () => {
    let backend = 'auto';
    const base = await start(() => ({ backend }));
    expect(await (await fetch(`${base}/debug/config`)).json()).toEqual({ backend: 'auto' });
    backend = 'nft';
    expect(await (await fetch(`${base}/debug/config?x=1`)).json()).toEqual({ backend: 'nft' });
    const post = await fetch(`${base}/debug/config`, { method: 'POST', body: '{}' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
  });

  it('has no /debug/config without a config, and keeps /readyz', async () => {
    const base = await start();
    expect((await fetch(`${base}/debug/config`)).status).toBe(404);
    expect(await (await fetch(`${base}/readyz`)).text()).toBe('ready\n');
  });
});
