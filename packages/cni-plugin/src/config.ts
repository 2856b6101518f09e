import * as z from 'zod';
import { DEFAULT_ENABLEMENT_SELECTORS, type EnablementSelector } from './enrollment.js';
import { CniPluginError } from './errors.js';
import { isSupportedVersion, SUPPORTED_VERSIONS, type CniVersion } from './version.js';

const labelSelectorSchema = z.object({
  matchLabels: z.record(z.string(), z.string()).optional(),
  matchExpressions: z
    .array(
      z.object({
        key: z.string().min(1),
        operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
        values: z.array(z.string()).optional(),
      }),
    )
    .optional(),
});

const enablementSelectorSchema = z.object({
  podSelector: labelSelectorSchema.optional(),
  namespaceSelector: labelSelectorSchema.optional(),
});

const ipConfigSchema = z.looseObject({
  address: z.string().regex(/^[0-9a-fA-F.:]+\/\d{1,3}$/, 'must be a CIDR address like 10.0.0.5/24'),
  gateway: z.string().optional(),
  interface: z.number().int().nonnegative().optional(),
  version: z.enum(['4', '6']).optional(),
});

/** A CNI result as passed in `prevResult`; unknown fields are kept so it passes through unchanged. */
export const cniResultSchema = z.looseObject({
  cniVersion: z.string().optional(),
  interfaces: z.array(z.looseObject({ name: z.string() })).optional(),
  ips: z.array(ipConfigSchema).optional(),
  routes: z.array(z.looseObject({ dst: z.string() })).optional(),
  dns: z.looseObject({}).optional(),
});
export type CniResult = z.infer<typeof cniResultSchema>;

const netConfSchema = z.looseObject({
  cniVersion: z.string(),
  name: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'must be a network name matching [a-zA-Z0-9][a-zA-Z0-9_.-]*'),
  type: z.string().min(1),
  prevResult: cniResultSchema.optional(),
  plugin_log_level: z.enum(['debug', 'info', 'warn', 'error', 'none']).default('info'),
  cni_agent_run_dir: z.string().min(1).default('/var/run/istio-cni'),
  ambient_enabled: z.boolean().default(true),
  exclude_namespaces: z.array(z.string()).default([]),
  enablement_selectors: z.array(enablementSelectorSchema).optional(),
  pod_namespace: z.string().min(1).default('istio-system'),
  kubeconfig: z.string().min(1).optional(),
  // Older istio-cni configs nest these under `kubernetes`.
  kubernetes: z
    .looseObject({ kubeconfig: z.string().min(1).optional(), exclude_namespaces: z.array(z.string()).optional() })
    .optional(),
});

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'none';

/** The plugin's network configuration (its conflist entry, plus `prevResult`), validated. */
export interface PluginConfig {
  cniVersion: CniVersion;
  name: string;
  type: string;
  prevResult: CniResult | undefined;
  pluginLogLevel: LogLevel;
  cniAgentRunDir: string;
  ambientEnabled: boolean;
  excludeNamespaces: string[];
  enablementSelectors: EnablementSelector[];
  /** The node agent's namespace: its own pods are never held up by the plugin. */
  podNamespace: string;
  /** `kubeconfig` field, else `<cni_agent_run_dir>/istio-cni-kubeconfig`. */
  kubeconfigPath: string;
  /** The whole config object as received. */
  raw: Record<string, unknown>;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const path = issue.path.length > 0 ? issue.path.join('.') : '<root>';
  return `${path}: ${issue.message}`;
}

/** Decodes stdin to a JSON object, or throws code 6 (decoding failure). */
export function decodeStdin(stdin: string | Buffer): Record<string, unknown> {
  const text = typeof stdin === 'string' ? stdin : stdin.toString('utf8');
  if (text.trim() === '') {
    throw new CniPluginError('ERR_CNI_DECODING_FAILURE', 'failed to decode network config: stdin is empty');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CniPluginError('ERR_CNI_DECODING_FAILURE', `failed to decode network config from stdin: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new CniPluginError('ERR_CNI_DECODING_FAILURE', `failed to decode network config: stdin is JSON ${Array.isArray(json) ? 'array' : typeof json}, not an object`);
  }
  return json as Record<string, unknown>;
}

/** Checks `cniVersion`: missing or mistyped is code 7, unsupported is code 1. */
export function checkCniVersion(conf: Record<string, unknown>): CniVersion {
  const v = conf['cniVersion'];
  if (typeof v !== 'string' || v === '') {
    throw new CniPluginError('ERR_CNI_INVALID_CONFIG', `invalid network config: cniVersion: expected a version string, got ${JSON.stringify(v) ?? 'nothing'}`);
  }
  if (!isSupportedVersion(v)) {
    throw new CniPluginError(
      'ERR_CNI_INCOMPATIBLE_VERSION',
      `incompatible CNI versions: config cniVersion is "${v}", plugin supports [${SUPPORTED_VERSIONS.join(' ')}]`,
    );
  }
  return v;
}

/** Validates a network config object; throws code 1 or 7 naming the field at fault. */
export function parsePluginConfig(conf: Record<string, unknown>): PluginConfig {
  const cniVersion = checkCniVersion(conf);
  const parsed = netConfSchema.safeParse(conf);
  if (!parsed.success) {
    throw new CniPluginError(
      'ERR_CNI_INVALID_CONFIG',
      `invalid network config: ${parsed.error.issues.map(describeIssue).join('; ')}`,
    );
  }
  const c = parsed.data;
  const runDir = c.cni_agent_run_dir;
  return {
    cniVersion,
    name: c.name,
    type: c.type,
    prevResult: c.prevResult,
    pluginLogLevel: c.plugin_log_level,
    cniAgentRunDir: runDir,
    ambientEnabled: c.ambient_enabled,
    excludeNamespaces: [...c.exclude_namespaces, ...(c.kubernetes?.exclude_namespaces ?? [])],
    enablementSelectors: c.enablement_selectors ?? DEFAULT_ENABLEMENT_SELECTORS,
    podNamespace: c.pod_namespace,
    kubeconfigPath: c.kubeconfig ?? c.kubernetes?.kubeconfig ?? `${runDir.replace(/\/+$/, '')}/istio-cni-kubeconfig`,
    raw: conf,
  };
}
