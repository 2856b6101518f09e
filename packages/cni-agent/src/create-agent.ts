import { openNetns, type Netns } from '@weir/netns';
import { ZdsServer } from '@weir/redirect-protocol';
import { cmdAddEventSchema, isAmbientEnrolled } from '@weir/cni-plugin';
import { NodeAgent, type NodeAgentOptions, type ZtunnelServer } from './agent.js';
import type { CmdAddEvent } from './event-server.js';
import { IptablesPodRules, type IptablesPodRulesOptions } from './iptables-rules.js';
import { silentLogger, type Logger } from './logger.js';
import type { PodSource } from './pod-source.js';
import type { NetnsHandle } from './ports.js';
import { holdsPodIp, netnsLocalAddresses } from './proc-scan.js';

export interface CreateNodeAgentOptions {
  nodeName: string;
  source: PodSource;
  /** Default `/var/run/istio-cni`. */
  runDir?: string;
  /** ZDS socket ztunnel connects to; default `/var/run/ztunnel/ztunnel.sock`. */
  zdsSocket?: string;
  /** Pods here are never enrolled (the plugin's `exclude_namespaces`). */
  excludeNamespaces?: string[];
  rules?: Omit<IptablesPodRulesOptions, 'logger'>;
  health?: NodeAgentOptions['health'];
  driftIntervalMs?: number;
  cmdAddTimeoutMs?: number;
  retryInitialMs?: number;
  retryMaxMs?: number;
  concurrency?: number;
  zdsAckTimeoutMs?: number;
  /** Pods that can set SO_MARK and skip capture; default `{ mode: 'warn' }` with containerd's default capabilities. */
  captureBypass?: NodeAgentOptions['captureBypass'];
  logger?: Logger;
}

/** A NodeAgent wired to the real world: @weir/netns, ZDS over a unix socket, iptables, the plugin's rule. */
export function createNodeAgent(opts: CreateNodeAgentOptions): NodeAgent {
  const logger = opts.logger ?? silentLogger;
  const zds = new ZdsServer({
    ...(opts.zdsSocket !== undefined ? { path: opts.zdsSocket } : {}),
    ...(opts.zdsAckTimeoutMs !== undefined ? { ackTimeoutMs: opts.zdsAckTimeoutMs } : {}),
    logger,
  });
  const ztunnel: ZtunnelServer = {
    get connected() {
      return zds.connected;
    },
    addWorkload: (uid, info, netns) => zds.addWorkload(uid, info, netns as Netns),
    removeWorkload: (uid) => zds.removeWorkload(uid),
    keepWorkload: (uid, info) => zds.keepWorkload(uid, info),
    start: () => zds.start(),
    close: () => zds.close(),
    on: (event: 'connection' | 'disconnect' | 'snapshotAcked' | 'nack', listener: (uid: string | undefined, reason: string) => void) =>
      event === 'nack' ? zds.on('nack', (err) => listener(err.uid, err.reason)) : zds.on(event, () => listener(undefined, '')),
  };
  const exclude = opts.excludeNamespaces ?? [];
  const rules = new IptablesPodRules({ ...opts.rules, logger });
  return new NodeAgent({
    nodeName: opts.nodeName,
    source: opts.source,
    rules,
    captureConfig: () => rules.captureConfig(),
    ztunnel,
    openNetns: (path): NetnsHandle => openNetns(path),
    netnsHoldsIp: (netns, ips) => holdsPodIp(netnsLocalAddresses(netns as Netns), ips),
    enrolled: (pod, ns) => isAmbientEnrolled(pod, ns, { excludeNamespaces: exclude }),
    parseCmdAdd: (body): CmdAddEvent => cmdAddEventSchema.parse(body),
    logger,
    ...(opts.runDir !== undefined ? { runDir: opts.runDir } : {}),
    ...(opts.health !== undefined ? { health: opts.health } : {}),
    ...(opts.driftIntervalMs !== undefined ? { driftIntervalMs: opts.driftIntervalMs } : {}),
    ...(opts.cmdAddTimeoutMs !== undefined ? { cmdAddTimeoutMs: opts.cmdAddTimeoutMs } : {}),
    ...(opts.retryInitialMs !== undefined ? { retryInitialMs: opts.retryInitialMs } : {}),
    ...(opts.retryMaxMs !== undefined ? { retryMaxMs: opts.retryMaxMs } : {}),
    ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
    ...(opts.captureBypass !== undefined ? { captureBypass: opts.captureBypass } : {}),
  });
}
