import { isIP } from 'node:net';
import { z } from 'zod';

// Environment → typed configuration. Names follow ztunnel where it has one; WEIR_* are Weir's own.

const bool = z
  .string()
  .trim()
  .toLowerCase()
  .refine((s) => ['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'].includes(s), { message: 'expected true or false' })
  .transform((s) => ['true', '1', 'yes', 'on'].includes(s));

/** `500ms`, `10s`, `1m`, `1h`, or a bare number of seconds → milliseconds. */
const duration = z
  .string()
  .trim()
  .regex(/^\d+(\.\d+)?(ms|s|m|h)?$/, 'expected a duration like 10s, 500ms or 1m')
  .transform((s) => {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s)!;
    const n = Number(m[1]);
    const unit = m[2] ?? 's';
    return Math.round(n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit]!);
  });

const address = z
  .string()
  .trim()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):\d{1,5}$/, 'expected host:port or [v6]:port')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, { message: 'port above 65535' });

const nonEmpty = z.string().trim().min(1, 'must not be empty');

const MiB = 1024 * 1024;
const SIZE_UNITS: Record<string, number> = { '': 1, Ki: 1024, Mi: MiB, Gi: 1024 * MiB };

/** `256Mi`, `32MiB`, `1Gi`, `512Ki` (binary units, as Kubernetes quantities), or a bare number of bytes → bytes. */
const byteSize = z
  .string()
  .trim()
  .regex(/^\d+((Ki|Mi|Gi)B?)?$/, 'expected a size like 256Mi, 32MiB, 1Gi or a number of bytes')
  .transform((s) => {
    const m = /^(\d+)(Ki|Mi|Gi)?/.exec(s)!;
    return Number(m[1]) * SIZE_UNITS[m[2] ?? '']!;
  })
  .refine((n) => Number.isSafeInteger(n), { message: 'too large' })
  .refine((n) => n >= MiB, { message: 'must be at least 1Mi (a paused tunnel alone holds up to its 1 MiB stream window)' });

/** Bytes as the size they were likely given in (`256Mi`), for the effective configuration. */
function formatSize(n: number): string {
  for (const unit of ['Gi', 'Mi', 'Ki'] as const) if (n % SIZE_UNITS[unit]! === 0) return `${n / SIZE_UNITS[unit]!}${unit}`;
  return String(n);
}

/** `10.0.0.10`, `10.0.0.10:5353`, `fd00::10`, `[fd00::10]:53`, comma-separated → DNS upstreams. */
const upstreamList = z
  .string()
  .trim()
  .transform((s, ctx) => {
    const out: { address: string; port: number }[] = [];
    for (const item of s.split(',').map((x) => x.trim()).filter((x) => x !== '')) {
      const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(item) ?? /^([^:]+):(\d{1,5})$/.exec(item);
      const address = m ? m[1]! : item;
      const port = m ? Number(m[2]) : 53;
      if (isIP(address) === 0 || port < 1 || port > 65535) {
        ctx.addIssue({ code: 'custom', message: `${JSON.stringify(item)} is not an IP or IP:port (e.g. 10.96.0.10, [fd00::10]:53)` });
        return z.NEVER;
      }
      out.push({ address, port });
    }
    return out;
  });

const logLevel = z
  .string()
  .trim()
  .toLowerCase()
  // RUST_LOG may carry per-target directives (`info,ztunnel::inpod=debug`): the global part counts.
  .transform((s) => s.split(',').find((p) => !p.includes('=')) ?? 'info')
  .pipe(z.enum(['trace', 'debug', 'info', 'warn', 'error']));

