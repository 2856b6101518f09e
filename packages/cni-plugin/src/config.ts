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
