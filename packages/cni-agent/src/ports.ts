import type { PodInfo } from './pod.js';

/** An open network namespace (the shape of @weir/netns's Netns that the agent uses). */
export interface NetnsHandle {
  readonly fd: number;
  readonly id: { dev: number; ino: number };
  readonly path: string | undefined;
  readonly closed: boolean;
  close(): void;
}

export type OpenNetns = (path: string) => NetnsHandle;

/**
 * Whether an open netns holds one of these IPs as a local address (the check of the /proc scan, on
 * a handle). Throws when it cannot tell: a path that is not proven the pod's is not used.
 */
export type NetnsHoldsIp = (netns: NetnsHandle, ips: readonly string[]) => boolean;

/** What drifted and was put back. */
export interface RepairReport {
  /** True when anything was (re)applied. */
  changed: boolean;
  /** Human-readable items that were missing or different before the apply. */
  repaired: string[];
}

/** The in-pod rules and routing, and the host-side probe SNAT. */
export interface PodRules {
  /** Host netns: ipset + SNAT rules for kubelet probes. Idempotent. */
  setupHost(): Promise<void>;
  /**
   * Applies (or repairs) the in-pod rules and policy routing; idempotent, applies only a diff.
   * `likelyNew`: a first capture (CNI ADD), so the netns most likely holds nothing yet and may be
   * installed without reading it first (same result either way, fewer processes).
   */
  apply(pod: PodInfo, netns: NetnsHandle, opts?: { likelyNew?: boolean }): Promise<RepairReport>;
  /** Removes every in-pod rule and route this agent installs. */
  remove(pod: PodInfo, netns: NetnsHandle): Promise<void>;
  addHostProbe(pod: PodInfo, ips: string[]): Promise<void>;
  removeHostProbe(pod: PodInfo): Promise<void>;
  /** Drops probe ipset entries of pods not in `keep` (left by pods deleted while the agent was down). */
  syncHostProbes(keep: ReadonlySet<string>): Promise<string[]>;
  /** Removes the host-side rules and ipset (real uninstall only). */
  teardownHost(): Promise<void>;
  /** Releases what the rules engine holds (helper processes). */
  close?(): void;
}

/** ztunnel, over ZDS. */
export interface WorkloadHandoff {
  readonly connected: boolean;
  addWorkload(
    uid: string,
    info: { name: string; namespace: string; serviceAccount: string },
    netns: NetnsHandle,
  ): Promise<void>;
  removeWorkload(uid: string): Promise<void>;
  /** Names a pod in ztunnel's snapshots without a netns (found none after a restart): ztunnel keeps its proxy. */
  keepWorkload?(uid: string, info: { name: string; namespace: string; serviceAccount: string }): void;
}

/** Decides whether a pod belongs in the mesh (the rule shared with the CNI plugin). */
export type EnrollmentRule = (pod: PodInfo, namespace: { name: string; labels: Record<string, string> } | undefined) => boolean;
