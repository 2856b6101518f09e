#!/usr/bin/env node
// Builds the weir-ztunnel and weir-cni-agent container images with podman/buildah, offline from any
// container registry: the base is a Debian root filesystem made with `debootstrap --variant=minbase`
// from Debian's packages and imported with `podman import` (cached under /var/cache/weir), the
// application is installed from the workspace's own `npm pack` tarballs (the native @weir/netns
// addon compiles from source during that install), and Node is the host's /usr/bin/node binary.
//
//   node deploy/images/build.mjs [ztunnel] [cni-agent] [--tag 0.0.0-dev]
//
// Prints one line per image: `<component> <image ref> <size in bytes>`.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
const cacheDir = process.env.WEIR_IMAGE_CACHE ?? '/var/cache/weir';
const mirror = process.env.WEIR_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
const suite = 'bookworm';

/** What each image is made of. `debs` are the Debian packages its base adds to minbase. */
export const COMPONENTS = {
  ztunnel: { app: '@weir/app-ztunnel', bin: 'weir-ztunnel', containerfile: 'ztunnel.Containerfile', debs: [] },
  'cni-agent': {
    app: '@weir/app-cni-agent',
    bin: 'weir-cni-agent',
    containerfile: 'cni-agent.Containerfile',
    // iptables/ip6tables (legacy and nft), nft, ip rule/route, ipset: the in-pod and host rules.
    debs: ['iptables', 'nftables', 'iproute2', 'ipset'],
  },
};

class ImageBuildError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ImageBuildError';
  }
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, ...opts });
  if (r.error) throw new ImageBuildError(`${cmd} could not be started (${r.error.code ?? r.error.message}); is it installed? (scripts/setup-host.sh installs it)`);
  if (r.status !== 0) {
    throw new ImageBuildError(`${cmd} ${args.join(' ')} exited ${r.status}:\n${(r.stderr || r.stdout || '').slice(-4000)}`);
  }
  return r.stdout;
}

/** Fails with one clear message when podman cannot run containers on this machine. */
export function checkPodman() {
  for (const tool of ['podman', 'buildah', 'debootstrap']) {
    const r = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' });
    if (r.status !== 0) throw new ImageBuildError(`${tool} is not installed: run scripts/setup-host.sh (Debian packages podman, buildah, debootstrap)`);
  }
  const r = spawnSync('podman', ['info', '--format', '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}'], { encoding: 'utf8' });
  if (r.status !== 0) throw new ImageBuildError(`podman cannot run here (podman info exited ${r.status}): ${(r.stderr || '').trim().slice(-1000)}`);
}

/** The podman flags every container needs on this machine (a missing capability breaks the defaults). */
export const PODMAN_RUN_FLAGS = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'];

/** Paths dropped from the images: package lists, caches and docs only make them bigger. */
const SLIM = ['var/cache/apt/archives/*.deb', 'var/cache/apt/*.bin', 'var/lib/apt/lists/*', 'usr/share/doc/*', 'usr/share/man/*', 'usr/share/info/*', 'usr/share/locale/*'];

