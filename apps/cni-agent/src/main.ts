#!/usr/bin/env node
import { KubeConfig } from '@kubernetes/client-node';
import { createNodeAgent, FilePodSource, IptablesPodRules, KubePodSource, RUNTIME_DEFAULT_CAPABILITIES, type PodSource } from '@weir/cni-agent';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { parseConfig, USAGE, type AgentConfig } from './config.js';
import { CniInstaller } from './installer.js';
import { createLogger } from './logger.js';
import { renderPluginKubeconfig } from './plugin-kubeconfig.js';
import { decideUninstallOnExit } from './uninstall-check.js';

function kubeConfigFor(c: AgentConfig): KubeConfig | undefined {
  const kc = new KubeConfig();
  if (c['kube-api']) {
    kc.loadFromOptions({
      clusters: [{ name: 'weir', server: c['kube-api'], skipTLSVerify: true }],
      users: [{ name: 'weir' }],
      contexts: [{ name: 'weir', cluster: 'weir', user: 'weir' }],
      currentContext: 'weir',
    });
    return kc;
  }
  if (c.kubeconfig) {
    kc.loadFromFile(c.kubeconfig);
    return kc;
  }
  if (c['pods-file']) return undefined;
  kc.loadFromCluster();
  return kc;
}

async function main(): Promise<number> {
  if (process.argv.includes('--version')) {
    const { version } = createRequire(import.meta.url)('../package.json') as { version: string };
    process.stdout.write(`weir-cni-agent ${version}\n`);
    return 0;
  }
  const parsed = parseConfig(process.argv.slice(2), process.env);
  if (!parsed.ok) {
    for (const e of parsed.errors) process.stderr.write(`weir-cni-agent: ${e}\n`);
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const c = parsed.config;
  const logger = createLogger({ format: c['log-format'], level: c['log-level'] });
  const rulesOptions = {
    mode: c.mode,
    dnsCapture: c['dns-capture'],
    ipv6: c.ipv6,
    probeSnatIp: c['probe-snat-ip'],
    probeSnatIpv6: c['probe-snat-ipv6'],
    backend: c['iptables-backend'],
  };
  const installer =
    c.install || parsed.command === 'uninstall'
    ? new CniInstaller({
        pluginSource: c['plugin-binary'] ?? '',
        pluginType: 'weir-cni',
        binDir: c['cni-bin-dir'],
        confDir: c['cni-conf-dir'],
        pluginConfig: {
          name: 'weir-cni',
          cni_agent_run_dir: c['run-dir'],
          ambient_enabled: true,
          exclude_namespaces: c['exclude-namespaces'],
          plugin_log_level: c['log-level'] === 'trace' ? 'debug' : c['log-level'],
          // The plugin's "skip the node agent's own pod" applies in the agent's namespace, not istio-system.
          pod_namespace: c['pod-namespace'],
          ...(c['pods-file'] ? {} : { kubernetes: { kubeconfig: join(c['run-dir'], 'istio-cni-kubeconfig') } }),
        },
        stateFile: join(c['run-dir'], 'installer-state.json'),
        logger: logger.child({ scope: 'install' }),
      })
    : undefined;

  const teardownHost = async (): Promise<void> => {
    const rules = new IptablesPodRules({ ...rulesOptions, logger });
    try {
      await rules.teardownHost();
    } finally {
      rules.close();
    }
  };
  if (parsed.command === 'uninstall') {
    await teardownHost();
    await installer?.uninstall();
    return 0;
  }

  const kc = kubeConfigFor(c);
  const source: PodSource = c['pods-file']
    ? new FilePodSource({ path: c['pods-file'], nodeName: c['node-name'], logger })
    : new KubePodSource({ kubeConfig: kc!, nodeName: c['node-name'], logger });
  logger.info(
    {
      node: c['node-name'],
      runDir: c['run-dir'],
      zdsSocket: c['zds-socket'],
      source: c['pods-file'] ? `file ${c['pods-file']}` : `kubernetes ${kc?.getCurrentCluster()?.server}`,
      mode: c.mode,
      dnsCapture: c['dns-capture'],
      ipv6: c.ipv6,
      captureBypass: c['capture-bypass'],
      captureConcurrency: c['capture-concurrency'],
      excludeNamespaces: c['exclude-namespaces'].join(','),
      ready: `${c['ready-address'].host}:${c['ready-address'].port}`,
    },
    'weir-cni-agent starting',
  );
  const agent = createNodeAgent({
    nodeName: c['node-name'],
    source,
    runDir: c['run-dir'],
    zdsSocket: c['zds-socket'],
    excludeNamespaces: c['exclude-namespaces'],
    rules: rulesOptions,
    health: c['ready-address'],
    driftIntervalMs: c['drift-interval'],
    concurrency: c['capture-concurrency'],
    captureBypass: {
      mode: c['capture-bypass'],
      runtimeDefaultCapabilities: Array.isArray(c['runtime-default-caps']) ? c['runtime-default-caps'] : RUNTIME_DEFAULT_CAPABILITIES[c['runtime-default-caps']],
    },
    logger,
  });

  let stopping: Promise<number> | undefined;
  let installing: Promise<void> | undefined;
  const stop = (signal: string): Promise<number> =>
    (stopping ??= (async () => {
      logger.info({ signal }, 'shutting down');
      // An install still writing would put the plugin back after an uninstall: let it finish first.
      await installing?.catch(() => undefined);
      await installer?.unwatch();
      await agent.stop();
      if (!installer) return 0;
      const decision = await decideUninstallOnExit({
        enabled: c['uninstall-on-exit'],
        kubeConfig: kc,
        daemonSet: c['daemonset-name'] ? { name: c['daemonset-name'], namespace: c['pod-namespace'] } : undefined,
      });
      if (decision.uninstall) {
        logger.info({ reason: decision.reason }, 'uninstalling the CNI plugin and host rules');
        await installer.uninstall();
        await teardownHost();
      } else {
        logger.info({ reason: decision.reason }, 'leaving the CNI plugin installed so new pods wait for the agent');
      }
      return 0;
    })());
  const done = new Promise<number>((resolve) => {
    process.once('SIGTERM', () => void stop('SIGTERM').then(resolve));
    process.once('SIGINT', () => void stop('SIGINT').then(resolve));
  });

  try {
    await agent.start();
  } catch (err) {
    logger.error({ err }, 'agent failed to start');
    await agent.stop().catch(() => undefined);
    return 1;
  }
  // istio-cni order: the plugin is chained only once the agent can answer it.
  if (installer && !stopping) {
    if (kc && !c['pods-file']) {
      const k = kc;
      const warned = new Set<string>();
      installer.setKubeconfig({
        path: join(c['run-dir'], 'istio-cni-kubeconfig'),
        // Rendered again when the projected token rotates (the installer watches its sources).
        render: async () => {
          const rendered = await renderPluginKubeconfig(k);
          for (const field of rendered.warnings.filter((f) => !warned.has(f))) {
            warned.add(field);
            logger.warn({ field }, 'the CNI plugin cannot use this kubeconfig field: its API fallback (agent down) will fail');
          }
          return rendered;
        },
      });
    }
    installing = installer.install().then(() => installer.watch());
    await installing;
  }
  return done;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`weir-cni-agent: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
