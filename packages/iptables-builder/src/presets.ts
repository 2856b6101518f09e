import type { Chain, Family, FamilyRules, Match, Rule, RuleSet, Table, TableName } from './model.js';
import { defineRuleSet } from './validate.js';

/** Istio's in-pod defaults (istio-cni `config.go`), used unless overridden. */
export const ISTIO_DEFAULTS = {
  /** Packet mark on every socket ztunnel makes in the pod (`SO_MARK 1337`). */
  ztunnelMark: 0x539,
  /** Bits of the mark that belong to the mesh. */
  markMask: 0xfff,
  /** Connection mark of inbound proxied connections, also the TPROXY mark. */
  inboundMark: 0x111,
  outboundPort: 15001,
  inboundPort: 15006,
  hbonePort: 15008,
  dnsPort: 15053,
  probeSnatIp: '169.254.7.127',
  probeSnatIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
  /** Policy-routing table of the in-pod `ip rule fwmark 0x111/0xfff lookup 133`. */
  routeTable: 133,
  routeRulePriority: 32764,
  probeSetV4: 'istio-inpod-probes-v4',
  probeSetV6: 'istio-inpod-probes-v6',
} as const;

export type InpodMode = 'tproxy' | 'redirect';

export interface InpodOptions {
  /** `tproxy` (default): the seed's rule set, inbound by mangle TPROXY. `redirect`: Istio ≥1.24, nat REDIRECT. */
  readonly mode?: InpodMode;
  /** Capture DNS (UDP and TCP port 53) to `dnsPort`. Default true, as in Istio. */
  readonly dnsCapture?: boolean;
  /** Capture inbound connections (15006/15008). Default true; false is Istio's "ingress" mode. */
  readonly inboundCapture?: boolean;
  /** Include IPv4 rules. Default true. */
  readonly ipv4?: boolean;
  /** Include IPv6 rules. Default false. */
  readonly ipv6?: boolean;
  readonly probeSnatIp?: string;
  readonly probeSnatIpv6?: string;
  readonly ztunnelMark?: number;
  readonly markMask?: number;
  readonly inboundMark?: number;
  readonly outboundPort?: number;
  readonly inboundPort?: number;
  readonly hbonePort?: number;
  readonly dnsPort?: number;
}

type Resolved = Required<Omit<InpodOptions, 'probeSnatIpv6'>> & { probeSnatIpv6: string };

function resolve(o: InpodOptions): Resolved {
  const d = ISTIO_DEFAULTS;
  return {
    mode: o.mode ?? 'tproxy',
    dnsCapture: o.dnsCapture ?? true,
    inboundCapture: o.inboundCapture ?? true,
    ipv4: o.ipv4 ?? true,
    ipv6: o.ipv6 ?? false,
    probeSnatIp: o.probeSnatIp ?? d.probeSnatIp,
    probeSnatIpv6: o.probeSnatIpv6 ?? d.probeSnatIpv6,
    ztunnelMark: o.ztunnelMark ?? d.ztunnelMark,
    markMask: o.markMask ?? d.markMask,
    inboundMark: o.inboundMark ?? d.inboundMark,
    outboundPort: o.outboundPort ?? d.outboundPort,
    inboundPort: o.inboundPort ?? d.inboundPort,
    hbonePort: o.hbonePort ?? d.hbonePort,
    dnsPort: o.dnsPort ?? d.dnsPort,
  };
}

const PRERT = 'ISTIO_PRERT';
const OUTPUT = 'ISTIO_OUTPUT';
const POSTRT = 'ISTIO_POSTRT';

const tcp: Match = { kind: 'protocol', protocol: 'tcp' };
const udp: Match = { kind: 'protocol', protocol: 'udp' };
const jump = (chain: string): Rule => ({ matches: [], target: { kind: 'jump', chain } });

/**
 * The in-pod capture rules. `tproxy` without DNS capture is exactly the rule set shown by
 * iptables-save in the seed; `redirect` is equivalent to Istio's `iptables-default.golden`.
 */
export function inpodRules(options: InpodOptions = {}): RuleSet {
  const o = resolve(options);
  const families: FamilyRules[] = [];
  if (o.ipv4) families.push(inpodFamily('ipv4', o));
  if (o.ipv6) families.push(inpodFamily('ipv6', o));
  return defineRuleSet({ families });
}

