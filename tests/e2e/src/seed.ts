/**
 * The in-pod rules a user sees with `iptables-save` in the seed ("Check the iptables rules setup"), per
 * table: chain declarations and rules, counters dropped. The acceptance bar for `exec sleep -- iptables-save`.
 */
export const SEED_INPOD_RULES: Record<'mangle' | 'nat', string[]> = {
  mangle: [
    ':ISTIO_OUTPUT - [0:0]',
    ':ISTIO_PRERT - [0:0]',
    '-A PREROUTING -j ISTIO_PRERT',
    '-A OUTPUT -j ISTIO_OUTPUT',
    '-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff',
    '-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff',
    '-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT',
    '-A ISTIO_PRERT ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT',
    '-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff',
    '-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    '-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff',
  ],
  nat: [
    ':ISTIO_OUTPUT - [0:0]',
    '-A OUTPUT -j ISTIO_OUTPUT',
    '-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT',
    '-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT',
    '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT',
    '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
  ],
};

/** `iptables-save` output → per table, the user chains and rules (counters zeroed, builtin policies dropped). */
export function savedRules(text: string): Record<string, string[]> {
  const tables: Record<string, string[]> = {};
  let current: string[] | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) tables[line.slice(1)] = current = [];
    else if (line.startsWith(':') && current && !/^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) /.test(line)) current.push(line.replace(/\[\d+:\d+\]/, '[0:0]'));
    else if (line.startsWith('-A ') && current) current.push(line);
  }
  return tables;
}
