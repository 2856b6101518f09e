import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { CniAgentError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import { containerSecurity, podKey, REDIRECTION_ANNOTATION, type NamespaceInfo, type PodInfo } from './pod.js';
import type { PodEvent, PodSource, PodSourceHandlers } from './pod-source.js';

const labels = z.record(z.string(), z.string()).default({});

const capabilityList = z.array(z.string().min(1)).optional();

// The v1 container fields the capture-bypass check reads, strict like the rest of the file: a
// misspelt `capabilities` must not read as "no capabilities added".
const containers = z
  .array(
    z
      .object({
        name: z.string().min(1),
        securityContext: z
          .object({
            privileged: z.boolean().optional(),
            capabilities: z.object({ add: capabilityList, drop: capabilityList }).strict().optional(),
          })
          .strict()
          .optional(),
      })
      .strict(),
  )
  .default([]);

const podsFileSchema = z
  .object({
    namespaces: z.array(z.object({ name: z.string().min(1), labels }).strict()).default([]),
    pods: z
      .array(
        z
          .object({
            name: z.string().min(1),
            namespace: z.string().min(1),
            uid: z.string().min(1),
            labels,
            annotations: labels,
            serviceAccount: z.string().default('default'),
            hostNetwork: z.boolean().default(false),
            node: z.string().optional(),
            ips: z.array(z.string()).default([]),
            netns: z.string().optional(),
            containers,
            initContainers: containers,
            ephemeralContainers: containers,
          })
          .strict(),
      )
      .default([]),
  })
  .strict();

export type PodsFile = z.input<typeof podsFileSchema>;

export interface FilePodSourceOptions {
  /** YAML file: `namespaces: [{name, labels}]`, `pods: [{name, namespace, uid, labels, ips, netns, ...}]`. */
  path: string;
  /** Pods naming another `node` are ignored. */
  nodeName?: string;
  logger?: Logger;
  /** Coalesces bursts of file-change notifications. */
  debounceMs?: number;
}

/**
 * Pods and namespaces from a static YAML file (the local sandbox), re-read when the file changes.
 * The redirection annotation lives in memory (the file is the user's, never written).
 */
export class FilePodSource implements PodSource {
  private readonly log: Logger;
  private podMap = new Map<string, PodInfo>();
  private nsMap = new Map<string, NamespaceInfo>();
  private readonly redirection = new Map<string, string>();
  private handlers: PodSourceHandlers | undefined;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reloading: Promise<void> = Promise.resolve();

  constructor(private readonly opts: FilePodSourceOptions) {
    this.log = (opts.logger ?? silentLogger).child({ scope: 'pods-file' });
  }

  async start(handlers: PodSourceHandlers): Promise<void> {
    this.handlers = handlers;
    const { pods, namespaces } = await this.read();
    this.apply(pods, namespaces);
    // Watch the directory: editors and atomic writers replace the file by rename.
    const file = basename(this.opts.path);
    this.watcher = watch(dirname(this.opts.path), (_event, name) => {
      if (name !== null && name !== file) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.reload(), this.opts.debounceMs ?? 50);
    });
    this.watcher.on('error', (err) => this.log.warn({ err, path: this.opts.path }, 'pods file watch error'));
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.watcher?.close();
    this.watcher = undefined;
    this.handlers = undefined;
    await this.reloading;
  }

  private reload(): void {
    this.reloading = this.reloading.then(async () => {
      try {
        const { pods, namespaces } = await this.read();
        if (this.handlers) this.apply(pods, namespaces);
      } catch (err) {
        this.log.warn({ err, path: this.opts.path }, 'pods file unreadable, keeping the previous contents');
        this.handlers?.invalid?.(err as Error);
      }
    });
  }

  private async read(): Promise<{ pods: PodInfo[]; namespaces: NamespaceInfo[] }> {
    let text: string;
    try {
      text = await readFile(this.opts.path, 'utf8');
    } catch (cause) {
      throw new CniAgentError('ERR_AGENT_PODS_FILE', `cannot read pods file ${this.opts.path}`, { cause });
    }
    let doc: unknown;
    try {
      doc = parseYaml(text) ?? {};
    } catch (cause) {
      throw new CniAgentError('ERR_AGENT_PODS_FILE', `pods file ${this.opts.path} is not YAML`, { cause });
    }
    const parsed = podsFileSchema.safeParse(doc);
    if (!parsed.success) {
      const why = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
      throw new CniAgentError('ERR_AGENT_PODS_FILE', `pods file ${this.opts.path} is invalid: ${why}`);
    }
    const namespaces = parsed.data.namespaces.map((n) => ({ name: n.name, labels: n.labels }));
    const pods = parsed.data.pods
      .filter((p) => p.node === undefined || this.opts.nodeName === undefined || p.node === this.opts.nodeName)
      .map(
        (p): PodInfo => ({
          uid: p.uid,
          name: p.name,
          namespace: p.namespace,
          labels: p.labels,
          annotations: p.annotations,
          hostNetwork: p.hostNetwork,
          serviceAccount: p.serviceAccount,
          nodeName: p.node ?? this.opts.nodeName,
          ips: p.ips,
          phase: 'Running',
          terminating: false,
          netnsPath: p.netns,
          containers: containerSecurity(p),
        }),
      );
    return { pods, namespaces };
  }

  private withRedirection(pod: PodInfo): PodInfo {
    const value = this.redirection.get(pod.uid);
    if (value === undefined) return pod;
    return { ...pod, annotations: { ...pod.annotations, [REDIRECTION_ANNOTATION]: value } };
  }

  private apply(pods: PodInfo[], namespaces: NamespaceInfo[]): void {
    const h = this.handlers;
    const nextNs = new Map(namespaces.map((n) => [n.name, n]));
    // Namespaces referenced by pods but not listed exist with no labels.
    for (const p of pods) if (!nextNs.has(p.namespace)) nextNs.set(p.namespace, { name: p.namespace, labels: {} });
    const nextPods = new Map(pods.map((p) => [podKey(p.namespace, p.name), p]));
    const oldPods = this.podMap;
    const oldNs = this.nsMap;
    this.podMap = nextPods;
    this.nsMap = nextNs;
    if (!h) return;
    for (const [key, pod] of oldPods) {
      const next = nextPods.get(key);
      if (!next || next.uid !== pod.uid) {
        this.redirection.delete(pod.uid);
        h.podDeleted(this.withRedirection(pod));
      }
    }
    for (const [name, ns] of nextNs) {
      if (!isDeepStrictEqual(oldNs.get(name), ns)) h.namespaceChanged(ns);
    }
    for (const [key, pod] of nextPods) {
      if (!isDeepStrictEqual(oldPods.get(key), pod)) h.podChanged(this.withRedirection(pod));
    }
  }

  pods(): PodInfo[] {
    return [...this.podMap.values()].map((p) => this.withRedirection(p));
  }

  pod(namespace: string, name: string): PodInfo | undefined {
    const p = this.podMap.get(podKey(namespace, name));
    return p && this.withRedirection(p);
  }

  /** From memory, else the file re-read now: a pod written a moment ago may be ahead of the watch. */
  async fetchPod(namespace: string, name: string): Promise<PodInfo | undefined> {
    const known = this.pod(namespace, name);
    if (known || !this.handlers) return known;
    await this.reloadNow();
    return this.pod(namespace, name);
  }

  private reloadNow(): Promise<void> {
    clearTimeout(this.timer);
    this.reload();
    return this.reloading;
  }

  namespace(name: string): NamespaceInfo | undefined {
    return this.nsMap.get(name);
  }

  async fetchNamespace(name: string): Promise<NamespaceInfo | undefined> {
    const known = this.namespace(name);
    if (known || !this.handlers) return known;
    await this.reloadNow();
    return this.namespace(name);
  }

  async setRedirection(pod: PodInfo, value: 'enabled' | null): Promise<void> {
    if (value === null) this.redirection.delete(pod.uid);
    else this.redirection.set(pod.uid, value);
  }

  async recordEvent(pod: PodInfo, event: PodEvent): Promise<void> {
    this.log.info({ pod: podKey(pod.namespace, pod.name), uid: pod.uid, ...event }, 'pod event');
  }
}
