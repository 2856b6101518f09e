#!/usr/bin/env node
// weir-test-control-plane: serves a local-config YAML (the file LOCAL_XDS_PATH would name) over Delta
// xDS plus Istio's CA API, so ztunnels can run against "istiod" (XDS_ADDRESS/CA_ADDRESS). Re-reads the
// file when it changes. For sandboxes and tests; not a control plane for real clusters.
import { watchFile, unwatchFile } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { TestControlPlane, createLogger, parseLocalConfig } from '@weir/ztunnel';
import { z } from 'zod';

const USAGE = `usage: weir-test-control-plane --config FILE --out-dir DIR [--listen HOST:PORT] [--token TOKEN] [--plaintext] [--trust-domain TD] [--cert-ttl SECONDS]
  Serves FILE (ztunnel local-config YAML) over Delta xDS and the Istio CA API on HOST:PORT (default 127.0.0.1:15012).
  Writes DIR/root-cert.pem (XDS_ROOT_CA, CA_ROOT_CA) and DIR/istio-token (AUTH_TOKEN), then prints one JSON line
  {"address","xdsAddress","rootCa","tokenFile"} on stdout. Re-reads FILE on change; SIGTERM/SIGINT stop it.
  Without --token a random bearer token is made: only DIR/istio-token (mode 0600) holds it, not the command line.`;

const flags = z.object({
  config: z.string().min(1, 'required: the local-config YAML to serve'),
  'out-dir': z.string().min(1, 'required: where root-cert.pem and istio-token are written'),
  listen: z
    .string()
    .regex(/^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):\d{1,5}$/, 'expected host:port or [v6]:port')
    .default('127.0.0.1:15012'),
  token: z.string().min(1, 'must not be empty').optional(),
  plaintext: z.boolean().default(false),
  'trust-domain': z.string().regex(/^[a-z0-9._-]+$/, 'expected a lower-case trust domain').default('cluster.local'),
  'cert-ttl': z.coerce.number().int('expected whole seconds').min(2, 'at least 2 s').optional(),
});

function fail(lines: string[]): never {
  for (const l of lines) process.stderr.write(`weir-test-control-plane: ${l}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  let raw;
  try {
    raw = parseArgs({
      options: {
        config: { type: 'string' },
        'out-dir': { type: 'string' },
        listen: { type: 'string' },
        token: { type: 'string' },
        plaintext: { type: 'boolean' },
        'trust-domain': { type: 'string' },
        'cert-ttl': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    fail([(err as Error).message, USAGE]);
  }
  if (raw.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const parsed = flags.safeParse(raw);
  if (!parsed.success) fail([...parsed.error.issues.map((i) => `--${String(i.path[0])}: ${i.message}`), USAGE]);
  const o = parsed.data;
  const log = createLogger({ level: 'info', format: 'json' }).logger.child({ component: 'test-control-plane' });

  const load = async (): Promise<ReturnType<typeof parseLocalConfig>> => parseLocalConfig(await readFile(o.config, 'utf8'));
  let initial;
  try {
    initial = await load();
  } catch (err) {
    fail([`--config ${o.config}: ${(err as Error).message}`]);
  }
  const i = o.listen.lastIndexOf(':');
  const cp = await TestControlPlane.start({
    host: o.listen.slice(0, i).replace(/^\[|\]$/g, ''),
    port: Number(o.listen.slice(i + 1)),
    tls: !o.plaintext,
    token: o.token ?? undefined,
    trustDomain: o['trust-domain'],
    ...(o['cert-ttl'] !== undefined ? { certTtlSeconds: o['cert-ttl'] } : {}),
  });
  cp.loadLocalConfig(initial);
  await mkdir(o['out-dir'], { recursive: true });
  const rootCa = join(o['out-dir'], 'root-cert.pem');
  const tokenFile = join(o['out-dir'], 'istio-token');
  await writeFile(rootCa, cp.rootCaPem);
  await writeFile(tokenFile, cp.token ?? '', { mode: 0o600 });

  // Polling: editors and `weirctl` replace the file (rename), which fs.watch on the inode misses.
  watchFile(o.config, { interval: 200 }, (cur, prev) => {
    if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size) return;
    load().then(
      (c) => {
        cp.loadLocalConfig(c);
        log.info({ path: o.config, workloads: c.workloads.length, services: c.services.length, policies: c.policies.length }, 'config reloaded, pushed');
      },
      (err: unknown) => log.warn({ path: o.config, err }, 'config reload failed, keeping the previous state'),
    );
  });

  const scheme = o.plaintext ? 'http' : 'https';
  process.stdout.write(JSON.stringify({ address: cp.address, xdsAddress: `${scheme}://${cp.address}`, rootCa: o.plaintext ? null : rootCa, tokenFile }) + '\n');
  log.info({ address: cp.address, tls: !o.plaintext, path: o.config }, 'test control plane serving');

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    unwatchFile(o.config);
    void cp.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`weir-test-control-plane: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
