import { DEFAULT_ENABLEMENT_SELECTORS, type EnablementSelector } from './enrollment.js';
import { CniPluginError } from './errors.js';
import type { CniResult, NetConf } from './config-schema.js';
import { isSupportedVersion, SUPPORTED_VERSIONS, type CniVersion } from './version.js';

export type { CniResult } from './config-schema.js';

export const CIDR_ADDRESS = /^[0-9a-fA-F.:]+\/\d{1,3}$/;
export const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'none'] as const;

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

/**
 * The plugin config for a plainly valid network config (cniVersion checked: code 1 or 7), without
 * zod; undefined when only the schema (config-schema.ts, parsePluginConfig) can decide.
 */
export function parsePluginConfigFast(conf: Record<string, unknown>): PluginConfig | undefined {
  const cniVersion = checkCniVersion(conf);
  const c = fastNetConf(conf);
  return c === undefined ? undefined : toPluginConfig(conf, cniVersion, c);
}

/** The plugin config from the schema's output. */
export function toPluginConfig(conf: Record<string, unknown>, cniVersion: CniVersion, c: NetConf): PluginConfig {
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
 * The schema's output (config-schema.ts) for a config it accepts, without zod, or undefined when the config is not
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
