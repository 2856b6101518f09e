/**
 * What a pod's capture is, as data: the agent's resolved capture options and the rule set they give
 * a pod. Light on purpose (no Kubernetes client), so tools such as `weirctl doctor` import it as
 * `@weir/cni-agent/capture-rules` to rebuild exactly the rules the agent installs.
 */
import {
  defineRuleSet,
  inpodRouting,
  inpodRules,
  type CommandExecutor,
  type FamilyRules,
  type IptablesBackend,
  type PolicyRouting,
  type RuleSet,
} from '@weir/iptables-builder';
import { CniAgentError } from './errors.js';

/**
 * The capture options an agent runs with, resolved (defaults filled in, the iptables backend as
 * detected once the host is set up): what `/debug/config` serves, so tools such as `weirctl doctor`
 * can rebuild the rule set the agent installs.
 */
export interface CaptureConfig {
  mode: 'tproxy' | 'redirect';
  /** The agent's setting; a pod annotated `ambient.istio.io/dns-capture: "false"` has none. */
  dnsCapture: boolean;
  /** `auto`: IPv6 captured in pods with IPv6 on; `false`: such pods get the IPv6 guard instead. */
  ipv6: boolean | 'auto';
  probeSnatIp: string;
  probeSnatIpv6: string;
  /** `auto` only until the host is set up (detection runs then). */
  backend: 'auto' | IptablesBackend;
}

/** Chains of the IPv6 guard (prefix ISTIO_, so the same cleanup removes them). */
export const IPV6_GUARD_CHAINS = { input: 'ISTIO_V6GUARD_IN', output: 'ISTIO_V6GUARD_OUT' } as const;

/**
 * The IPv6 guard of a pod whose IPv6 is not captured: loopback and ztunnel's own marked sockets
 * pass, every other TCP in or out is dropped (replies to the marked sockets pass as ESTABLISHED).
 * DROP, not REJECT: @weir/iptables-builder has no REJECT target; the effect is the same fail-closed
 * (a connect times out instead of being refused).
 */
export function ipv6GuardFamily(ztunnelMark = 0x539, markMask = 0xfff): FamilyRules {
  const tcp = { kind: 'protocol', protocol: 'tcp' } as const;
  return {
    family: 'ipv6',
    tables: [
      {
        name: 'filter',
        chains: [
          { name: 'INPUT', rules: [{ matches: [], target: { kind: 'jump', chain: IPV6_GUARD_CHAINS.input } }] },
          { name: 'OUTPUT', rules: [{ matches: [], target: { kind: 'jump', chain: IPV6_GUARD_CHAINS.output } }] },
          {
            name: IPV6_GUARD_CHAINS.input,
            rules: [
              { matches: [{ kind: 'inInterface', name: 'lo' }], target: { kind: 'ACCEPT' } },
              { matches: [tcp, { kind: 'conntrack', ctstate: ['RELATED', 'ESTABLISHED'] }], target: { kind: 'ACCEPT' } },
              { matches: [tcp], target: { kind: 'DROP' } },
            ],
          },
          {
            name: IPV6_GUARD_CHAINS.output,
            rules: [
              { matches: [{ kind: 'outInterface', name: 'lo' }], target: { kind: 'ACCEPT' } },
              { matches: [tcp, { kind: 'mark', value: ztunnelMark, mask: markMask }], target: { kind: 'ACCEPT' } },
              { matches: [tcp], target: { kind: 'DROP' } },
            ],
          },
        ],
      },
    ],
  };
}

/**
 * Whether a netns has IPv6 on: an interface's `disable_ipv6` is 0 (no /proc/sys/net/ipv6 at all:
 * off). `all` and `default` are not interfaces: with `all` at 0 and every interface at 1 there is no
 * IPv6 to capture (nor a lo to route it to).
 */
export async function podHasIpv6(exec: CommandExecutor): Promise<boolean> {
  const r = await exec.run('sh', ['-c', 'grep -H . /proc/sys/net/ipv6/conf/*/disable_ipv6 2>/dev/null; true']);
  if (r.code !== 0) throw new CniAgentError('ERR_AGENT_RULES', `reading disable_ipv6 in the pod netns failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout.split('\n').some((l) => {
    const m = /^\/proc\/sys\/net\/ipv6\/conf\/([^/]+)\/disable_ipv6:(\d+)$/.exec(l.trim());
    return m !== null && m[1] !== 'all' && m[1] !== 'default' && m[2] === '0';
  });
}

/**
 * The rules and routing a pod gets: IPv4 capture, plus IPv6 capture (`ipv6` true, or `auto` with
 * IPv6 on in the pod) or the IPv6 guard (`false` with IPv6 on); DNS capture as given for this pod
 * (the agent's setting unless the pod's annotation turns it off).
 */
export function inpodCapture(
  config: Pick<CaptureConfig, 'mode' | 'ipv6' | 'probeSnatIp' | 'probeSnatIpv6'>,
  pod: { dnsCapture: boolean; podHasIpv6: boolean },
): { rules: RuleSet; routing: PolicyRouting } {
  const v6 = config.ipv6 === true || pod.podHasIpv6;
  const capture6 = v6 && config.ipv6 !== false;
  const rules = inpodRules({ mode: config.mode, dnsCapture: pod.dnsCapture, ipv6: capture6, probeSnatIp: config.probeSnatIp, probeSnatIpv6: config.probeSnatIpv6 });
  return {
    rules: v6 && !capture6 ? defineRuleSet({ families: [...rules.families, ipv6GuardFamily()] }) : rules,
    routing: inpodRouting({ ipv6: capture6 }),
  };
}
