import { describe, expect, it } from 'vitest';
import { ConfigError, effectiveConfigLines, parseConfig } from './config.js';

describe('parseConfig', () => {
  it('applies ztunnel defaults', () => {
    const c = parseConfig({});
    expect(c).toMatchObject({
      inpodUds: '/var/run/ztunnel/ztunnel.sock',
      packetMark: 1337,
      portReuse: true,
      origSrc: 'auto',
      ipv6Enabled: true,
      trustDomain: 'cluster.local',
      terminationDeadlineMs: 5000,
      logLevel: 'info',
      logFormat: 'text',
      adminAddr: '127.0.0.1:15000',
      metricsAddr: '[::]:15020',
      readinessAddr: '[::]:15021',
      certTtlSeconds: 86400,
      socks5: false,
      dnsProxy: true,
      dnsUpstreams: undefined,
    });
    expect(effectiveConfigLines(c)).toContain('dns_upstreams: resolv.conf');
    expect(effectiveConfigLines(c).slice(0, 4)).toEqual([
      'inpod_enabled: true',
      'inpod_uds: /var/run/ztunnel/ztunnel.sock',
      'inpod_port_reuse: true',
      'inpod_mark: 1337',
    ]);
  });

  it('reads every variable', () => {
    const c = parseConfig({
      INPOD_UDS: '/tmp/z.sock',
      PACKET_MARK: '4242',
      INPOD_PORT_REUSE: 'false',
      ENABLE_ORIG_SRC: 'true',
      IPV6_ENABLED: 'false',
      LOCAL_XDS_PATH: '/etc/z.yaml',
      TRUST_DOMAIN: 'example.org',
      NODE_NAME: 'n1',
      CONNECTION_TERMINATION_DEADLINE: '1.5s',
      RUST_LOG: 'debug,ztunnel::inpod=trace',
      LOG_FORMAT: 'json',
      WEIR_CA_CERT: '/ca/c.pem',
      WEIR_CA_KEY: '/ca/k.pem',
      WEIR_ADMIN_ADDR: '127.0.0.1:0',
      WEIR_CERT_TTL: '1h',
      WEIR_SOCKS5_ENABLED: 'true',
      DNS_PROXY: 'false',
    });
    expect(c).toMatchObject({
      inpodUds: '/tmp/z.sock',
      packetMark: 4242,
      portReuse: false,
      origSrc: 'required',
      metricsAddr: '0.0.0.0:15020',
      localXdsPath: '/etc/z.yaml',
      trustDomain: 'example.org',
      nodeName: 'n1',
      terminationDeadlineMs: 1500,
      logLevel: 'debug',
      logFormat: 'json',
      ca: { certPath: '/ca/c.pem', keyPath: '/ca/k.pem' },
      adminAddr: '127.0.0.1:0',
      certTtlSeconds: 3600,
      socks5: true,
      dnsProxy: false,
    });
    expect(parseConfig({ TERMINATION_GRACE_PERIOD_SECONDS: '30' }).terminationDeadlineMs).toBe(25_000);
  });

  it('reads DNS upstreams as IP, IP:port or [v6]:port, comma-separated', () => {
    const c = parseConfig({ WEIR_DNS_UPSTREAMS: '10.96.0.10, 10.96.0.11:5353,fd00::a,[fd00::b]:54' });
    expect(c.dnsUpstreams).toEqual([
      { address: '10.96.0.10', port: 53 },
      { address: '10.96.0.11', port: 5353 },
      { address: 'fd00::a', port: 53 },
      { address: 'fd00::b', port: 54 },
    ]);
    expect(effectiveConfigLines(c)).toContain('dns_upstreams: 10.96.0.10:53,10.96.0.11:5353,[fd00::a]:53,[fd00::b]:54');
    expect(() => parseConfig({ WEIR_DNS_UPSTREAMS: '10.96.0.10,kube-dns' })).toThrow(/^WEIR_DNS_UPSTREAMS="10.96.0.10,kube-dns": "kube-dns" is not an IP/);
    expect(() => parseConfig({ WEIR_DNS_UPSTREAMS: '10.0.0.1:70000' })).toThrow(/WEIR_DNS_UPSTREAMS/);
    expect(parseConfig({ DNS_PROXY: 'off' }).dnsProxy).toBe(false);
  });

  it('reads the HBONE buffer budget as sizes, defaulting to BufferBudget\'s 256Mi / 12Mi, and refuses a bad one', () => {
    const d = parseConfig({});
    expect(d.hboneBufferBudget).toEqual({ maxBytes: 256 * 1024 * 1024, maxSessionBytes: 12 * 1024 * 1024 });
    expect(effectiveConfigLines(d)).toEqual(expect.arrayContaining(['hbone_buffer_budget: 256Mi', 'hbone_session_buffer_budget: 12Mi']));
    const c = parseConfig({ WEIR_HBONE_BUFFER_BUDGET: '1Gi', WEIR_HBONE_SESSION_BUFFER_BUDGET: '49152KiB' });
    expect(c.hboneBufferBudget).toEqual({ maxBytes: 1024 ** 3, maxSessionBytes: 48 * 1024 * 1024 });
    expect(effectiveConfigLines(c)).toEqual(expect.arrayContaining(['hbone_buffer_budget: 1Gi', 'hbone_session_buffer_budget: 48Mi']));
    expect(parseConfig({ WEIR_HBONE_SESSION_BUFFER_BUDGET: '1048577' }).hboneBufferBudget.maxSessionBytes).toBe(1048577);
    const problems = (env: Record<string, string>): string => {
      try {
        parseConfig(env);
      } catch (err) {
        return (err as ConfigError).problems.join('\n');
      }
      return expect.unreachable(`accepted ${JSON.stringify(env)}`);
    };
    expect(problems({ WEIR_HBONE_BUFFER_BUDGET: '256MB' })).toMatch(/^WEIR_HBONE_BUFFER_BUDGET="256MB": expected a size like 256Mi, 32MiB, 1Gi or a number of bytes$/m);
    expect(problems({ WEIR_HBONE_BUFFER_BUDGET: '-1' })).toMatch(/^WEIR_HBONE_BUFFER_BUDGET="-1": expected a size/m);
    expect(problems({ WEIR_HBONE_SESSION_BUFFER_BUDGET: '64Ki' })).toMatch(/^WEIR_HBONE_SESSION_BUFFER_BUDGET="64Ki": must be at least 1Mi/m);
    expect(problems({ WEIR_HBONE_BUFFER_BUDGET: '99999999999Gi' })).toMatch(/^WEIR_HBONE_BUFFER_BUDGET="99999999999Gi": too large/m);
    expect(problems({ WEIR_HBONE_BUFFER_BUDGET: '8Mi' })).toMatch(/^WEIR_HBONE_SESSION_BUFFER_BUDGET="12Mi": must not exceed WEIR_HBONE_BUFFER_BUDGET \(8Mi\)$/m);
    expect(problems({ WEIR_HBONE_BUFFER_BUDGET: '16Mi', WEIR_HBONE_SESSION_BUFFER_BUDGET: '20Mi' })).toMatch(/^WEIR_HBONE_SESSION_BUFFER_BUDGET="20Mi": must not exceed/m);
  });

  it('names each bad variable and its value', () => {
    try {
      parseConfig({ PACKET_MARK: 'abc', INPOD_PORT_REUSE: 'maybe', WEIR_METRICS_ADDR: 'nope', CONNECTION_TERMINATION_DEADLINE: '5 parsecs' });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      const p = (err as ConfigError).problems.join('\n');
      expect(p).toMatch(/^PACKET_MARK="abc": expected an integer mark, e.g. 1337$/m);
      expect(p).toMatch(/^INPOD_PORT_REUSE="maybe": expected true or false/m);
      expect(p).toMatch(/^WEIR_METRICS_ADDR="nope": expected host:port/m);
      expect(p).toMatch(/^CONNECTION_TERMINATION_DEADLINE="5 parsecs": expected a duration/m);
    }
    expect(() => parseConfig({ WEIR_CA_CERT: '/x' })).toThrow(/WEIR_CA_KEY is missing/);
    expect(() => parseConfig({ LOG_LEVEL: 'loud' })).toThrow(/LOG_LEVEL="loud"/);
  });

  it('takes istiod (xDS and CA) from XDS_ADDRESS, CA_ADDRESS defaulting to it, with ISTIO_META_* as node metadata', () => {
    const c = parseConfig({
      XDS_ADDRESS: 'https://istiod.istio-system.svc:15012',
      XDS_ROOT_CA: '/var/run/secrets/istio/root-cert.pem',
      POD_NAME: 'ztunnel-x',
      POD_NAMESPACE: 'istio-system',
      INSTANCE_IP: '10.0.0.3',
      ISTIO_META_ENABLE_HBONE: 'true',
    });
    expect(c).toMatchObject({
      xdsAddress: 'https://istiod.istio-system.svc:15012',
      caAddress: 'https://istiod.istio-system.svc:15012',
      caRootCa: '/var/run/secrets/istio/root-cert.pem',
      authToken: './var/run/secrets/tokens/istio-token',
      podName: 'ztunnel-x',
      instanceIp: '10.0.0.3',
      istioMeta: { ENABLE_HBONE: 'true' },
    });
    expect(effectiveConfigLines(c)).toContain('ca: istio https://istiod.istio-system.svc:15012');
    expect(parseConfig({}).caAddress).toBeUndefined();
  });

  it('refuses two sources of state or of certificates, and https without a root, one line each', () => {
    let err: unknown;
    try {
      parseConfig({ XDS_ADDRESS: 'https://istiod:15012', LOCAL_XDS_PATH: '/x.yaml', WEIR_CA_CERT: '/c', WEIR_CA_KEY: '/k', INSTANCE_IP: 'nope' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([`INSTANCE_IP="nope": expected an IP address`]);
    try {
      parseConfig({ XDS_ADDRESS: 'https://istiod:15012', LOCAL_XDS_PATH: '/x.yaml', WEIR_CA_CERT: '/c', WEIR_CA_KEY: '/k' });
    } catch (e) {
      err = e;
    }
    const problems = (err as ConfigError).problems;
    expect(problems).toHaveLength(3);
    expect(problems[0]).toMatch(/^XDS_ADDRESS="https:\/\/istiod:15012" and LOCAL_XDS_PATH="\/x.yaml": set one source/);
    expect(problems[1]).toMatch(/^XDS_ADDRESS \(CA_ADDRESS defaults to it\)=.* and WEIR_CA_CERT=/);
    expect(problems[2]).toMatch(/^XDS_ADDRESS=.*: https needs XDS_ROOT_CA/);
    expect(() => parseConfig({ XDS_ADDRESS: 'http://127.0.0.1:15010' })).not.toThrow();
  });

  it('dials istiod over TLS unless the address asks for plaintext with http:// (review 6 #7)', () => {
    // No scheme: TLS, so the root is required, for the CA (which defaults to it) too.
    expect(() => parseConfig({ XDS_ADDRESS: 'istiod.istio-system.svc:15012' })).toThrow(
      new ConfigError([
        `XDS_ADDRESS="istiod.istio-system.svc:15012": without a scheme the address is TLS (https) and needs XDS_ROOT_CA, the PEM file of the server's root (http:// asks for plaintext)`,
      ]),
    );
    expect(() => parseConfig({ CA_ADDRESS: '10.0.0.2:15012' })).toThrow(/^CA_ADDRESS="10.0.0.2:15012": without a scheme the address is TLS \(https\) and needs CA_ROOT_CA/);
    const c = parseConfig({ XDS_ADDRESS: 'istiod.istio-system.svc:15012', XDS_ROOT_CA: '/root.pem' });
    expect(c).toMatchObject({ xdsAddress: 'https://istiod.istio-system.svc:15012', caAddress: 'https://istiod.istio-system.svc:15012', caRootCa: '/root.pem' });
    expect(effectiveConfigLines(c)).toContain('xds_address: https://istiod.istio-system.svc:15012');
    expect(parseConfig({ XDS_ADDRESS: 'https://[fd00::1]:15012', CA_ADDRESS: '[fd00::2]:15012', XDS_ROOT_CA: '/r.pem' }).caAddress).toBe('https://[fd00::2]:15012');
    // Plaintext only when asked for.
    expect(parseConfig({ XDS_ADDRESS: 'http://127.0.0.1:15010' })).toMatchObject({ xdsAddress: 'http://127.0.0.1:15010', caAddress: 'http://127.0.0.1:15010' });
    expect(() => parseConfig({ XDS_ADDRESS: 'ftp://istiod:15012' })).toThrow(/expected https:\/\/host:port \(or http:\/\/host:port for plaintext\)/);
  });
});
