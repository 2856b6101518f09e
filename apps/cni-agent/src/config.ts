import { parseArgs } from 'node:util';
import { z } from 'zod';

/** Flag name → environment variable; a flag wins over its variable. */
const ENV: Record<string, string> = {
  'node-name': 'NODE_NAME',
  'run-dir': 'CNI_AGENT_RUN_DIR',
  'zds-socket': 'ZTUNNEL_SOCKET',
  kubeconfig: 'KUBECONFIG',
  'kube-api': 'KUBE_API',
  'pods-file': 'PODS_FILE',
  'ready-address': 'READY_ADDRESS',
  mode: 'REDIRECT_MODE',
  'dns-capture': 'DNS_CAPTURE',
  ipv6: 'IPV6',
  'exclude-namespaces': 'EXCLUDE_NAMESPACES',
  'probe-snat-ip': 'PROBE_SNAT_IP',
  'probe-snat-ipv6': 'PROBE_SNAT_IPV6',
  'drift-interval': 'DRIFT_INTERVAL',
  'capture-concurrency': 'CAPTURE_CONCURRENCY',
  'capture-bypass': 'CAPTURE_BYPASS',
  'runtime-default-caps': 'RUNTIME_DEFAULT_CAPS',
  'iptables-backend': 'IPTABLES_BACKEND',
  'log-format': 'LOG_FORMAT',
  'log-level': 'LOG_LEVEL',
  install: 'CNI_INSTALL',
  'plugin-binary': 'CNI_PLUGIN_BINARY',
  'cni-bin-dir': 'CNI_BIN_DIR',
  'cni-conf-dir': 'CNI_CONF_DIR',
  'uninstall-on-exit': 'CNI_UNINSTALL_ON_EXIT',
  'pod-namespace': 'POD_NAMESPACE',
  'daemonset-name': 'DAEMONSET_NAME',
};

const BOOL_FLAGS = new Set(['install', 'uninstall-on-exit']);

const bool = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'])])
  .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes' || v === 'on');

const duration = z
  .string()
  .regex(/^\d+(ms|s|m)?$/, 'a duration like 30s, 500ms or 2m')
  .transform((v) => {
    const n = parseInt(v, 10);
    if (v.endsWith('ms')) return n;
    if (v.endsWith('m')) return n * 60_000;
    return n * 1000;
  });

/** Linux capability names (capabilities(7)), for --runtime-default-caps. */
const LINUX_CAPABILITIES = new Set(
  ('CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE ' +
    'NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN ' +
    'SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE ' +
    'MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE').split(' '),
);

const address = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:[\]]*):\d{1,5}$/, 'host:port (e.g. 0.0.0.0:8000, [::]:8000, :8000)')
  .transform((v) => {
    const i = v.lastIndexOf(':');
    const host = v.slice(0, i).replace(/^\[|\]$/g, '');
    return { host: host === '' ? '0.0.0.0' : host, port: Number(v.slice(i + 1)) };
  });

