import { watch, type FSWatcher } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from '@weir/cni-agent';

export interface CniInstallerOptions {
  /** The plugin executable to install (a single file). */
  pluginSource: string;
  /** Its name in the CNI bin dir, which is also the `type` of the conflist entry. */
  pluginType: string;
  /** Node's CNI binary dir (e.g. `/opt/cni/bin`). */
  binDir: string;
  /** Node's CNI config dir (e.g. `/etc/cni/net.d`). */
  confDir: string;
  /** The plugin's entry in the conflist (without `type`, which is `pluginType`). */
  pluginConfig: Record<string, unknown>;
  /** The plugin's kubeconfig, written with mode 0600 when given. */
  kubeconfig?: PluginKubeconfigSpec;
  /** Where the installer remembers what it changed, so that uninstall removes exactly that. */
  stateFile: string;
  logger: Logger;
  debounceMs?: number;
  /**
   * While watching, also re-check everything this often (default 60 s; 0: never): an inotify watch
   * can be lost (max_user_watches, the directory replaced), and a rotated token must reach the file.
   */
  resyncMs?: number;
}

/**
 * Where the plugin kubeconfig goes and how to make it. `render` runs on install and again whenever
 * one of the `sources` it reported last changes (a rotated service account token) or on resync.
 */
export interface PluginKubeconfigSpec {
  path: string;
  render: () => Promise<{ content: string; sources: string[] }>;
}

/** This many conflist rewrites within FLAP_WINDOW_MS means someone else keeps undoing ours. */
const FLAP_REWRITES = 5;
const FLAP_WINDOW_MS = 60_000;

interface InstallState {
  /** The conflist file we added the entry to. */
  conflist?: string;
  /** A lone `.conf` we wrapped into `conflist`: its path and original text, restored on uninstall. */
  wrapped?: { path: string; text: string };
  binary?: string;
  kubeconfig?: string;
}

export class CniInstallerError extends Error {
  readonly code = 'ERR_CNI_INSTALL';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CniInstallerError';
  }
}

async function writeAtomic(path: string, data: string | Buffer, mode: number): Promise<void> {
  const tmp = join(path, '..', `.${basename(path)}.tmp-${process.pid}`);
  await writeFile(tmp, data, { mode });
  await chmod(tmp, mode);
  await rename(tmp, path);
}

const CONF_EXT = /\.(conflist|conf|json)$/;

/**
 * Installs the chained CNI plugin on the node: the binary (atomic copy), the plugin as the last
 * entry of the primary conflist (a lone `.conf` is wrapped into a `.conflist`), and its kubeconfig.
 * Watches the config dir and puts the entry back when another component rewrites the file.
 */
export class CniInstaller {
  private state: InstallState = {};
  private watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private working: Promise<void> = Promise.resolve();
  private rewrites: number[] = [];
  private flapWarnedAt = 0;

  private kubeconfig: PluginKubeconfigSpec | undefined;
  private kubeconfigSources: string[] = [];

  constructor(private readonly opts: CniInstallerOptions) {
    this.kubeconfig = opts.kubeconfig;
  }

  /** Sets the plugin kubeconfig written by the next install(). */
  setKubeconfig(kubeconfig: PluginKubeconfigSpec): void {
    this.kubeconfig = kubeconfig;
  }

  private entry(): Record<string, unknown> {
    return { ...this.opts.pluginConfig, type: this.opts.pluginType };
  }

  async install(): Promise<void> {
    await this.loadState();
    await mkdir(this.opts.binDir, { recursive: true });
    const target = join(this.opts.binDir, this.opts.pluginType);
    const tmp = join(this.opts.binDir, `.${this.opts.pluginType}.tmp-${process.pid}`);
    try {
      await copyFile(this.opts.pluginSource, tmp);
      await chmod(tmp, 0o755);
      // rename is atomic: a runtime exec'ing the plugin sees the old or the new file, never half.
      await rename(tmp, target);
    } catch (cause) {
      await rm(tmp, { force: true });
      throw new CniInstallerError(`cannot install CNI plugin ${this.opts.pluginSource} to ${target}`, { cause });
    }
    this.state.binary = target;
    this.opts.logger.info({ path: target }, 'installed CNI plugin binary');
    await this.refreshKubeconfig(true);
    await this.ensureConfig();
    await this.saveState();
  }

