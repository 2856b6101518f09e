import { stat, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { checkCniVersion, decodeStdin, type LogLevel, type PluginConfig } from './config.js';
import { parsePluginConfig } from './config-schema.js';
import { isAmbientEnrolled } from './enrollment.js';
import { parseCniEnv, type CniEnv } from './env.js';
import { CniPluginError, toCniError } from './errors.js';
import type { CmdAddAnswer } from './agent-client.js';
import { ipConfigsFromResult, PLUGIN_EVENT_SOCKET, type CmdAddEventBody } from './event.js';
import type { KubeClient } from './kube-client.js';
import { silentLogger, type Logger } from './logger.js';
import { compareVersions, convertResult, isSupportedVersion, LATEST_VERSION, SUPPORTED_VERSIONS, type CniVersion } from './version.js';

/** The name prefixes of the node agent's own pods (istio-cni's and Weir's DaemonSets). */
export const AGENT_POD_PREFIXES = ['istio-cni-node-', 'weir-cni-node-'] as const;

export interface CniInvocation {
  /** The CNI_* variables, as the runtime set them. */
  env: Readonly<Record<string, string | undefined>>;
  /** The network configuration the runtime wrote to stdin. */
  stdin: string | Buffer;
}

/** What the plugin process must print on stdout and exit with. */
export interface CniOutcome {
  exitCode: 0 | 1;
  /** A result, a version report, a CNI error object, or empty (DEL/CHECK/STATUS/GC success). */
  stdout: string;
}

export interface CniPluginOptions {
  /** A logger, or a factory given the config's `plugin_log_level` once it is known. Default silent. */
  logger?: Logger | ((level: LogLevel) => Logger);
  /** Deadline for the agent's answer to `/cmdadd`; default 5000 ms. */
  agentTimeoutMs?: number;
  /** Deadline for each Kubernetes API GET (only when the agent cannot be reached); default 5000 ms. */
  kubeTimeoutMs?: number;
  /** The host's network namespace, to skip host-network sandboxes without any call; default `/proc/self/ns/net`. */
  hostNetnsPath?: string;
}

function resolveLogger(opts: CniPluginOptions, level: LogLevel): Logger {
  if (typeof opts.logger === 'function') return opts.logger(level);
  return opts.logger ?? silentLogger;
}

/**
 * Runs one CNI command, exactly as the plugin binary does, and returns what to print and the exit
 * code (the library never writes to stdout or exits). Errors become CNI error JSON with the spec's codes.
 */
export async function runCni(inv: CniInvocation, opts: CniPluginOptions = {}): Promise<CniOutcome> {
  let version: CniVersion = LATEST_VERSION;
  let log = resolveLogger(opts, 'info');
  try {
    const env = parseCniEnv(inv.env);
    if (env.command === 'VERSION') return versionReport(inv.stdin);
    const raw = decodeStdin(inv.stdin);
    version = checkCniVersion(raw);
    const config = parsePluginConfig(raw);
    log = resolveLogger(opts, config.pluginLogLevel).child({
      cmd: env.command,
      containerId: env.containerId,
      pod: env.args.K8S_POD_NAME ? `${env.args.K8S_POD_NAMESPACE ?? ''}/${env.args.K8S_POD_NAME}` : undefined,
    });
    switch (env.command) {
      case 'ADD':
        return ok(JSON.stringify(await cmdAdd(env, config, log, opts)));
      case 'CHECK':
        if (config.prevResult === undefined) {
          throw new CniPluginError('ERR_CNI_INVALID_CONFIG', 'invalid network config: prevResult: required for CHECK');
        }
        return ok('');
      case 'DEL':
        // Teardown is driven by the agent's pod watch; DEL holds no state, so it is always idempotent.
        log.debug({}, 'DEL: nothing to release');
        return ok('');
      case 'STATUS':
      case 'GC':
        if (compareVersions(config.cniVersion, '1.1.0') < 0) {
          throw new CniPluginError('ERR_CNI_INCOMPATIBLE_VERSION', `config cniVersion "${config.cniVersion}" does not allow ${env.command} (needs 1.1.0)`);
        }
        // Non-enrolled pods never depend on the agent, so the plugin is always able to serve ADD.
        return ok('');
    }
  } catch (err) {
    const out = toCniError(err, version);
    log.error(out.details ? { code: out.code, details: out.details } : { code: out.code }, out.msg);
    return { exitCode: 1, stdout: JSON.stringify(out) };
  }
}

function ok(stdout: string): CniOutcome {
  return { exitCode: 0, stdout };
}

function versionReport(stdin: string | Buffer): CniOutcome {
  let requested: string | undefined;
  try {
    const v = (JSON.parse(stdin.toString()) as { cniVersion?: unknown }).cniVersion;
    if (typeof v === 'string') requested = v;
  } catch {
    // VERSION may be called with no or partial stdin; report the latest version then.
  }
  const cniVersion = requested !== undefined && isSupportedVersion(requested) ? requested : LATEST_VERSION;
  return ok(JSON.stringify({ cniVersion, supportedVersions: [...SUPPORTED_VERSIONS] }));
}

/** The result to print: prevResult unchanged (converted to the config's version), or an empty result. */
function passThrough(config: PluginConfig): Record<string, unknown> {
  return config.prevResult ? convertResult(config.prevResult, config.cniVersion) : { cniVersion: config.cniVersion };
}

/** Whether two paths are the same netns (`node:fs`, not `node:fs/promises`: that costs each exec ~5 ms to load). */
async function sameNetns(a: string, b: string): Promise<boolean> {
  const statOf = (path: string) =>
    new Promise<BigIntStats | undefined>((resolve) => stat(path, { bigint: true }, (err, st) => resolve(err ? undefined : st)));
  const [sa, sb] = await Promise.all([statOf(a), statOf(b)]);
  return sa !== undefined && sb !== undefined && sa.dev === sb.dev && sa.ino === sb.ino;
}

async function cmdAdd(env: CniEnv, config: PluginConfig, log: Logger, opts: CniPluginOptions): Promise<Record<string, unknown>> {
  const result = passThrough(config);
  const podName = env.args.K8S_POD_NAME;
  const podNamespace = env.args.K8S_POD_NAMESPACE;
  if (!config.ambientEnabled) return result;
  if (!podName || !podNamespace) {
    log.debug({}, 'not a kubernetes pod, passing through');
    return result;
  }
  // Decisions that need no call first, so that these pods never depend on the API or the agent.
  if (config.excludeNamespaces.includes(podNamespace)) {
    log.info({}, 'pod namespace excluded');
    return result;
  }
  if (podNamespace === config.podNamespace && AGENT_POD_PREFIXES.some((p) => podName.startsWith(p))) {
    log.info({}, 'pod is the node agent itself, skipping');
    return result;
  }
  if (await sameNetns(env.netns ?? '', opts.hostNetnsPath ?? '/proc/self/ns/net')) {
    log.info({ netns: env.netns }, 'pod uses the host network, skipping');
    return result;
  }

  const socketPath = join(config.cniAgentRunDir, PLUGIN_EVENT_SOCKET);
  const event: CmdAddEventBody = {
    Netns: env.netns ?? '',
    PodName: podName,
    PodNamespace: podNamespace,
    ...(env.args.K8S_POD_UID ? { PodUID: env.args.K8S_POD_UID } : {}),
    IPs: ipConfigsFromResult(config.prevResult),
  };
  // The agent decides enrollment from its pod cache, so every pod is asked about there first: no
  // API round trip (TLS, two GETs) in the plugin, and an agent that is there is the only authority.
  log.debug({ netns: env.netns, socket: socketPath }, 'notifying node agent');
  const { postCmdAdd } = await import('./agent-client.js');
  let answer: CmdAddAnswer;
  try {
    answer = await postCmdAdd(event, { socketPath, timeoutMs: opts.agentTimeoutMs ?? 5000 });
  } catch (err) {
    if (err instanceof CniPluginError && err.code === 'ERR_CNI_AGENT_UNREACHABLE') return withoutAgent(env, config, log, opts, err, result);
    throw err;
  }
  if (answer.outcome === 'captured') log.info({}, 'node agent captured pod');
  else log.info({}, 'pod not ambient enabled, node agent has nothing to capture');
  return result;
}

/**
 * No agent to ask (no socket, nobody listening): a pod outside the mesh must still start, so the
 * plugin looks it up in the API itself. Enrolled, or not known either way, fails the ADD: a pod never
 * starts uncaptured.
 */
async function withoutAgent(
  env: CniEnv,
  config: PluginConfig,
  log: Logger,
  opts: CniPluginOptions,
  unreachable: CniPluginError,
  result: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const podName = env.args.K8S_POD_NAME ?? '';
  const podNamespace = env.args.K8S_POD_NAMESPACE ?? '';
  log.warn({ err: unreachable.message }, 'node agent unreachable, checking enrollment with the Kubernetes API');
  let enrolled: boolean;
  let kube: KubeClient | undefined;
  try {
    // HTTP/TLS are loaded only on the paths that talk to someone: VERSION, DEL and skipped pods start faster.
    const { KubeClient, loadKubeconfig } = await import('./kube-client.js');
    kube = new KubeClient(await loadKubeconfig(config.kubeconfigPath), { timeoutMs: opts.kubeTimeoutMs ?? 5000 });
    const ns = encodeURIComponent(podNamespace);
    const [pod, namespace] = await Promise.all([
      kube.get(`/api/v1/namespaces/${ns}/pods/${encodeURIComponent(podName)}`),
      kube.get(`/api/v1/namespaces/${ns}`),
    ]);
    enrolled = isAmbientEnrolled(pod as never, namespace as never, {
      enablementSelectors: config.enablementSelectors,
      excludeNamespaces: config.excludeNamespaces,
    });
  } catch (err) {
    const socketPath = join(config.cniAgentRunDir, PLUGIN_EVENT_SOCKET);
    const why = (unreachable.cause as NodeJS.ErrnoException | undefined)?.code ?? 'no connection';
    throw new CniPluginError(
      'ERR_CNI_AGENT_UNAVAILABLE',
      `weir-cni ADD for pod ${podNamespace}/${podName} failed: node agent unreachable at ${socketPath} (${why}) and API lookup failed: ${(err as Error).message}; ` +
        'cannot tell whether the pod is enrolled, so it is not started (fail closed), retry later',
      { cause: err },
    );
  } finally {
    kube?.close();
  }
  if (!enrolled) {
    log.info({}, 'pod not ambient enabled (checked with the API, node agent unreachable), passing through');
    return result;
  }
  throw new CniPluginError('ERR_CNI_AGENT_UNAVAILABLE', unreachable.message, { cause: unreachable.cause });
}