export const configSchema = z
  .object({
    'node-name': z.string({ error: 'required' }).min(1, 'required'),
    'run-dir': z.string().default('/var/run/istio-cni'),
    'zds-socket': z.string().default('/var/run/ztunnel/ztunnel.sock'),
    kubeconfig: z.string().optional(),
    'kube-api': z.url().optional(),
    'pods-file': z.string().optional(),
    'ready-address': address.default({ host: '0.0.0.0', port: 8000 }),
    mode: z.enum(['tproxy', 'redirect']).default('tproxy'),
    // On, as Istio: ztunnel answers on 15053. A pod opts out with ambient.istio.io/dns-capture: "false".
    'dns-capture': bool.default(true),
    // auto: capture IPv6 in every pod whose netns has IPv6 on; false: never, but such pods get an
    // IPv6 guard (TCP dropped) so IPv6 cannot carry traffic around ztunnel; true: always.
    ipv6: z
      .union([z.literal('auto'), bool])
      .default('auto'),
    'exclude-namespaces': z
      .string()
      .default('kube-system')
      .transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean)),
    'probe-snat-ip': z.ipv4().default('169.254.7.127'),
    'probe-snat-ipv6': z.ipv6().default('fd16:9254:7127:1337:ffff:ffff:ffff:ffff'),
    'drift-interval': duration.default(30_000),
    // Pods captured at once (netns work, rules, the ztunnel ack); more wait for a slot, in order.
    'capture-concurrency': z
      .string()
      .regex(/^[1-9]\d?$/, 'a whole number from 1 to 64')
      .transform(Number)
      .refine((n) => n <= 64, 'a whole number from 1 to 64')
      .default(8),
    // Pods with a container holding NET_RAW/NET_ADMIN (or privileged) can set SO_MARK and skip
    // capture: warn (log + Event + metric), enforce (refuse their CNI ADD: they do not start), off.
    'capture-bypass': z.enum(['warn', 'enforce', 'off']).default('warn'),
    // The runtime's default capabilities, which a container keeps unless it drops them.
    'runtime-default-caps': z
      .string()
      .default('containerd')
      .transform((v, ctx): 'containerd' | 'cri-o' | string[] => {
        if (v === 'containerd' || v === 'cri-o') return v;
        const caps = v.split(',').map((s) => s.trim()).filter(Boolean);
        const bad = caps.filter((cap) => !LINUX_CAPABILITIES.has(cap.toUpperCase().replace(/^CAP_/, '')));
        if (bad.length > 0) ctx.addIssue({ code: 'custom', message: `containerd, cri-o or a comma-separated capability list, got ${bad.join(', ')}` });
        return caps;
      }),
    'iptables-backend': z.enum(['auto', 'legacy', 'nft']).default('auto'),
    'log-format': z.enum(['text', 'json']).default('text'),
    'log-level': z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
    install: bool.default(false),
    'plugin-binary': z.string().optional(),
    'cni-bin-dir': z.string().default('/opt/cni/bin'),
    'cni-conf-dir': z.string().default('/etc/cni/net.d'),
    'uninstall-on-exit': bool.default(false),
    'pod-namespace': z.string().default('istio-system'),
    'daemonset-name': z.string().optional(),
  })
  .strict();

/** Cross-field rules, checked on the raw input so they are reported together with field errors. */
function crossFieldErrors(raw: Record<string, unknown>): string[] {
  const errors: string[] = [];
  const sources = ['kubeconfig', 'kube-api', 'pods-file'].filter((k) => raw[k] !== undefined);
  if (sources.length > 1) errors.push(`--pods-file (PODS_FILE): choose one pod source, got ${sources.join(' and ')}`);
  const install = raw.install === true || ['true', '1', 'yes', 'on'].includes(String(raw.install));
  if (install && raw['plugin-binary'] === undefined) errors.push('--plugin-binary (CNI_PLUGIN_BINARY): required with --install');
  const uninstallOnExit = raw['uninstall-on-exit'] === true || ['true', '1', 'yes', 'on'].includes(String(raw['uninstall-on-exit']));
  // It removes the plugin only when the agent's DaemonSet is gone or being deleted, which takes both.
  if (uninstallOnExit && raw['daemonset-name'] === undefined) {
    errors.push('--uninstall-on-exit (CNI_UNINSTALL_ON_EXIT): needs --daemonset-name (DAEMONSET_NAME) to tell an uninstall from an upgrade');
  }
  if (uninstallOnExit && raw['pods-file'] !== undefined) {
    errors.push('--uninstall-on-exit (CNI_UNINSTALL_ON_EXIT): needs the Kubernetes API (not --pods-file) to tell an uninstall from an upgrade');
  }
  return errors;
}

export type AgentConfig = z.output<typeof configSchema>;