  /**
   * Writes the plugin kubeconfig when its rendering differs from the file (or always, on install).
   * Returns true when it wrote.
   */
  async refreshKubeconfig(force = false): Promise<boolean> {
    if (!this.kubeconfig) return false;
    const { path } = this.kubeconfig;
    const { content, sources } = await this.kubeconfig.render();
    this.kubeconfigSources = sources;
    this.state.kubeconfig = path;
    if (!force && (await readFile(path, 'utf8').catch(() => undefined)) === content) return false;
    await mkdir(dirname(path), { recursive: true });
    await writeAtomic(path, content, 0o600);
    this.opts.logger.info({ path }, force ? 'wrote CNI plugin kubeconfig' : 'rewrote CNI plugin kubeconfig (credentials changed)');
    return true;
  }

  /**
   * Re-adds the entry whenever the config dir changes and rewrites the kubeconfig whenever its
   * sources change (the directory of each, as kubelet swaps projected files by renaming a symlink),
   * plus a periodic resync; stop with unwatch().
   */
  watch(): void {
    const dirs = new Set([this.opts.confDir, ...this.kubeconfigSources.map((f) => dirname(f))]);
    for (const dir of dirs) {
      try {
        const w = watch(dir, () => this.schedule());
        w.on('error', (err) => this.opts.logger.warn({ dir, err: err.message }, 'CNI install watch error; the periodic resync still runs'));
        this.watchers.push(w);
      } catch (err) {
        this.opts.logger.warn({ dir, err: (err as Error).message }, 'cannot watch; the periodic resync still runs');
      }
    }
    const every = this.opts.resyncMs ?? 60_000;
    if (every > 0) {
      this.resyncTimer = setInterval(() => this.schedule(), every);
      this.resyncTimer.unref();
    }
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.working = this.working
        .then(() => this.resync())
        .catch((err: unknown) => this.opts.logger.error({ err: (err as Error).message }, 'cannot re-apply the CNI plugin install'));
    }, this.opts.debounceMs ?? 100);
  }

  private async resync(): Promise<void> {
    try {
      await this.refreshKubeconfig();
    } catch (err) {
      this.opts.logger.error({ err: (err as Error).message }, 'cannot rewrite the CNI plugin kubeconfig');
    }
    if (await this.ensureConfig()) this.noteRewrite();
    await this.saveState();
  }

  /** Another "must be last" installer (istio-cni, linkerd-cni) and this one would take turns forever: say so. */
  private noteRewrite(): void {
    const now = Date.now();
    this.rewrites = [...this.rewrites.filter((t) => now - t < FLAP_WINDOW_MS), now];
    if (this.rewrites.length >= FLAP_REWRITES && now - this.flapWarnedAt >= FLAP_WINDOW_MS) {
      this.flapWarnedAt = now;
      this.opts.logger.warn(
        { path: this.state.conflist, rewrites: this.rewrites.length, windowSeconds: FLAP_WINDOW_MS / 1000 },
        'CNI config keeps losing the plugin entry: another component rewrites it (another chained CNI installer?); re-adding each time',
      );
    }
  }

  async unwatch(): Promise<void> {
    clearTimeout(this.timer);
    clearInterval(this.resyncTimer);
    for (const w of this.watchers.splice(0)) w.close();
    await this.working;
  }

  /** The primary CNI config: the first config file in lexical order, as the runtime picks it. */
  private async primary(): Promise<string | undefined> {
    let names: string[];
    try {
      names = await readdir(this.opts.confDir);
    } catch {
      return undefined;
    }
    const confs = names.filter((n) => CONF_EXT.test(n) && !n.startsWith('.')).sort();
    return confs[0] === undefined ? undefined : join(this.opts.confDir, confs[0]);
  }

  /** Makes sure the primary config chains the plugin last. Returns true when it wrote anything. */
  async ensureConfig(): Promise<boolean> {
    const path = await this.primary();
    if (!path) {
      this.opts.logger.warn({ dir: this.opts.confDir }, 'no primary CNI config yet; waiting for one to chain into');
      return false;
    }
    const text = await readFile(path, 'utf8');
    let doc: Record<string, unknown>;
    try {
      doc = JSON.parse(text) as Record<string, unknown>;
    } catch (cause) {
      throw new CniInstallerError(`primary CNI config ${path} is not JSON`, { cause });
    }
    if (Array.isArray(doc.plugins)) {
      const plugins = doc.plugins as Record<string, unknown>[];
      const others = plugins.filter((p) => p?.type !== this.opts.pluginType);
      const want = [...others, this.entry()];
      if (isDeepStrictEqual(plugins, want)) {
        this.state.conflist = path;
        return false;
      }
      await writeAtomic(path, `${JSON.stringify({ ...doc, plugins: want }, null, 2)}\n`, 0o644);
      this.state.conflist = path;
      this.opts.logger.info({ path }, 'added CNI plugin as the last entry of the conflist');
      return true;
    }
    // A lone plugin config: wrap it into a conflist of its own plus ours, and retire the .conf.
    const { cniVersion, name, ...single } = doc;
    const listPath = path.replace(CONF_EXT, '.conflist');
    const list = {
      name: typeof name === 'string' ? name : 'k8s-pod-network',
      cniVersion: typeof cniVersion === 'string' ? cniVersion : '0.3.1',
      plugins: [{ ...single, ...(typeof name === 'string' ? { name } : {}) }, this.entry()],
    };
    await writeAtomic(listPath, `${JSON.stringify(list, null, 2)}\n`, 0o644);
    if (listPath !== path) await rm(path, { force: true });
    this.state.wrapped = { path, text };
    this.state.conflist = listPath;
    this.opts.logger.info({ from: path, to: listPath }, 'wrapped the CNI config into a conflist with the plugin last');
    return true;
  }

  /** Removes exactly what install added: the entry (or the wrapping), the binary, the kubeconfig. */
  async uninstall(): Promise<void> {
    await this.unwatch();
    await this.loadState();
    const { wrapped, conflist } = this.state;
    if (wrapped && conflist) {
      await writeAtomic(wrapped.path, wrapped.text, 0o644);
      if (conflist !== wrapped.path) await rm(conflist, { force: true });
      this.opts.logger.info({ path: wrapped.path }, 'restored the original CNI config');
    } else if (conflist) {
      try {
        const doc = JSON.parse(await readFile(conflist, 'utf8')) as Record<string, unknown>;
        if (Array.isArray(doc.plugins)) {
          const plugins = (doc.plugins as Record<string, unknown>[]).filter((p) => p?.type !== this.opts.pluginType);
          await writeAtomic(conflist, `${JSON.stringify({ ...doc, plugins }, null, 2)}\n`, 0o644);
          this.opts.logger.info({ path: conflist }, 'removed CNI plugin from the conflist');
        }
      } catch (err) {
        this.opts.logger.warn({ path: conflist, err: (err as Error).message }, 'cannot remove CNI plugin from the conflist');
      }
    }
    if (this.state.binary) await rm(this.state.binary, { force: true });
    if (this.state.kubeconfig) await rm(this.state.kubeconfig, { force: true });
    this.state = {};
    await rm(this.opts.stateFile, { force: true });
    this.opts.logger.info({}, 'CNI plugin uninstalled');
  }

  private async loadState(): Promise<void> {
    try {
      this.state = { ...(JSON.parse(await readFile(this.opts.stateFile, 'utf8')) as InstallState), ...this.state };
    } catch {
      // First install on this node.
    }
  }

  private async saveState(): Promise<void> {
    await mkdir(join(this.opts.stateFile, '..'), { recursive: true });
    await writeAtomic(this.opts.stateFile, JSON.stringify(this.state), 0o600);
  }
}