const envSchema = z.object({
  INPOD_ENABLED: bool.default(true).refine((v) => v, { message: 'only in-pod mode is supported (true)' }),
  INPOD_UDS: nonEmpty.default('/var/run/ztunnel/ztunnel.sock'),
  PACKET_MARK: z.coerce
    .number({ error: 'expected an integer mark, e.g. 1337' })
    .int('expected an integer mark, e.g. 1337')
    .min(1, 'must be at least 1')
    .max(0xffffffff, 'must fit in 32 bits')
    .default(1337),
  INPOD_PORT_REUSE: bool.default(true),
  ENABLE_ORIG_SRC: bool.optional(),
  IPV6_ENABLED: bool.default(true),
  LOCAL_XDS_PATH: nonEmpty.optional(),
  TRUST_DOMAIN: z.string().trim().regex(/^[a-z0-9._-]+$/, 'expected a lower-case trust domain').default('cluster.local'),
  CLUSTER_ID: nonEmpty.default('Kubernetes'),
  NODE_NAME: z.string().trim().default(''),
  CONNECTION_TERMINATION_DEADLINE: duration.optional(),
  TERMINATION_GRACE_PERIOD_SECONDS: z.coerce.number({ error: 'expected a whole number of seconds' }).int('expected a whole number of seconds').min(0).optional(),
  RUST_LOG: logLevel.optional(),
  LOG_LEVEL: logLevel.optional(),
  LOG_FORMAT: z.enum(['text', 'json']).default('text'),
  WEIR_CA_CERT: nonEmpty.optional(),
  WEIR_CA_KEY: nonEmpty.optional(),
  WEIR_CERT_TTL: duration.default(86_400_000),
  WEIR_ADMIN_ADDR: address.default('127.0.0.1:15000'),
  WEIR_METRICS_ADDR: address.optional(),
  WEIR_READINESS_ADDR: address.optional(),
  WEIR_SOCKS5_ENABLED: bool.default(false),
  DNS_PROXY: bool.default(true),
  WEIR_DNS_UPSTREAMS: upstreamList.optional(),
  // @weir/hbone's BufferBudget defaults (256 MiB for the process, 12 MiB per HTTP/2 session: ¾ of its 16 MiB connection window).
  WEIR_HBONE_BUFFER_BUDGET: byteSize.default(256 * MiB),
  WEIR_HBONE_SESSION_BUFFER_BUDGET: byteSize.default(12 * MiB),
  XDS_ADDRESS: nonEmpty.optional(),
  XDS_ROOT_CA: nonEmpty.optional(),
  CA_ADDRESS: nonEmpty.optional(),
  CA_ROOT_CA: nonEmpty.optional(),
  AUTH_TOKEN: nonEmpty.default('./var/run/secrets/tokens/istio-token'),
  ALT_XDS_HOSTNAME: nonEmpty.optional(),
  ALT_CA_HOSTNAME: nonEmpty.optional(),
  POD_NAME: z.string().trim().default(''),
  POD_NAMESPACE: z.string().trim().default(''),
  INSTANCE_IP: z.string().trim().refine((s) => isIP(s) !== 0, { message: 'expected an IP address' }).default('1.1.1.1'),
});

/** Every variable weir-ztunnel reads (besides `ISTIO_META_*` and the launcher's `WEIR_V8_FLAGS`). */
export const ENV_NAMES: readonly string[] = Object.keys(envSchema.shape);

const serverAddress = /^(https?:\/\/)?(\[[0-9a-fA-F:.]+\]|[^:/[\]]+):\d{1,5}\/?$/;

/**
 * istiod's address as dialled: TLS unless `http://` asks for plaintext, so `host:port` becomes
 * `https://host:port` (and then needs its root) instead of plaintext that would carry the token.
 */
function withScheme(address: string | undefined): string | undefined {
  if (address === undefined || /^https?:\/\//i.test(address)) return address;
  return `https://${address}`;
}

export interface AppConfig {
  inpodUds: string;
  packetMark: number;
  portReuse: boolean;
  origSrc: 'auto' | 'required' | 'never';
  ipv6Enabled: boolean;
  localXdsPath: string | undefined;
  trustDomain: string;
  clusterId: string;
  nodeName: string;
  terminationDeadlineMs: number;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  logFormat: 'text' | 'json';
  ca: { certPath: string; keyPath: string } | undefined;
  certTtlSeconds: number;
  adminAddr: string;
  metricsAddr: string;
  readinessAddr: string;
  socks5: boolean;
  /** DNS proxy on 15053 in every pod. */
  dnsProxy: boolean;
  /** Forward targets for names outside the mesh; undefined: the nameservers of /etc/resolv.conf. */
  dnsUpstreams: { address: string; port: number }[] | undefined;
  /**
   * Bytes HBONE tunnels whose reader stopped may hold, in the whole process and per HTTP/2 session;
   * past them the largest are reset and new streams refused (@weir/hbone BufferBudget).
   */
  hboneBufferBudget: { maxBytes: number; maxSessionBytes: number };
  /**
   * istiod's Delta ADS (XDS_ADDRESS, `https://` added when it has no scheme); undefined: local
   * config only. `http://` is plaintext, without the bearer token.
   */
  xdsAddress: string | undefined;
  xdsRootCa: string | undefined;
  /** Istio's CA (CA_ADDRESS, default XDS_ADDRESS; scheme as xdsAddress); undefined: the local CA. */
  caAddress: string | undefined;
  caRootCa: string | undefined;
  /** File holding the bearer token, re-read per connect/request. */
  authToken: string;
  altXdsHostname: string | undefined;
  altCaHostname: string | undefined;
  podName: string;
  podNamespace: string;
  instanceIp: string;
  /** ISTIO_META_<K>=<v> → node metadata K. */
  istioMeta: Record<string, string>;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
  }
}

