import { access, constants, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CniInvocationError, TopologyError } from './errors.js';
import type { Logger } from './logger.js';
import { run } from './run.js';

export type CniCommand = 'ADD' | 'DEL' | 'CHECK';

/** A plugin appended to a node's conflist after the primary `bridge` plugin. */
export interface CniPluginEntry {
  /** The plugin's `type`, which is also its executable's name in the node's CNI bin dir. */
  type: string;
  /** Absolute path of the executable; linked into the node's CNI bin dir as `type`. Omit if already there. */
  binary?: string;
  /** The rest of the plugin's configuration (everything but `type`). */
  config?: Record<string, unknown>;
}

export interface CniPluginConfig {
  type: string;
  [key: string]: unknown;
}

export interface CniConfList {
  cniVersion: string;
  name: string;
  plugins: CniPluginConfig[];
  [key: string]: unknown;
}

/** A CNI result (spec 1.0 shape; what `bridge` + `host-local` return). */
export interface CniResult {
  cniVersion: string;
  interfaces?: Array<{ name: string; mac?: string; sandbox?: string }>;
  ips?: Array<{ address: string; gateway?: string; interface?: number }>;
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: Record<string, unknown>;
  [key: string]: unknown;
}

/** What a container runtime knows about the pod sandbox it wires up. */
export interface CniRuntimeArgs {
  containerId: string;
  netnsPath: string;
  ifName: string;
  podName: string;
  podNamespace: string;
  podUid: string;
}

export interface CniExecContext {
  /** Name of the netns the plugin runs in: the node's "host" netns. */
  nodeNetns: string;
  /** The directory that is CNI_PATH. */
  binDir: string;
  logger: Logger;
  timeoutMs?: number;
}

/** CNI_ARGS as kubelet's runtimes pass it (IgnoreUnknown so plugins that do not know K8S_* accept it). */
export function cniArgs(runtime: CniRuntimeArgs): string {
  return [
    'IgnoreUnknown=1',
    `K8S_POD_NAMESPACE=${runtime.podNamespace}`,
    `K8S_POD_NAME=${runtime.podName}`,
    `K8S_POD_INFRA_CONTAINER_ID=${runtime.containerId}`,
    `K8S_POD_UID=${runtime.podUid}`,
  ].join(';');
}

/** The config one plugin of a list receives on stdin: its entry plus the list's name and version, and prevResult. */
export function pluginConfig(list: CniConfList, plugin: CniPluginConfig, prevResult: CniResult | undefined): Record<string, unknown> {
  return {
    ...plugin,
    cniVersion: list.cniVersion,
    name: list.name,
    ...(prevResult !== undefined ? { prevResult } : {}),
  };
}

/** Execute one plugin the way a runtime does: env + config on stdin, inside the node's netns. */
export async function execPlugin(
  command: CniCommand,
  config: Record<string, unknown> & { type: string },
  runtime: CniRuntimeArgs,
  context: CniExecContext,
): Promise<CniResult | undefined> {
  const binary = join(context.binDir, config.type);
  try {
    await access(binary, constants.X_OK);
  } catch (err) {
    throw new CniInvocationError(config.type, command, undefined, `failed to find plugin "${config.type}" in path [${context.binDir}]`, { cause: err });
  }
  const env = {
    CNI_COMMAND: command,
    CNI_CONTAINERID: runtime.containerId,
    CNI_NETNS: runtime.netnsPath,
    CNI_IFNAME: runtime.ifName,
    CNI_PATH: context.binDir,
    CNI_ARGS: cniArgs(runtime),
  };
  const started = Date.now();
  const result = await run('ip', ['netns', 'exec', context.nodeNetns, binary], {
    env,
    input: JSON.stringify(config),
    timeoutMs: context.timeoutMs ?? 30_000,
  });
  context.logger.debug(
    { plugin: config.type, command, containerId: runtime.containerId, code: result.code, ms: Date.now() - started, stderr: result.stderr.trim() || undefined },
    'cni plugin executed',
  );
  if (result.code !== 0) {
    const error = parseJson(result.stdout) as { code?: number; msg?: string; details?: string } | undefined;
    const detail = error?.msg !== undefined ? `${error.msg}${error.details ? `; ${error.details}` : ''}` : result.stderr.trim() || result.stdout.trim();
    throw new CniInvocationError(
      config.type,
      command,
      error?.code,
      `CNI plugin ${config.type} ${command} for pod ${runtime.podNamespace}/${runtime.podName} failed (exit ${result.code ?? result.signal}${error?.code !== undefined ? `, code ${error.code}` : ''}): ${detail}`,
    );
  }
  if (command !== 'ADD') return undefined;
  const parsed = parseJson(result.stdout);
  if (typeof parsed !== 'object' || parsed === null) {
    throw new CniInvocationError(config.type, command, undefined, `CNI plugin ${config.type} ADD printed no JSON result: ${JSON.stringify(result.stdout.slice(0, 200))}`);
  }
  return parsed as CniResult;
}

