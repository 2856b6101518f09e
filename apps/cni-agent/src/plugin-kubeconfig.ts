import { readFile } from 'node:fs/promises';
import type { KubeConfig } from '@kubernetes/client-node';
import { CniInstallerError } from './installer.js';

/** A kubeconfig for the host-side plugin, and the files its content came from (watch them for rotation). */
export interface PluginKubeconfig {
  content: string;
  sources: string[];
  /** What the plugin will not be able to use (it refuses the kubeconfig naming the field). */
  warnings: string[];
}

/**
 * Renders the agent's API credentials as a kubeconfig the weir-cni plugin can use **on the host**,
 * as istio-cni does: the CA and the token inline (`certificate-authority-data`, `token`), client
 * certificates inline, nothing pointing at a file. In-cluster, the agent's own kubeconfig points at
 * `/var/run/secrets/kubernetes.io/serviceaccount/…`, which exists only inside its container, and
 * names the token through an `auth-provider`. The server is the agent's (in-cluster: from
 * KUBERNETES_SERVICE_HOST/PORT; the agent is host-network, so the host reaches the same address).
 * The projected token rotates: render again when a source changes. JSON, so the plugin reads it
 * without loading a YAML parser.
 */
export async function renderPluginKubeconfig(kc: KubeConfig): Promise<PluginKubeconfig> {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new CniInstallerError('plugin kubeconfig: the agent kubeconfig has no current cluster');
  const user = kc.getCurrentUser();
  const sources: string[] = [];
  const warnings: string[] = [];
  const read = async (file: string, what: string): Promise<Buffer> => {
    try {
      const data = await readFile(file);
      sources.push(file);
      return data;
    } catch (cause) {
      throw new CniInstallerError(`plugin kubeconfig: cannot read ${what} ${file}: ${(cause as Error).message}`, { cause });
    }
  };
  const inline = async (data: string | undefined, file: string | undefined, what: string): Promise<string | undefined> => {
    if (data) return data;
    return file ? (await read(file, what)).toString('base64') : undefined;
  };

  const outCluster: Record<string, unknown> = { server: cluster.server };
  const ca = await inline(cluster.caData, cluster.caFile, 'certificate-authority');
  if (ca !== undefined) outCluster['certificate-authority-data'] = ca;
  if (cluster.skipTLSVerify) outCluster['insecure-skip-tls-verify'] = true;
  if (cluster.tlsServerName) outCluster['tls-server-name'] = cluster.tlsServerName;
  if (cluster.proxyUrl) {
    outCluster['proxy-url'] = cluster.proxyUrl;
    warnings.push('clusters[].cluster.proxy-url');
  }

  const outUser: Record<string, unknown> = {};
  if (user?.token) {
    outUser['token'] = user.token;
  } else if (user?.authProvider !== undefined) {
    const provider = user.authProvider as { name?: string; config?: { tokenFile?: string } };
    if (provider.name === 'tokenFile' && provider.config?.tokenFile) {
      outUser['token'] = (await read(provider.config.tokenFile, 'token file')).toString('utf8').trim();
    } else {
      // Kept as is: the plugin then fails its API fallback naming this field, not with a bare 401.
      outUser['auth-provider'] = user.authProvider;
      warnings.push(`users[].user.auth-provider ${String(provider.name)}`);
    }
  }
  const cert = await inline(user?.certData, user?.certFile, 'client-certificate');
  if (cert !== undefined) outUser['client-certificate-data'] = cert;
  const key = await inline(user?.keyData, user?.keyFile, 'client-key');
  if (key !== undefined) outUser['client-key-data'] = key;
  if (user?.exec !== undefined) {
    outUser['exec'] = user.exec;
    warnings.push('users[].user.exec');
  }
  if (user?.username !== undefined) {
    outUser['username'] = user.username;
    outUser['password'] = user.password;
    warnings.push('users[].user.username');
  }

  const doc = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'weir', cluster: outCluster }],
    users: [{ name: 'weir', user: outUser }],
    contexts: [{ name: 'weir', context: { cluster: 'weir', user: 'weir' } }],
    'current-context': 'weir',
  };
  return { content: `${JSON.stringify(doc, null, 2)}\n`, sources, warnings };
}