/** `debootstrap --variant=minbase`, once: the raw root filesystem (apt lists kept) as a cached tar. */
function minbaseTar() {
  const key = createHash('sha256').update(JSON.stringify({ suite, mirror, v: 1 })).digest('hex').slice(0, 12);
  const tarball = join(cacheDir, `minbase-${suite}-${key}.tar`);
  if (existsSync(tarball)) return tarball;
  mkdirSync(join(cacheDir, 'debs'), { recursive: true });
  const root = mkdtempSync(join(cacheDir, 'rootfs-'));
  try {
    process.stderr.write(`build: debootstrap --variant=minbase ${suite} (cold cache: several minutes, once)\n`);
    run('debootstrap', ['--variant=minbase', `--cache-dir=${join(cacheDir, 'debs')}`, suite, root, mirror]);
    run('tar', ['-C', root, '--numeric-owner', '-cf', `${tarball}.part`, '.']);
    renameSync(`${tarball}.part`, tarball);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return tarball;
}

/** The minbase image with `debs` added (apt-get in a chroot of it), imported with `podman import`. */
export function ensureBase(debs) {
  const key = createHash('sha256').update(JSON.stringify({ suite, mirror, debs, slim: SLIM })).digest('hex').slice(0, 12);
  const ref = `localhost/weir-base:${suite}-${key}`;
  if (spawnSync('podman', ['image', 'exists', ref]).status === 0) return ref;
  const raw = minbaseTar();
  const root = mkdtempSync(join(cacheDir, 'rootfs-'));
  try {
    run('tar', ['-C', root, '--numeric-owner', '-xf', raw]);
    if (debs.length > 0) {
      const archives = join(root, 'var/cache/apt/archives');
      const keep = join(cacheDir, 'debs');
      for (const f of readdirSync(keep)) if (f.endsWith('.deb')) copyFileSync(join(keep, f), join(archives, f));
      run('chroot', [root, 'apt-get', 'install', '-y', '-qq', '--no-install-recommends', ...debs], {
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
      });
      for (const f of readdirSync(archives)) if (f.endsWith('.deb') && !existsSync(join(keep, f))) copyFileSync(join(archives, f), join(keep, f));
    }
    const tarball = `${root}.tar`;
    try {
      run('tar', ['-C', root, '--numeric-owner', '--wildcards', ...SLIM.map((p) => `--exclude=./${p}`), '-cf', tarball, '.']);
      run('podman', ['import', '--message', `debootstrap --variant=minbase ${suite} + ${debs.join(' ') || 'nothing'}`, tarball, ref]);
    } finally {
      rmSync(tarball, { force: true });
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return ref;
}

/** The @weir/* workspace packages `name` needs at run time, itself included. */
function workspaceClosure(name) {
  const dirs = new Map();
  for (const top of ['packages', 'apps']) {
    for (const d of readdirSync(join(repo, top))) {
      const pj = join(repo, top, d, 'package.json');
      if (existsSync(pj)) dirs.set(JSON.parse(readFileSync(pj, 'utf8')).name, join(repo, top, d));
    }
  }
  const out = new Map();
  const visit = (n) => {
    if (out.has(n)) return;
    const dir = dirs.get(n);
    if (!dir) throw new ImageBuildError(`workspace package ${n} not found under packages/ or apps/`);
    out.set(n, dir);
    const deps = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).dependencies ?? {};
    for (const d of Object.keys(deps)) if (d.startsWith('@weir/')) visit(d);
  };
  visit(name);
  return out;
}

/** `npm pack` of `app` and its @weir/* dependencies into `<into>/opt-weir/tarballs`; returns their files. */
function packApp(app, into) {
  const prefix = join(into, 'opt-weir');
  const tarballs = join(prefix, 'tarballs');
  mkdirSync(tarballs, { recursive: true });
  const files = {};
  for (const [name, dir] of workspaceClosure(app)) {
    const out = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', tarballs], { cwd: dir }));
    files[name] = `file:./tarballs/${out[0].filename}`;
  }
  return { prefix, files };
}

/**
 * Installs `app` as a user would from npm: the packed tarballs of it and its @weir/* dependencies,
 * third-party dependencies from the registry (or npm's cache), production only.
 */
function installApp(app, { prefix, files }) {
  writeFileSync(
    join(prefix, 'package.json'),
    JSON.stringify({ name: 'weir-image', private: true, dependencies: { [app]: files[app] }, overrides: files, allowScripts: { '@weir/netns': true } }, null, 2),
  );
  run('npm', ['install', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: prefix });
  rmSync(join(prefix, 'tarballs'), { recursive: true, force: true });
  // The addon's object files and build tree are not needed at run time, only the .node file.
  const build = join(prefix, 'node_modules/@weir/netns/build');
  if (existsSync(build)) {
    for (const e of readdirSync(build)) if (e !== 'Release') rmSync(join(build, e), { recursive: true, force: true });
    for (const e of readdirSync(join(build, 'Release'))) if (!e.endsWith('.node')) rmSync(join(build, 'Release', e), { recursive: true, force: true });
  }
}

/** A digest of everything that goes into an image, so an unchanged image is not rebuilt. */
function inputsDigest(parts) {
  const h = createHash('sha256');
  for (const p of parts) h.update(existsSync(p) && !statSync(p).isDirectory() ? readFileSync(p) : String(p));
  return h.digest('hex').slice(0, 16);
}

function appVersion(app) {
  const dir = workspaceClosure(app).get(app);
  return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
}

/** Builds one component's image (or reuses the one built from identical inputs); returns its reference. */
export function buildImage(component, tag) {
  const c = COMPONENTS[component];
  if (!c) throw new ImageBuildError(`unknown component ${component} (expected ${Object.keys(COMPONENTS).join(', ')})`);
  const base = ensureBase(c.debs);
  const ref = `localhost/weir/${component}:${tag ?? appVersion(c.app)}`;
  const plugin = join(repo, 'apps/cni-plugin/dist/weir-cni');
  if (component === 'cni-agent' && !existsSync(plugin)) throw new ImageBuildError(`${plugin} is missing: build it first (npm run build -w @weir/app-cni-plugin)`);
  const ctx = mkdtempSync(join(tmpdir(), `weir-image-${component}-`));
  try {
    const packed = packApp(c.app, ctx);
    const tarballs = Object.values(packed.files).map((f) => join(packed.prefix, f.slice('file:'.length)));
    const digest = inputsDigest([base, join(here, c.containerfile), process.execPath, ...tarballs, ...(component === 'cni-agent' ? [plugin] : [])]);
    const cached = `localhost/weir/${component}:build-${digest}`;
    if (spawnSync('podman', ['image', 'exists', cached]).status !== 0) {
      installApp(c.app, packed);
      // Debian's own nodejs is 18.x in bookworm and Weir needs Node >= 20.19, so the image carries the
      // host's Node binary (same Debian release, same glibc); stripped of debug info when binutils is here.
      copyFileSync(process.execPath, join(ctx, 'node'));
      spawnSync('strip', ['--strip-all', join(ctx, 'node')]);
      if (component === 'cni-agent') copyFileSync(plugin, join(ctx, 'weir-cni'));
      run('buildah', ['bud', '--format', 'docker', '--layers=false', '--build-arg', `BASE=${base}`, '--build-arg', `VERSION=${appVersion(c.app)}`, '-f', join(here, c.containerfile), '-t', cached, ctx]);
    }
    run('podman', ['tag', cached, ref]);
    return ref;
  } finally {
    rmSync(ctx, { recursive: true, force: true });
  }
}

export function imageSize(ref) {
  return Number(execFileSync('podman', ['image', 'inspect', '--format', '{{.Size}}', ref], { encoding: 'utf8' }).trim());
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const ti = args.indexOf('--tag');
  const tag = ti >= 0 ? args.splice(ti, 2)[1] : undefined;
  const wanted = args.length > 0 ? args : Object.keys(COMPONENTS);
  try {
    checkPodman();
    for (const component of wanted) {
      const ref = buildImage(component, tag);
      process.stdout.write(`${component} ${ref} ${imageSize(ref)}\n`);
    }
  } catch (err) {
    process.stderr.write(`build: ${err instanceof ImageBuildError ? err.message : (err.stack ?? err)}\n`);
    process.exit(1);
  }
}