/**
 * Run a conflist like libcni: ADD in order threading prevResult; CHECK in order with the cached result;
 * DEL in reverse order with the cached result (spec >= 0.4.0). DEL runs every plugin and throws the first error.
 */
export async function runChain(
  command: CniCommand,
  list: CniConfList,
  runtime: CniRuntimeArgs,
  context: CniExecContext,
  cachedResult?: CniResult,
): Promise<CniResult | undefined> {
  if (command === 'ADD') {
    let prev: CniResult | undefined;
    for (const plugin of list.plugins) {
      prev = await execPlugin('ADD', pluginConfig(list, plugin, prev) as CniPluginConfig, runtime, context);
    }
    return prev;
  }
  const plugins = command === 'DEL' ? [...list.plugins].reverse() : list.plugins;
  let firstError: unknown;
  for (const plugin of plugins) {
    try {
      await execPlugin(command, pluginConfig(list, plugin, cachedResult) as CniPluginConfig, runtime, context);
    } catch (err) {
      if (command === 'CHECK') throw err;
      firstError ??= err;
    }
  }
  if (firstError !== undefined) throw firstError;
  return undefined;
}

/** Load the network config a runtime would use: the lexically first .conflist/.conf/.json in the directory. */
export async function loadConfList(confDir: string): Promise<CniConfList> {
  let files: string[];
  try {
    files = (await readdir(confDir)).filter((f) => /\.(conflist|conf|json)$/.test(f)).sort();
  } catch (err) {
    throw new TopologyError('TOPOLOGY_NOT_FOUND', `CNI config dir ${confDir} cannot be read: ${(err as Error).message}`, { cause: err });
  }
  const file = files[0];
  if (file === undefined) throw new TopologyError('TOPOLOGY_NOT_FOUND', `no CNI network config in ${confDir}`);
  const path = join(confDir, file);
  const parsed = parseJson(await readFile(path, 'utf8')) as Record<string, unknown> | undefined;
  if (parsed === undefined || typeof parsed !== 'object') {
    throw new TopologyError('TOPOLOGY_INVALID_OPTIONS', `CNI config ${path} is not valid JSON`);
  }
  if (Array.isArray(parsed.plugins)) return parsed as CniConfList;
  if (typeof parsed.type === 'string') {
    // A single-plugin .conf is wrapped into a list, as runtimes do.
    const { cniVersion, name, ...plugin } = parsed;
    return { cniVersion: String(cniVersion ?? '1.0.0'), name: String(name ?? 'k8s-pod-network'), plugins: [plugin as CniPluginConfig] };
  }
  throw new TopologyError('TOPOLOGY_INVALID_OPTIONS', `CNI config ${path} has neither "plugins" nor "type"`);
}

/** The pod's address from a CNI result: the first IPv4 address, without its prefix length. */
export function resultIpv4(result: CniResult | undefined): string | undefined {
  for (const entry of result?.ips ?? []) {
    const address = entry.address.split('/')[0];
    if (address !== undefined && address.includes('.')) return address;
  }
  return undefined;
}

/** The first IPv6 address of a CNI result, without its prefix length. */
export function resultIpv6(result: CniResult | undefined): string | undefined {
  for (const entry of result?.ips ?? []) {
    const address = entry.address.split('/')[0];
    if (address !== undefined && address.includes(':')) return address;
  }
  return undefined;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
