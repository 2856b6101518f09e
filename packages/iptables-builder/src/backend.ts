import { IptablesError } from './errors.js';
import type { CommandExecutor } from './executor.js';
import type { Logger } from './logger.js';
import type { Family } from './model.js';

/**
 * `legacy`: iptables-legacy (x_tables); `nft`: iptables-nft (the iptables CLI on nf_tables);
 * `nftables`: native `nft` with `inet istio-ambient-*` tables.
 */
export type IptablesBackend = 'legacy' | 'nft' | 'nftables';

/** Binary name for an iptables backend, e.g. `ip6tables-nft-restore`. */
export function iptablesCommand(backend: 'legacy' | 'nft', family: Family, kind: 'save' | 'restore'): string {
  return `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-${backend}-${kind}`;
}

/**
 * Choose between iptables-legacy and iptables-nft the way istio-cni does: the one that already
 * holds rules (legacy first, since a legacy host that also has nft rules is usually kube-proxy in
 * legacy mode), else nft, else legacy if it is the only one that runs. Run it in the host netns.
 */
export async function detectBackend(executor: CommandExecutor, logger?: Logger): Promise<'legacy' | 'nft'> {
  const probe = async (backend: 'legacy' | 'nft'): Promise<{ works: boolean; rules: number; error: string }> => {
    let rules = 0;
    let works = false;
    let error = '';
    for (const family of ['ipv4', 'ipv6'] as const) {
      const cmd = iptablesCommand(backend, family, 'save');
      const r = await executor.run(cmd, []);
      if (r.code !== 0) {
        error ||= `${cmd}: ${r.stderr.trim() || `exit ${r.code}`}`;
        continue;
      }
      works = true;
      rules += r.stdout.split('\n').filter((l) => l.startsWith('-A ')).length;
    }
    return { works, rules, error };
  };
  const legacy = await probe('legacy');
  const nft = await probe('nft');
  logger?.debug({ legacy, nft }, 'iptables backend probe');
  if (legacy.works && legacy.rules > 0) return 'legacy';
  if (nft.works) return 'nft';
  if (legacy.works) return 'legacy';
  throw new IptablesError(
    'ERR_IPTABLES_BACKEND_UNAVAILABLE',
    `neither iptables-legacy nor iptables-nft runs here (${legacy.error}; ${nft.error})`,
  );
}
