import * as z from 'zod';
import { DEFAULT_ENABLEMENT_SELECTORS, type EnablementSelector } from './enrollment.js';
import { CniPluginError } from './errors.js';
import { isSupportedVersion, SUPPORTED_VERSIONS, type CniVersion } from './version.js';

function buildCniResultSchema() {
  const ipConfigSchema = z.looseObject({
    address: z.string().regex(CIDR_ADDRESS, 'must be a CIDR address like 10.0.0.5/24'),
    gateway: z.string().optional(),
    interface: z.number().int().nonnegative().optional(),
    version: z.enum(['4', '6']).optional(),
  });
  return z.looseObject({
    cniVersion: z.string().optional(),
    interfaces: z.array(z.looseObject({ name: z.string() })).optional(),
    ips: z.array(ipConfigSchema).optional(),
    routes: z.array(z.looseObject({ dst: z.string() })).optional(),
    dns: z.looseObject({}).optional(),
  });
}

function buildNetConfSchema() {
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
  return z.looseObject({
    cniVersion: z.string(),
    name: z.string().regex(NETWORK_NAME, 'must be a network name matching [a-zA-Z0-9][a-zA-Z0-9_.-]*'),
    type: z.string().min(1),
    prevResult: buildCniResultSchema().optional(),
    plugin_log_level: z.enum(LOG_LEVELS).default('info'),
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
}

const CIDR_ADDRESS = /^[0-9a-fA-F.:]+\/\d{1,3}$/;
const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'none'] as const;

/** A CNI result as passed in `prevResult`; unknown fields are kept so it passes through unchanged. */
export const cniResultSchema = /* @__PURE__ */ buildCniResultSchema();
export type CniResult = z.infer<ReturnType<typeof buildCniResultSchema>>;

type NetConf = z.output<ReturnType<typeof buildNetConfSchema>>;

// Built on first use only: constructing and first running these zod schemas cost more CPU than the
// rest of a plugin exec's own work (the common, well-formed config is checked by fastNetConf).
let netConfSchema: ReturnType<typeof buildNetConfSchema> | undefined;

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
  let c = fastNetConf(conf);
  if (c === undefined) {
    netConfSchema ??= buildNetConfSchema();
    const parsed = netConfSchema.safeParse(conf);
    if (!parsed.success) {
      throw new CniPluginError(
        'ERR_CNI_INVALID_CONFIG',
        `invalid network config: ${parsed.error.issues.map(describeIssue).join('; ')}`,
      );
    }
    c = parsed.data;
  }
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

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const optional = (v: unknown, ok: (v: unknown) => boolean): boolean => v === undefined || ok(v);
const isString = (v: unknown): v is string => typeof v === 'string';
const nonEmpty = (v: unknown): boolean => typeof v === 'string' && v.length > 0;
const stringArray = (v: unknown): boolean => Array.isArray(v) && v.every(isString);
const objectArray = (v: unknown, ok: (item: Json) => boolean): boolean => Array.isArray(v) && v.every((i) => isObject(i) && ok(i));

/** A copy with `keys` first (those present), then the rest: the order zod's looseObject outputs. */
function reorder(obj: Json, keys: readonly string[], map: Record<string, (v: unknown) => unknown> = {}): Json {
  const out: Json = {};
  for (const k of keys) if (k in obj) out[k] = map[k] ? map[k](obj[k]) : obj[k];
  for (const k of Object.keys(obj)) if (!(k in out)) out[k] = obj[k];
  return out;
}

const IP_KEYS = ['address', 'gateway', 'interface', 'version'] as const;

function fastCniResult(r: unknown): Json | undefined {
  if (!isObject(r)) return undefined;
  const ok =
    optional(r['cniVersion'], isString) &&
    optional(r['interfaces'], (v) => objectArray(v, (i) => isString(i['name']))) &&
    optional(r['ips'], (v) =>
      objectArray(
        v,
        (ip) =>
          isString(ip['address']) &&
          CIDR_ADDRESS.test(ip['address']) &&
          optional(ip['gateway'], isString) &&
          optional(ip['interface'], (n) => Number.isSafeInteger(n) && (n as number) >= 0) &&
          optional(ip['version'], (x) => x === '4' || x === '6'),
      ),
    ) &&
    optional(r['routes'], (v) => objectArray(v, (i) => isString(i['dst']))) &&
    optional(r['dns'], isObject);
  if (!ok) return undefined;
  const each = (keys: readonly string[]) => (v: unknown) => (v as Json[]).map((i) => reorder(i, keys));
  return reorder(r, ['cniVersion', 'interfaces', 'ips', 'routes', 'dns'], {
    interfaces: each(['name']),
    ips: each(IP_KEYS),
    routes: each(['dst']),
    dns: (v) => reorder(v as Json, []),
  });
}

/**
 * The schema's output for a config it accepts, without zod, or undefined when the config is not
 * plainly valid (or uses enablement_selectors): then the schema decides and names what is wrong.
 * config.test.ts checks that both give the same output.
 */
function fastNetConf(conf: Json): NetConf | undefined {
  const k = conf['kubernetes'];
  const ok =
    isString(conf['cniVersion']) &&
    isString(conf['name']) &&
    NETWORK_NAME.test(conf['name']) &&
    nonEmpty(conf['type']) &&
    optional(conf['plugin_log_level'], (v) => (LOG_LEVELS as readonly unknown[]).includes(v)) &&
    optional(conf['cni_agent_run_dir'], nonEmpty) &&
    optional(conf['ambient_enabled'], (v) => typeof v === 'boolean') &&
    optional(conf['exclude_namespaces'], stringArray) &&
    conf['enablement_selectors'] === undefined &&
    optional(conf['pod_namespace'], nonEmpty) &&
    optional(conf['kubeconfig'], nonEmpty) &&
    optional(k, (v) => isObject(v) && optional(v['kubeconfig'], nonEmpty) && optional(v['exclude_namespaces'], stringArray));
  if (!ok) return undefined;
  let prevResult: Json | undefined;
  if (conf['prevResult'] !== undefined) {
    prevResult = fastCniResult(conf['prevResult']);
    if (prevResult === undefined) return undefined;
  }
  const defaults: Json = {
    plugin_log_level: 'info',
    cni_agent_run_dir: '/var/run/istio-cni',
    ambient_enabled: true,
    exclude_namespaces: [],
    pod_namespace: 'istio-system',
  };
  const keys = ['cniVersion', 'name', 'type', 'prevResult', 'plugin_log_level', 'cni_agent_run_dir', 'ambient_enabled', 'exclude_namespaces', 'enablement_selectors', 'pod_namespace', 'kubeconfig', 'kubernetes'];
  const filled: Json = { ...conf };
  for (const [key, value] of Object.entries(defaults)) if (filled[key] === undefined) filled[key] = value;
  if (prevResult !== undefined) filled['prevResult'] = prevResult;
  if (isObject(k)) filled['kubernetes'] = reorder(k, ['kubeconfig', 'exclude_namespaces']);
  return reorder(filled, keys) as NetConf;
}
