import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger, type Logger } from '@weir/cni-agent';
import { afterEach, describe, expect, it } from 'vitest';
import { CniInstaller, type CniInstallerOptions } from './installer.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

/** Records warn lines; the rest is silent. */
function recordingLogger(): Logger & { warns: string[] } {
  const warns: string[] = [];
  const logger: Logger & { warns: string[] } = { ...silentLogger, warns, warn: (_obj: object, msg?: string) => void warns.push(msg ?? ''), child: () => logger };
  return logger;
}

async function setup(extra: Partial<CniInstallerOptions> = {}) {
  const root = await mkdtemp(join(tmpdir(), 'weir-install-'));
  dirs.push(root);
  const binDir = join(root, 'opt', 'cni', 'bin');
  const confDir = join(root, 'etc', 'cni', 'net.d');
  await mkdir(confDir, { recursive: true });
  const plugin = join(root, 'weir-cni-build');
  await writeFile(plugin, '#!/bin/sh\necho plugin\n');
  const make = () =>
    new CniInstaller({
      pluginSource: plugin,
      pluginType: 'weir-cni',
      binDir,
      confDir,
      pluginConfig: { name: 'weir-cni', cni_agent_run_dir: '/var/run/istio-cni' },
      kubeconfig: { path: join(root, 'run', 'istio-cni-kubeconfig'), render: () => Promise.resolve({ content: 'apiVersion: v1\n', sources: [] }) },
      stateFile: join(root, 'run', 'installer-state.json'),
      logger: silentLogger,
      debounceMs: 20,
      ...extra,
    });
  return { root, binDir, confDir, make };
}

const bridge = { cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'bridge', bridge: 'cni0' }, { type: 'portmap' }] };

/** An installer over a node whose primary config is the bridge conflist, installed and watching it. */
async function watching(extra: Partial<CniInstallerOptions> = {}) {
  const { confDir, make } = await setup(extra);
  const conflist = join(confDir, '10-bridge.conflist');
  await writeFile(conflist, JSON.stringify(bridge));
  const inst = make();
  await inst.install();
  inst.watch();
  return { confDir, conflist, inst };
}

