import { readFile } from 'node:fs/promises';

/**
 * A token source for XdsClient/CaClient that re-reads `path` on every call: the projected
 * service-account token (ztunnel's default `./var/run/secrets/tokens/istio-token`) is rotated by
 * the kubelet in place. A missing file yields no token (istiod then answers UNAUTHENTICATED, which
 * is logged and retried), so a late mount heals by itself.
 */
export function tokenFromFile(path: string): () => Promise<string | undefined> {
  return async () => {
    try {
      const t = (await readFile(path, 'utf8')).trim();
      return t === '' ? undefined : t;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  };
}