function inpodFamily(family: Family, o: Resolved): FamilyRules {
  const loopback = family === 'ipv4' ? '127.0.0.1/32' : '::1/128';
  const probe = family === 'ipv4' ? o.probeSnatIp : o.probeSnatIpv6;
  const notLoopback: Match = { kind: 'destination', cidr: loopback, invert: true };
  const notZtunnel: Match = { kind: 'mark', value: o.ztunnelMark, mask: o.markMask, invert: true };
  const isZtunnel: Match = { kind: 'mark', value: o.ztunnelMark, mask: o.markMask };
  const inbound: Match = { kind: 'mark', value: o.inboundMark, mask: o.markMask };
  const mark = { value: o.inboundMark, mask: o.markMask };

  const mangle: Table = {
    name: 'mangle',
    chains:
      o.mode === 'tproxy'
        ? [
            { name: 'PREROUTING', rules: [jump(PRERT)] },
            { name: 'OUTPUT', rules: [jump(OUTPUT)] },
            { name: OUTPUT, rules: [restoreMark(o)] },
            {
              name: PRERT,
              rules: [
                { matches: [isZtunnel], target: { kind: 'CONNMARK', op: 'set', ...mark } },
                ...(o.inboundCapture
                  ? [
                      { matches: [{ kind: 'source', cidr: probe }, tcp, { kind: 'tcp' }], target: { kind: 'ACCEPT' } },
                      {
                        matches: [notLoopback, { kind: 'inInterface', name: 'lo' }, tcp],
                        target: { kind: 'ACCEPT' },
                      },
                      {
                        matches: [tcp, { kind: 'tcp', dport: { port: o.hbonePort } }, notZtunnel],
                        target: { kind: 'TPROXY', onPort: o.hbonePort, tproxyMark: mark },
                      },
                      {
                        matches: [tcp, { kind: 'conntrack', ctstate: ['RELATED', 'ESTABLISHED'] }],
                        target: { kind: 'ACCEPT' },
                      },
                      {
                        matches: [notLoopback, tcp, notZtunnel],
                        target: { kind: 'TPROXY', onPort: o.inboundPort, tproxyMark: mark },
                      },
                    ]
                  : []),
              ] as Rule[],
            },
          ]
        : [
            { name: 'PREROUTING', rules: [jump(PRERT)] },
            { name: 'OUTPUT', rules: [jump(OUTPUT)] },
            { name: PRERT, rules: [{ matches: [isZtunnel], target: { kind: 'CONNMARK', op: 'set', ...mark } }] },
            { name: OUTPUT, rules: [restoreMark(o)] },
          ],
  };

  const dnsRules: Rule[] = o.dnsCapture
    ? [
        {
          matches: [{ kind: 'outInterface', name: 'lo', invert: true }, udp, notZtunnel, { kind: 'udp', dport: { port: 53 } }],
          target: { kind: 'REDIRECT', toPorts: o.dnsPort },
        },
        {
          matches: [notLoopback, tcp, { kind: 'tcp', dport: { port: 53 } }, notZtunnel],
          target: { kind: 'REDIRECT', toPorts: o.dnsPort },
        },
      ]
    : [];
  const natOutput: Chain = {
    name: OUTPUT,
    rules: [
      { matches: [{ kind: 'destination', cidr: probe }, tcp, { kind: 'tcp' }], target: { kind: 'ACCEPT' } },
      ...dnsRules,
      { matches: [tcp, inbound], target: { kind: 'ACCEPT' } },
      { matches: [notLoopback, { kind: 'outInterface', name: 'lo' }], target: { kind: 'ACCEPT' } },
      { matches: [notLoopback, tcp, notZtunnel], target: { kind: 'REDIRECT', toPorts: o.outboundPort } },
    ],
  };
  const nat: Table = {
    name: 'nat',
    chains:
      o.mode === 'tproxy'
        ? [{ name: 'OUTPUT', rules: [jump(OUTPUT)] }, natOutput]
        : [
            { name: 'OUTPUT', rules: [jump(OUTPUT)] },
            { name: 'PREROUTING', rules: [jump(PRERT)] },
            {
              name: PRERT,
              rules: o.inboundCapture
                ? [
                    { matches: [{ kind: 'source', cidr: probe }, tcp, { kind: 'tcp' }], target: { kind: 'ACCEPT' } },
                    {
                      matches: [notLoopback, tcp, { kind: 'tcp', dport: { port: o.hbonePort, invert: true } }, notZtunnel],
                      target: { kind: 'REDIRECT', toPorts: o.inboundPort },
                    },
                  ]
                : [],
            },
            natOutput,
          ],
  };

  const tables: Table[] = [mangle, nat];
  if (o.dnsCapture) {
    tables.push({
      name: 'raw',
      chains: [
        { name: 'PREROUTING', rules: [jump(PRERT)] },
        { name: 'OUTPUT', rules: [jump(OUTPUT)] },
        {
          name: OUTPUT,
          rules: [{ matches: [udp, isZtunnel, { kind: 'udp', dport: { port: 53 } }], target: { kind: 'CT', zone: 1 } }],
        },
        {
          name: PRERT,
          rules: [{ matches: [udp, notZtunnel, { kind: 'udp', sport: { port: 53 } }], target: { kind: 'CT', zone: 1 } }],
        },
      ],
    });
  }
  return { family, tables };
}

