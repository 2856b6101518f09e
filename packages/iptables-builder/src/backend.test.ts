import { describe, expect, it } from 'vitest';

import { detectBackend, iptablesCommand } from './backend.js';
import type { CommandExecutor } from './executor.js';

/** An executor answering `*-save` with canned output per backend (code 127: not installed). */
function fake(outputs: Record<'legacy' | 'nft', string | undefined>): CommandExecutor {
  return {
    run: async (cmd) => {
      const backend = cmd.includes('-legacy-') ? 'legacy' : 'nft';
      const out = outputs[backend];
      return out === undefined ? { stdout: '', stderr: `${cmd}: not found`, code: 127 } : { stdout: out, stderr: '', code: 0 };
    },
  };
}

const withRules = '*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n';
const empty = '';

describe('detectBackend', () => {
  it('prefers the backend that already holds rules, else nft', async () => {
    expect(await detectBackend(fake({ legacy: withRules, nft: empty }))).toBe('legacy');
    expect(await detectBackend(fake({ legacy: empty, nft: withRules }))).toBe('nft');
    expect(await detectBackend(fake({ legacy: empty, nft: empty }))).toBe('nft');
    expect(await detectBackend(fake({ legacy: empty, nft: undefined }))).toBe('legacy');
  });

  it('fails with ERR_IPTABLES_BACKEND_UNAVAILABLE naming both when neither runs', async () => {
    await expect(detectBackend(fake({ legacy: undefined, nft: undefined }))).rejects.toMatchObject({
      code: 'ERR_IPTABLES_BACKEND_UNAVAILABLE',
      message: expect.stringMatching(/iptables-legacy-save: .*iptables-nft-save/),
    });
  });

  it('names binaries per backend and family', () => {
    expect(iptablesCommand('nft', 'ipv6', 'restore')).toBe('ip6tables-nft-restore');
    expect(iptablesCommand('legacy', 'ipv4', 'save')).toBe('iptables-legacy-save');
  });
});