export const USAGE = `usage: weir-cni-agent [run|uninstall] [--flag value ...]
  --node-name NAME            (NODE_NAME, required)
  --run-dir DIR               (CNI_AGENT_RUN_DIR, /var/run/istio-cni): pluginevent.sock lives here
  --zds-socket PATH           (ZTUNNEL_SOCKET, /var/run/ztunnel/ztunnel.sock)
  --kubeconfig FILE | --kube-api URL | --pods-file FILE   pod source (default: in-cluster)
  --ready-address HOST:PORT   (READY_ADDRESS, 0.0.0.0:8000): /readyz, /metrics, /debug/config
  --mode tproxy|redirect      (REDIRECT_MODE, tproxy)
  --dns-capture true|false    (DNS_CAPTURE, true): DNS to ztunnel's 15053; a pod opts out with
                              the annotation ambient.istio.io/dns-capture: "false"
  --ipv6 auto|true|false      (IPV6, auto): auto = capture IPv6 in pods with IPv6 on; false = drop their IPv6 TCP
  --exclude-namespaces A,B    (EXCLUDE_NAMESPACES, kube-system)
  --probe-snat-ip IP          (PROBE_SNAT_IP, 169.254.7.127)
  --drift-interval 30s        (DRIFT_INTERVAL; 0 disables)
  --capture-concurrency N     (CAPTURE_CONCURRENCY, 8): pods captured at once; the rest wait in order
  --capture-bypass warn|enforce|off  (CAPTURE_BYPASS, warn): pods whose containers keep NET_RAW or
                              NET_ADMIN (or are privileged) can set SO_MARK and skip ztunnel; enforce
                              refuses their CNI ADD (the pod does not start)
  --runtime-default-caps containerd|cri-o|CAP,...  (RUNTIME_DEFAULT_CAPS, containerd): what a
                              container keeps unless it drops it (containerd's has NET_RAW)
  --iptables-backend auto|legacy|nft  (IPTABLES_BACKEND, auto)
  --install --plugin-binary FILE [--cni-bin-dir DIR] [--cni-conf-dir DIR]
  --uninstall-on-exit --pod-namespace NS --daemonset-name NAME   (CNI_UNINSTALL_ON_EXIT, false): on
                              SIGTERM remove the plugin and host rules only if that DaemonSet is gone or
                              being deleted (never on upgrade or restart); off: never remove on exit
  --log-format text|json      (LOG_FORMAT, text)   --log-level LEVEL (LOG_LEVEL, info)`;

export type ConfigResult =
  | { ok: true; command: 'run' | 'uninstall'; config: AgentConfig }
  | { ok: false; errors: string[] };

/** Parses argv (without node and script) and the environment; errors are one line per bad field. */
export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): ConfigResult {
  const options = Object.fromEntries(
    Object.keys(ENV).map((k) => [k, { type: BOOL_FLAGS.has(k) ? ('boolean' as const) : ('string' as const) }]),
  );
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    return { ok: false, errors: [(err as Error).message] };
  }
  const command = parsed.positionals[0] ?? 'run';
  if (command !== 'run' && command !== 'uninstall') return { ok: false, errors: [`unknown command ${command}`] };
  const raw: Record<string, unknown> = {};
  for (const [flag, name] of Object.entries(ENV)) {
    const v = (parsed.values as Record<string, unknown>)[flag] ?? env[name];
    if (v !== undefined && v !== '') raw[flag] = v;
  }
  // A KUBECONFIG left in the environment must not fight an explicit other source.
  if ((raw['pods-file'] !== undefined || raw['kube-api'] !== undefined) && parsed.values.kubeconfig === undefined) {
    delete raw.kubeconfig;
  }
  const result = configSchema.safeParse(raw);
  const errors = result.success
    ? []
    : result.error.issues.map((i) => {
        const flag = String(i.path[0] ?? '');
        return `--${flag}${ENV[flag] ? ` (${ENV[flag]})` : ''}: ${i.message}`;
      });
  errors.push(...crossFieldErrors(raw));
  if (!result.success || errors.length > 0) return { ok: false, errors };
  return { ok: true, command, config: result.data };
}