async function until(cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('CniInstaller', () => {
  it('installs binary, kubeconfig (0600) and the plugin as the last conflist entry; uninstall removes exactly that', async () => {
    const { root, binDir, confDir, make } = await setup();
    const conflist = join(confDir, '10-bridge.conflist');
    await writeFile(conflist, JSON.stringify(bridge));
    await writeFile(join(confDir, '20-other.conflist'), JSON.stringify({ ...bridge, name: 'other' }));
    const inst = make();
    await inst.install();
    await inst.install(); // idempotent
    const doc = JSON.parse(await readFile(conflist, 'utf8'));
    expect(doc.plugins.map((p: { type: string }) => p.type)).toEqual(['bridge', 'portmap', 'weir-cni']);
    expect(doc.plugins[2]).toEqual({ name: 'weir-cni', cni_agent_run_dir: '/var/run/istio-cni', type: 'weir-cni' });
    expect(JSON.parse(await readFile(join(confDir, '20-other.conflist'), 'utf8')).plugins).toHaveLength(2);
    expect((await stat(join(binDir, 'weir-cni'))).mode & 0o777).toBe(0o755);
    expect((await stat(join(root, 'run', 'istio-cni-kubeconfig'))).mode & 0o777).toBe(0o600);
    expect((await readdir(binDir)).filter((n) => n.startsWith('.'))).toEqual([]);

    await make().uninstall(); // a fresh process: what was added is read back from the state file
    expect(JSON.parse(await readFile(conflist, 'utf8'))).toEqual(bridge);
    await expect(stat(join(binDir, 'weir-cni'))).rejects.toThrow(/ENOENT/);
    await expect(stat(join(root, 'run', 'istio-cni-kubeconfig'))).rejects.toThrow(/ENOENT/);
  });

  it('wraps a lone .conf into a .conflist, and uninstall restores the .conf byte for byte', async () => {
    const { confDir, make } = await setup();
    const text = '{ "cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "cni0" }\n';
    await writeFile(join(confDir, '10-mynet.conf'), text);
    const inst = make();
    await inst.install();
    expect(await readdir(confDir)).toEqual(['10-mynet.conflist']);
    const doc = JSON.parse(await readFile(join(confDir, '10-mynet.conflist'), 'utf8'));
    expect(doc).toEqual({
      name: 'mynet',
      cniVersion: '0.4.0',
      plugins: [{ type: 'bridge', bridge: 'cni0', name: 'mynet' }, { name: 'weir-cni', cni_agent_run_dir: '/var/run/istio-cni', type: 'weir-cni' }],
    });
    await inst.uninstall();
    expect(await readdir(confDir)).toEqual(['10-mynet.conf']);
    expect(await readFile(join(confDir, '10-mynet.conf'), 'utf8')).toBe(text);
  });

  it('puts the entry back when another component rewrites the conflist', async () => {
    const { conflist, inst } = await watching();
    try {
      await writeFile(conflist, JSON.stringify({ ...bridge, plugins: [{ type: 'bridge', bridge: 'cni1' }] }));
      await until(async () => {
        const d = JSON.parse(await readFile(conflist, 'utf8'));
        return d.plugins.length === 2 && d.plugins[1].type === 'weir-cni' && d.plugins[0].bridge === 'cni1';
      });
    } finally {
      await inst.unwatch();
    }
  });

  it('waits for a primary config to exist', async () => {
    const { confDir, make } = await setup();
    const inst = make();
    await inst.install();
    expect(await readdir(confDir)).toEqual([]);
    await writeFile(join(confDir, '05-cilium.conflist'), JSON.stringify(bridge));
    expect(await inst.ensureConfig()).toBe(true);
  });

  it('resyncs periodically: a rewrite the watch cannot see (the config dir replaced) is still repaired', async () => {
    const { confDir, conflist, inst } = await watching({ resyncMs: 200 });
    try {
      // The watched inode goes away with the old directory; a new one takes its path.
      await rename(confDir, `${confDir}.old`);
      await mkdir(confDir);
      await writeFile(conflist, JSON.stringify(bridge));
      await until(async () => {
        const d = JSON.parse(await readFile(conflist, 'utf8'));
        return d.plugins.at(-1)?.type === 'weir-cni';
      });
    } finally {
      await inst.unwatch();
    }
  });

  it('says so when another installer keeps taking the last place (ping-pong), and keeps re-adding', async () => {
    const logger = recordingLogger();
    const { conflist, inst } = await watching({ logger });
    try {
      const other = { ...bridge, plugins: [...bridge.plugins, { type: 'linkerd-cni' }] };
      for (let i = 0; i < 5; i++) {
        await writeFile(conflist, JSON.stringify(other));
        await until(async () => JSON.parse(await readFile(conflist, 'utf8')).plugins.at(-1)?.type === 'weir-cni');
      }
      await until(async () => logger.warns.some((m) => m.includes('CNI config keeps losing the plugin entry')));
      expect(logger.warns.filter((m) => m.includes('keeps losing'))).toHaveLength(1);
    } finally {
      await inst.unwatch();
    }
  });

  it('rewrites the kubeconfig when what it renders changes (a rotated token), and only then', async () => {
    let token = 'one';
    const { root, make } = await setup({ resyncMs: 100 });
    const path = join(root, 'run', 'kc');
    const inst = make();
    inst.setKubeconfig({ path, render: () => Promise.resolve({ content: `token: ${token}\n`, sources: [] }) });
    await inst.install();
    const first = await stat(path);
    expect(await inst.refreshKubeconfig()).toBe(false);
    expect((await stat(path)).mtimeMs).toBe(first.mtimeMs);
    inst.watch();
    try {
      token = 'two';
      await until(async () => (await readFile(path, 'utf8')) === 'token: two\n');
      expect((await stat(path)).mode & 0o777).toBe(0o600);
    } finally {
      await inst.unwatch();
    }
  });
});
