import { DEFAULT_V8_FLAGS } from './v8-flags.js';

/** One line per variable weir-ztunnel reads; a test checks this covers config.ts's schema. */
export const ENV_HELP: Readonly<Record<string, string>> = {
  INPOD_ENABLED: 'in-pod mode (the only mode; default true)',
  INPOD_UDS: 'ZDS socket the node agent serves (default /var/run/ztunnel/ztunnel.sock)',
  PACKET_MARK: 'SO_MARK on every socket made in a pod (default 1337 = 0x539)',
  INPOD_PORT_REUSE: 'SO_REUSEPORT on pod listeners, for a restart hand-over (default true)',
  ENABLE_ORIG_SRC: 'keep the client address inbound: true requires IP_TRANSPARENT, false never (default: when permitted)',
  IPV6_ENABLED: 'listen on [::] as well (default true)',
  LOCAL_XDS_PATH: 'workloads and policies from this YAML file (ztunnel local config), instead of xDS',
  TRUST_DOMAIN: 'SPIFFE trust domain (default cluster.local)',
  CLUSTER_ID: 'cluster name sent to istiod (default Kubernetes)',
  NODE_NAME: 'this node: pods of other nodes are never proxied here',
  CONNECTION_TERMINATION_DEADLINE: 'drain deadline on SIGTERM, e.g. 5s',
  TERMINATION_GRACE_PERIOD_SECONDS: 'pod grace period: the drain deadline defaults to it minus 5 s (else 5s)',
  RUST_LOG: 'log level as ztunnel takes it (info, debug, …; per-target parts ignored)',
  LOG_LEVEL: 'log level (trace, debug, info, warn, error; default info)',
  LOG_FORMAT: 'text (default) or json',
  WEIR_CA_CERT: 'local CA certificate (PEM path), with WEIR_CA_KEY: issue workload certificates here',
  WEIR_CA_KEY: 'local CA key (PEM path)',
  WEIR_CERT_TTL: 'workload certificate lifetime (default 24h)',
  WEIR_ADMIN_ADDR: 'admin server (/config_dump, /quitquitquit, …; default 127.0.0.1:15000)',
  WEIR_METRICS_ADDR: 'Prometheus /metrics (default [::]:15020, 0.0.0.0 without IPv6)',
  WEIR_READINESS_ADDR: '/healthz/ready (default [::]:15021, 0.0.0.0 without IPv6)',
  WEIR_SOCKS5_ENABLED: 'SOCKS5 outbound listener on 15080 in each pod (default false)',
  DNS_PROXY: 'DNS proxy on 15053 in each pod (default true)',
  WEIR_DNS_UPSTREAMS: 'DNS upstreams, e.g. 10.96.0.10,[fd00::10]:53 (default /etc/resolv.conf)',
  WEIR_HBONE_BUFFER_BUDGET: 'bytes HBONE tunnels whose reader stopped may hold in the whole process, e.g. 512Mi (default 256Mi)',
  WEIR_HBONE_SESSION_BUFFER_BUDGET: 'the same per HTTP/2 session (default 12Mi, ¾ of the 16 MiB HTTP/2 connection window; at most WEIR_HBONE_BUFFER_BUDGET)',
  XDS_ADDRESS: 'istiod, e.g. https://istiod.istio-system.svc:15012 (Delta xDS; TLS without a scheme; http:// is plaintext, sends no token)',
  XDS_ROOT_CA: "istiod's root certificate (PEM path)",
  CA_ADDRESS: 'Istio CA (default XDS_ADDRESS; TLS unless http://, as XDS_ADDRESS)',
  CA_ROOT_CA: "the CA's root certificate (PEM path; default XDS_ROOT_CA)",
  AUTH_TOKEN: 'service-account token file for istiod (default ./var/run/secrets/tokens/istio-token)',
  ALT_XDS_HOSTNAME: "name to verify istiod's certificate against, if not the address's",
  ALT_CA_HOSTNAME: "name to verify the CA's certificate against",
  POD_NAME: "ztunnel's pod name (xDS node id)",
  POD_NAMESPACE: "ztunnel's namespace (xDS node id)",
  INSTANCE_IP: "ztunnel's pod IP (xDS node id; default 1.1.1.1)",
};

export function usage(): string {
  const width = Math.max(...Object.keys(ENV_HELP).map((k) => k.length));
  return [
    "weir-ztunnel: Weir's node proxy (in-pod listeners, HBONE, L4 authorization), configured as Istio's ztunnel.",
    '',
    'Usage: weir-ztunnel [proxy ztunnel]   run (the arguments Istio passes ztunnel are accepted)',
    '       weir-ztunnel --version | --help',
    '',
    'Environment (names as ztunnel where it has one; WEIR_* are Weir\'s own):',
    ...Object.entries(ENV_HELP).map(([k, v]) => `  ${k.padEnd(width)}  ${v}`),
    `  ${'ISTIO_META_<K>'.padEnd(width)}  node metadata K sent to istiod`,
    `  ${'WEIR_V8_FLAGS'.padEnd(width)}  V8 flags set at start (default "${DEFAULT_V8_FLAGS}"; empty: none)`,
    '',
    'A bad value is reported one line per variable and the process exits 2.',
    '',
  ].join('\n');
}
