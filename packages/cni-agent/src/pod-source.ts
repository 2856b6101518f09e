import type { NamespaceInfo, PodInfo } from './pod.js';

/** Callbacks a pod source drives; each call is one changed object. */
export interface PodSourceHandlers {
  /** A pod on this node was added or changed. */
  podChanged(pod: PodInfo): void;
  /** A pod on this node is gone from the source (deleted). */
  podDeleted(pod: PodInfo): void;
  /** A namespace was added or its labels changed. */
  namespaceChanged(ns: NamespaceInfo): void;
  /** An object the source could not understand; the source skipped it. */
  invalid?(err: Error): void;
}

export interface PodEvent {
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
}

/**
 * Where the agent learns about pods: the Kubernetes API or a static file. Every implementation
 * keeps a cache that is complete once start() resolves, and keeps delivering changes after it.
 */
export interface PodSource {
  start(handlers: PodSourceHandlers): Promise<void>;
  stop(): Promise<void>;
  /** All known pods on this node. */
  pods(): PodInfo[];
  pod(namespace: string, name: string): PodInfo | undefined;
  /**
   * Looks a pod up in the cache, then asks the source directly (a new pod may not be cached yet).
   * With `uid`, a cached pod of another uid (a deleted one of the same name) is asked for again where
   * the source can; the caller still compares the uid it gets.
   */
  fetchPod(namespace: string, name: string, uid?: string): Promise<PodInfo | undefined>;
  namespace(name: string): NamespaceInfo | undefined;
  /**
   * As fetchPod, for a namespace. What it fetches joins the cache (unless the cache has a later
   * version by then), so namespace() — the controller's check — agrees with this lookup.
   */
  fetchNamespace(name: string): Promise<NamespaceInfo | undefined>;
  /** Sets (`enabled`) or removes (`null`) the `ambient.istio.io/redirection` annotation. */
  setRedirection(pod: PodInfo, value: 'enabled' | null): Promise<void>;
  /** Records a Kubernetes Event about the pod (best effort). */
  recordEvent(pod: PodInfo, event: PodEvent): Promise<void>;
}
