import { writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
// The lean entry: Istio's CA client (gRPC) is imported only when CA_ADDRESS is set, the xDS client by
// Ztunnel only when XDS_ADDRESS is, so a ztunnel on a local config does not carry them in memory.
import { Ztunnel, createEmbeddedCa, createLogger, loadOrCreateCa, readResolvConfUpstreams, tokenFromFile, type DnsUpstream } from '@weir/ztunnel/core';
import { ConfigError, effectiveConfigLines, parseConfig, type AppConfig } from './config.js';
import { usage } from './usage.js';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes('--version')) {
    const { version } = createRequire(import.meta.url)('../package.json') as { version: string };
    process.stdout.write(`weir-ztunnel ${version}\n`);
    return;
  }
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(usage());
    return;
  }
  // Configured by environment only; `proxy ztunnel` is what Istio's chart passes ztunnel.
  if (args.length > 0 && args.join(' ') !== 'proxy ztunnel') {
    process.stderr.write(`weir-ztunnel: unexpected argument ${JSON.stringify(args[0])}: it takes none (configuration is by environment, see --help)\n`);
    process.exit(2);
  }
  nameProcess('ztunnel');
  let config: AppConfig;
  try {
    config = parseConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const p of err.problems) process.stderr.write(`weir-ztunnel: invalid configuration: ${p}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logControl = createLogger({ level: config.logLevel, format: config.logFormat });
  const log = logControl.logger;
  // The effective configuration, once, as ztunnel prints it (`inpod_enabled: true`, …).
  if (config.logFormat === 'text') process.stdout.write(effectiveConfigLines(config).join('\n') + '\n');
  else log.info({ config: Object.fromEntries(effectiveConfigLines(config).map((l) => l.split(/: (.*)/s).slice(0, 2))) }, 'effective configuration');

  const readRoot = async (name: string, path: string | undefined): Promise<string | undefined> => {
    if (path === undefined) return undefined;
    try {
      return await readFile(path, 'utf8');
    } catch (err) {
      process.stderr.write(`weir-ztunnel: invalid configuration: ${name}=${JSON.stringify(path)}: cannot read: ${(err as Error).message}\n`);
      process.exit(2);
    }
  };
  // The root only matters for https://; plain http:// (local sandboxes) dials without TLS.
  const xdsRoot = config.xdsAddress?.startsWith('https://') ? await readRoot('XDS_ROOT_CA', config.xdsRootCa) : undefined;
  const caRoot = config.caAddress?.startsWith('https://') ? await readRoot('CA_ROOT_CA', config.caRootCa) : undefined;
  const token = tokenFromFile(config.authToken);
  const ca = config.caAddress
    ? new (await import('@weir/ztunnel/ca-client')).CaClient({
        address: config.caAddress,
        ...(caRoot !== undefined ? { rootCaPem: caRoot } : {}),
        ...(config.altCaHostname ? { altHostname: config.altCaHostname } : {}),
        // The mesh root until the CA's first answer replaces it.
        trustBundlePem: caRoot ?? xdsRoot ?? '',
        token,
        clusterId: config.clusterId,
        ttlSeconds: config.certTtlSeconds,
        logger: log.child({ component: 'identity' }),
      })
    : config.ca
      ? (await loadOrCreateCa({ ...config.ca, trustDomain: config.trustDomain })).ca
      : await createEmbeddedCa(config.trustDomain);

  // ztunnel forwards what the mesh does not know to the node's own resolvers (the cluster DNS).
  let dnsUpstreams: DnsUpstream[] = [];
  if (config.dnsProxy) {
    dnsUpstreams = config.dnsUpstreams ?? (await readResolvConfUpstreams().catch((err: unknown) => {
      log.warn({ err }, 'no DNS upstreams: /etc/resolv.conf unreadable, names outside the mesh get SERVFAIL');
      return [];
    }));
  }

  const ztunnel: Ztunnel = new Ztunnel({
    inpodUds: config.inpodUds,
    packetMark: config.packetMark,
    portReuse: config.portReuse,
    origSrc: config.origSrc,
    ipv6Enabled: config.ipv6Enabled,
    trustDomain: config.trustDomain,
    clusterId: config.clusterId,
    nodeName: config.nodeName,
    ...(config.localXdsPath !== undefined ? { localXdsPath: config.localXdsPath } : {}),
    ...(config.xdsAddress !== undefined
      ? {
          xds: {
            address: config.xdsAddress,
            ...(xdsRoot !== undefined ? { rootCaPem: xdsRoot } : {}),
            ...(config.altXdsHostname ? { altHostname: config.altXdsHostname } : {}),
            token,
            node: {
              podName: config.podName,
              podNamespace: config.podNamespace,
              instanceIp: config.instanceIp,
              nodeName: config.nodeName,
              clusterId: config.clusterId,
              metadata: config.istioMeta,
            },
          },
        }
      : {}),
    ca,
    certTtlSeconds: config.certTtlSeconds,
    terminationDeadlineMs: config.terminationDeadlineMs,
    adminAddress: config.adminAddr,
    metricsAddress: config.metricsAddr,
    readinessAddress: config.readinessAddr,
    logger: log,
    logControl,
    onQuit: () => shutdown('quitquitquit'),
    processMetrics: true,
    socks5: config.socks5,
    dnsProxy: config.dnsProxy,
    dnsUpstreams,
    bufferBudget: config.hboneBufferBudget,
  });
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'received termination signal, draining');
    void ztunnel.stop({ deadlineMs: config.terminationDeadlineMs }).then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));

  await ztunnel.start();
  const { version } = createRequire(import.meta.url)('../package.json') as { version: string };
  log.info({ version }, 'ztunnel started');
}

/** `ss -p`, `top` and `pgrep ztunnel` show the process as ztunnel (its command line stays as it is). */
function nameProcess(name: string): void {
  try {
    writeFileSync('/proc/self/comm', name);
  } catch {
    // not Linux, or /proc not mounted: the name is cosmetic
  }
}

/** Settles once ztunnel is started (or the process exits). */
export const started: Promise<void> = main().catch((err: unknown) => {
  process.stderr.write(`weir-ztunnel: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