function restoreMark(o: Resolved): Rule {
  return {
    matches: [{ kind: 'connmark', value: o.inboundMark, mask: o.markMask }],
    target: { kind: 'CONNMARK', op: 'restore', nfmask: 0xffffffff, ctmask: 0xffffffff },
  };
}

/** An ipset a rule set references; create it before applying (`ipsetCreateArgs`). */
export interface IpsetSpec {
  readonly name: string;
  readonly type: 'hash:ip';
  readonly family: 'inet' | 'inet6';
  /** Entries carry a comment (Istio: the pod UID). */
  readonly comment: boolean;
}

export interface HostProbeOptions {
  readonly ipv4?: boolean;
  readonly ipv6?: boolean;
  readonly probeSnatIp?: string;
  readonly probeSnatIpv6?: string;
  readonly setNameV4?: string;
  readonly setNameV6?: string;
}

export interface HostProbeRules {
  readonly ruleSet: RuleSet;
  readonly ipsets: readonly IpsetSpec[];
}

/**
 * Host-netns SNAT of kubelet probes (sockets owned by a host process, to a pod IP in the probe
 * ipset) to the probe address, so the in-pod rules can let them past ztunnel.
 * Equivalent to Istio's `iptables-hostprobe_ipv6.golden`.
 */
export function hostProbeRules(options: HostProbeOptions = {}): HostProbeRules {
  const d = ISTIO_DEFAULTS;
  const families: FamilyRules[] = [];
  const ipsets: IpsetSpec[] = [];
  const add = (family: Family, set: string, ip: string): void => {
    ipsets.push({ name: set, type: 'hash:ip', family: family === 'ipv4' ? 'inet' : 'inet6', comment: true });
    const nat: Table = {
      name: 'nat' as TableName,
      chains: [
        { name: 'POSTROUTING', rules: [{ ...jump(POSTRT), position: 'first' }] },
        {
          name: POSTRT,
          rules: [
            {
              matches: [{ kind: 'owner', socketExists: true }, tcp, { kind: 'set', name: set, flags: ['dst'] }],
              target: { kind: 'SNAT', toSource: ip },
            },
          ],
        },
      ],
    };
    families.push({ family, tables: [nat] });
  };
  if (options.ipv4 ?? true) add('ipv4', options.setNameV4 ?? d.probeSetV4, options.probeSnatIp ?? d.probeSnatIp);
  if (options.ipv6 ?? false) add('ipv6', options.setNameV6 ?? d.probeSetV6, options.probeSnatIpv6 ?? d.probeSnatIpv6);
  return { ruleSet: defineRuleSet({ families }), ipsets };
}

/** `ipset` argv creating `spec` (idempotent thanks to `-exist`). */
export function ipsetCreateArgs(spec: IpsetSpec): string[] {
  return ['create', spec.name, spec.type, 'family', spec.family, ...(spec.comment ? ['comment'] : []), '-exist'];
}
