import { describe, expect, it } from 'vitest';

import { desiredFromFamily, desiredFromSaved, diffTables, reconcileRestore, renderIptablesCleanup } from './diff.js';
import { parseIptablesSave } from './parse-iptables.js';
import { inpodRules } from './presets.js';
import { familyRules, renderIptablesRestore } from './render-iptables.js';

const desired = desiredFromFamily(familyRules(inpodRules({ dnsCapture: false }), 'ipv4'));
const installed = parseIptablesSave(renderIptablesRestore(inpodRules({ dnsCapture: false }), 'ipv4'), 'ipv4');

/** Saved state = the installed rules, edited line by line. */
function edited(edit: (lines: string[]) => string[]): ReturnType<typeof parseIptablesSave> {
  return parseIptablesSave(edit(renderIptablesRestore(inpodRules({ dnsCapture: false }), 'ipv4').split('\n')).join('\n'), 'ipv4');
}

describe('diffTables / reconcileRestore', () => {
  it('finds nothing to do when the rules are in place, and renders no restore', () => {
    expect(diffTables('ipv4', desired, installed)).toEqual({ inSync: true, changes: [] });
    expect(reconcileRestore('ipv4', desired, installed)).toBe('');
  });

  it('installs everything into an empty netns, creating chains with ":" declarations', () => {
    const diff = diffTables('ipv4', desired, []);
    expect(diff.changes.filter((c) => c.kind === 'missing-chain').map((c) => `${c.table}/${c.chain}`)).toEqual([
      'mangle/ISTIO_OUTPUT',
      'mangle/ISTIO_PRERT',
      'nat/ISTIO_OUTPUT',
    ]);
    const text = reconcileRestore('ipv4', desired, []);
    expect(text.split('\n').slice(0, 4)).toEqual(['*mangle', ':ISTIO_OUTPUT - [0:0]', ':ISTIO_PRERT - [0:0]', '-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff']);
    expect(text).toContain('-A PREROUTING -j ISTIO_PRERT\n');
  });

  it('names a missing, an extra and a reordered rule, and rewrites only those chains', () => {
    const missing = edited((l) => l.filter((x) => !x.includes('-j REDIRECT --to-ports 15001')));
    expect(diffTables('ipv4', desired, missing).changes).toEqual([
      {
        kind: 'missing-rule',
        family: 'ipv4',
        table: 'nat',
        chain: 'ISTIO_OUTPUT',
        rule: '! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
      },
    ]);
    const text = reconcileRestore('ipv4', desired, missing);
    expect(text.startsWith('*nat\n:ISTIO_OUTPUT - [0:0]\n')).toBe(true);
    expect(text).not.toContain('*mangle');

    const extra = edited((l) => l.flatMap((x) => (x === 'COMMIT' ? ['-A ISTIO_OUTPUT -j DROP', x] : [x])));
    expect(diffTables('ipv4', desired, extra).changes.map((c) => `${c.kind} ${c.table}/${c.chain}`)).toEqual([
      'extra-rule mangle/ISTIO_OUTPUT',
      'extra-rule nat/ISTIO_OUTPUT',
    ]);

    const swapped = edited((l) => {
      const i = l.findIndex((x) => x.includes('--ctstate'));
      return [...l.slice(0, i - 1), l[i] as string, l[i - 1] as string, ...l.slice(i + 1)];
    });
    expect(diffTables('ipv4', desired, swapped).changes).toEqual([{ kind: 'misordered', family: 'ipv4', table: 'mangle', chain: 'ISTIO_PRERT' }]);
  });

  it('removes stale owned chains and their jumps but never touches other rules', () => {
    const saved = parseIptablesSave(
      [
        '*nat',
        ':PREROUTING ACCEPT [0:0]',
        ':OUTPUT ACCEPT [0:0]',
        ':ISTIO_PRERT - [0:0]',
        ':KUBE-SERVICES - [0:0]',
        '-A PREROUTING -j KUBE-SERVICES',
        '-A PREROUTING -j ISTIO_PRERT',
        '-A PREROUTING -j ISTIO_PRERT',
        '-A ISTIO_PRERT -j ACCEPT',
        '-A KUBE-SERVICES -j RETURN',
        'COMMIT',
      ].join('\n'),
      'ipv4',
    );
    const text = renderIptablesCleanup('ipv4', saved);
    expect(text).toBe(
      ['*nat', ':ISTIO_PRERT - [0:0]', '-D PREROUTING -j ISTIO_PRERT', '-D PREROUTING -j ISTIO_PRERT', '-X ISTIO_PRERT', 'COMMIT', ''].join('\n'),
    );
    expect(diffTables('ipv4', [], saved).changes.map((c) => c.kind)).toEqual(['extra-chain', 'extra-rule', 'extra-rule']);
  });

  it('adds "first" hooks with -I and can rebuild a saved state (rollback)', () => {
    const saved = parseIptablesSave('*nat\n:POSTROUTING ACCEPT [0:0]\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n-A ISTIO_POSTRT -j ACCEPT\nCOMMIT\n', 'ipv4');
    const back = desiredFromSaved(saved, 'ISTIO_');
    expect(reconcileRestore('ipv4', back, [])).toBe(
      '*nat\n:ISTIO_POSTRT - [0:0]\n-A ISTIO_POSTRT -j ACCEPT\n-A POSTROUTING -j ISTIO_POSTRT\nCOMMIT\n',
    );
    expect(reconcileRestore('ipv4', back, saved)).toBe('');
  });
});