/** Parses the environment; throws ConfigError with one line per bad variable (`NAME=value: why`). */
export function parseConfig(env: Record<string, string | undefined>): AppConfig {
  const relevant = Object.fromEntries(Object.entries(env).filter(([k, v]) => k in envSchema.shape && v !== undefined && v !== ''));
  const parsed = envSchema.safeParse(relevant);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => {
        const name = String(i.path[0] ?? '(environment)');
        return `${name}=${JSON.stringify(env[name] ?? '')}: ${i.message}`;
      }),
    );
  }
  const e = parsed.data;
  const problems: string[] = [];
  if ((e.WEIR_CA_CERT === undefined) !== (e.WEIR_CA_KEY === undefined)) {
    problems.push(`WEIR_CA_CERT and WEIR_CA_KEY must be set together (${e.WEIR_CA_CERT ? 'WEIR_CA_KEY' : 'WEIR_CA_CERT'} is missing)`);
  }
  if (e.XDS_ADDRESS !== undefined && e.LOCAL_XDS_PATH !== undefined) {
    problems.push(`XDS_ADDRESS=${JSON.stringify(e.XDS_ADDRESS)} and LOCAL_XDS_PATH=${JSON.stringify(e.LOCAL_XDS_PATH)}: set one source of workload state, not both`);
  }
  const xdsAddress = withScheme(e.XDS_ADDRESS);
  const caAddress = withScheme(e.CA_ADDRESS ?? e.XDS_ADDRESS);
  if (caAddress !== undefined && e.WEIR_CA_CERT !== undefined) {
    problems.push(`${e.CA_ADDRESS !== undefined ? 'CA_ADDRESS' : 'XDS_ADDRESS (CA_ADDRESS defaults to it)'}=${JSON.stringify(e.CA_ADDRESS ?? e.XDS_ADDRESS)} and WEIR_CA_CERT=${JSON.stringify(e.WEIR_CA_CERT)}: certificates come from one CA, not both`);
  }
  const caRoot = e.CA_ROOT_CA ?? e.XDS_ROOT_CA;
  for (const [name, value, root, rootName] of [
    ['XDS_ADDRESS', e.XDS_ADDRESS, e.XDS_ROOT_CA, 'XDS_ROOT_CA'],
    ['CA_ADDRESS', e.CA_ADDRESS, caRoot, 'CA_ROOT_CA (or XDS_ROOT_CA)'],
  ] as const) {
    if (value === undefined) continue;
    if (!serverAddress.test(value)) problems.push(`${name}=${JSON.stringify(value)}: expected https://host:port (or http://host:port for plaintext)`);
    else if (!/^http:\/\//i.test(value) && root === undefined) {
      const tls = value.startsWith('https://') ? 'https' : 'without a scheme the address is TLS (https) and';
      problems.push(`${name}=${JSON.stringify(value)}: ${tls} needs ${rootName}, the PEM file of the server's root (http:// asks for plaintext)`);
    }
  }
  if (e.WEIR_CERT_TTL < 2000) problems.push(`WEIR_CERT_TTL=${JSON.stringify(env.WEIR_CERT_TTL)}: must be at least 2s`);
  if (e.WEIR_HBONE_SESSION_BUFFER_BUDGET > e.WEIR_HBONE_BUFFER_BUDGET) {
    problems.push(
      `WEIR_HBONE_SESSION_BUFFER_BUDGET=${JSON.stringify(env.WEIR_HBONE_SESSION_BUFFER_BUDGET ?? formatSize(e.WEIR_HBONE_SESSION_BUFFER_BUDGET))}: must not exceed WEIR_HBONE_BUFFER_BUDGET (${formatSize(e.WEIR_HBONE_BUFFER_BUDGET)})`,
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const any = e.IPV6_ENABLED ? '[::]' : '0.0.0.0';
  const graceDeadline = e.TERMINATION_GRACE_PERIOD_SECONDS !== undefined ? Math.max(0, e.TERMINATION_GRACE_PERIOD_SECONDS - 5) * 1000 : undefined;
  return {
    inpodUds: e.INPOD_UDS,
    packetMark: e.PACKET_MARK,
    portReuse: e.INPOD_PORT_REUSE,
    origSrc: e.ENABLE_ORIG_SRC === undefined ? 'auto' : e.ENABLE_ORIG_SRC ? 'required' : 'never',
    ipv6Enabled: e.IPV6_ENABLED,
    localXdsPath: e.LOCAL_XDS_PATH,
    trustDomain: e.TRUST_DOMAIN,
    clusterId: e.CLUSTER_ID,
    nodeName: e.NODE_NAME,
    terminationDeadlineMs: e.CONNECTION_TERMINATION_DEADLINE ?? graceDeadline ?? 5000,
    logLevel: e.LOG_LEVEL ?? e.RUST_LOG ?? 'info',
    logFormat: e.LOG_FORMAT,
    ca: e.WEIR_CA_CERT && e.WEIR_CA_KEY ? { certPath: e.WEIR_CA_CERT, keyPath: e.WEIR_CA_KEY } : undefined,
    certTtlSeconds: Math.round(e.WEIR_CERT_TTL / 1000),
    adminAddr: e.WEIR_ADMIN_ADDR,
    metricsAddr: e.WEIR_METRICS_ADDR ?? `${any}:15020`,
    readinessAddr: e.WEIR_READINESS_ADDR ?? `${any}:15021`,
    socks5: e.WEIR_SOCKS5_ENABLED,
    dnsProxy: e.DNS_PROXY,
    dnsUpstreams: e.WEIR_DNS_UPSTREAMS,
    hboneBufferBudget: { maxBytes: e.WEIR_HBONE_BUFFER_BUDGET, maxSessionBytes: e.WEIR_HBONE_SESSION_BUFFER_BUDGET },
    xdsAddress,
    xdsRootCa: e.XDS_ROOT_CA,
    caAddress,
    caRootCa: caRoot,
    authToken: e.AUTH_TOKEN,
    altXdsHostname: e.ALT_XDS_HOSTNAME,
    altCaHostname: e.ALT_CA_HOSTNAME,
    podName: e.POD_NAME,
    podNamespace: e.POD_NAMESPACE,
    instanceIp: e.INSTANCE_IP,
    istioMeta: Object.fromEntries(
      Object.entries(env)
        .filter((kv): kv is [string, string] => kv[0].startsWith('ISTIO_META_') && kv[0].length > 'ISTIO_META_'.length && kv[1] !== undefined)
        .map(([k, v]) => [k.slice('ISTIO_META_'.length), v]),
    ),
  };
}

/** The effective configuration as ztunnel prints it at start (snake_case keys, one per line). */
export function effectiveConfigLines(c: AppConfig): string[] {
  const entries: [string, unknown][] = [
    ['inpod_enabled', true],
    ['inpod_uds', c.inpodUds],
    ['inpod_port_reuse', c.portReuse],
    ['inpod_mark', c.packetMark],
    ['enable_original_source', c.origSrc === 'auto' ? null : c.origSrc === 'required'],
    ['ipv6_enabled', c.ipv6Enabled],
    ['local_xds_path', c.localXdsPath ?? null],
    ['trust_domain', c.trustDomain],
    ['cluster_id', c.clusterId],
    ['node_name', c.nodeName],
    ['termination_deadline', `${c.terminationDeadlineMs / 1000}s`],
    ['admin_addr', c.adminAddr],
    ['stats_addr', c.metricsAddr],
    ['readiness_addr', c.readinessAddr],
    ['xds_address', c.xdsAddress ?? null],
    ['xds_root_cert', c.xdsAddress ? (c.xdsRootCa ?? null) : null],
    ['ca_address', c.caAddress ?? null],
    ['ca_root_cert', c.caAddress ? (c.caRootCa ?? null) : null],
    ['auth_token', c.xdsAddress || c.caAddress ? c.authToken : null],
    ['alt_xds_hostname', c.altXdsHostname ?? null],
    ['alt_ca_hostname', c.altCaHostname ?? null],
    ['pod_name', c.podName],
    ['pod_namespace', c.podNamespace],
    ['instance_ip', c.instanceIp],
    ['proxy_metadata', Object.keys(c.istioMeta).length > 0 ? JSON.stringify(c.istioMeta) : null],
    ['ca', c.caAddress ? `istio ${c.caAddress}` : c.ca ? `${c.ca.certPath} ${c.ca.keyPath}` : 'embedded (in memory)'],
    ['workload_cert_ttl', `${c.certTtlSeconds}s`],
    ['socks5_enabled', c.socks5],
    ['dns_proxy', c.dnsProxy],
    ['dns_upstreams', c.dnsProxy ? (c.dnsUpstreams ? c.dnsUpstreams.map((u) => (u.address.includes(':') ? `[${u.address}]:${u.port}` : `${u.address}:${u.port}`)).join(',') : 'resolv.conf') : null],
    ['hbone_buffer_budget', formatSize(c.hboneBufferBudget.maxBytes)],
    ['hbone_session_buffer_budget', formatSize(c.hboneBufferBudget.maxSessionBytes)],
    ['log_level', c.logLevel],
  ];
  return entries.map(([k, v]) => `${k}: ${v === null ? '~' : String(v)}`);
}
