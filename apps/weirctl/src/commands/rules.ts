import { parseArgs } from 'node:util';

import {
  hostProbeRules,
  inpodRouting,
  inpodRules,
  ipRouteArgs,
  ipRuleArgs,
  ipsetCreateArgs,
  renderIptablesRestore,
  renderNft,
} from '@weir/iptables-builder';
import { z } from 'zod';

import { UsageError, type Command, type Io } from '../command.js';
import { flagIssueError, parseArgsError } from '../flags.js';

const HELP = `usage: weirctl rules [--mode tproxy|redirect] [--family ipv4|ipv6] [--format iptables|nft]
                     [--no-dns] [--no-inbound-capture] [--host-probe]

Print the capture rules Weir installs, without installing anything.
  --mode                tproxy (default: the seed's rules, inbound by TPROXY) or redirect (Istio >= 1.24)
  --family              ipv4 (default) or ipv6
  --format              iptables (iptables-restore --noflush input, default) or nft (one nft -f transaction)
  --no-dns              without DNS capture (port 53 -> 15053)
  --no-inbound-capture  without inbound capture (Istio's ingress mode)
  --host-probe          the host-side kubelet probe SNAT rules instead of the in-pod ones
`;

const Flags = z
  .object({
    mode: z.enum(['tproxy', 'redirect']).default('tproxy'),
    family: z.enum(['ipv4', 'ipv6']).default('ipv4'),
    format: z.enum(['iptables', 'nft']).default('iptables'),
    'no-dns': z.boolean().default(false),
    'no-inbound-capture': z.boolean().default(false),
    'host-probe': z.boolean().default(false),
    help: z.boolean().default(false),
  })
  .strict();

export type RulesFlags = z.infer<typeof Flags>;

/** Parse `weirctl rules` flags; a bad one throws UsageError naming it. */
export function parseRulesFlags(argv: readonly string[]): RulesFlags {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        mode: { type: 'string' },
        family: { type: 'string' },
        format: { type: 'string' },
        'no-dns': { type: 'boolean' },
        'no-inbound-capture': { type: 'boolean' },
        'host-probe': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    throw parseArgsError(err, Object.keys(Flags.shape));
  }
  const parsed = Flags.safeParse(values);
  if (!parsed.success) throw flagIssueError(parsed.error, values);
  if (parsed.data['host-probe'] && parsed.data.format === 'nft') {
    throw new UsageError('--host-probe: host probe rules use ipset and owner matches; only --format iptables renders them');
  }
  return parsed.data;
}

/** The text `weirctl rules` prints for these flags. */
export function renderRules(flags: RulesFlags): string {
  const family = flags.family;
  const v = family === 'ipv4' ? '' : '6';
  if (flags['host-probe']) {
    const { ruleSet, ipsets } = hostProbeRules({ ipv4: family === 'ipv4', ipv6: family === 'ipv6' });
    return [
      `# weirctl rules --host-probe: kubelet probe SNAT in the HOST netns (${family})`,
      `# create the ipset first, then feed the rest to ip${v}tables-restore --noflush:`,
      ...ipsets.map((s) => `#   ipset ${ipsetCreateArgs(s).join(' ')}`),
      renderIptablesRestore(ruleSet, family).trimEnd(),
      '',
    ].join('\n');
  }
  const options = {
    mode: flags.mode,
    dnsCapture: !flags['no-dns'],
    inboundCapture: !flags['no-inbound-capture'],
    ipv4: family === 'ipv4',
    ipv6: family === 'ipv6',
  } as const;
  const ruleSet = inpodRules(options);
  const routing = inpodRouting({ ipv4: family === 'ipv4', ipv6: family === 'ipv6' });
  const summary =
    `# weirctl rules: in-pod capture rules, mode ${flags.mode}, ${family}, ` +
    `DNS capture ${options.dnsCapture ? 'on' : 'off'}, inbound capture ${options.inboundCapture ? 'on' : 'off'}`;
  const body =
    flags.format === 'nft'
      ? ['# one atomic transaction for `nft -f -` inside the pod netns:', renderNft(ruleSet).trimEnd()]
      : [`# input for \`ip${v}tables-restore --noflush\` inside the pod netns:`, renderIptablesRestore(ruleSet, family).trimEnd()];
  return [
    summary,
    ...body,
    '# policy routing, inside the pod netns:',
    ...routing.rules.map((r) => `#   ip ${ipRuleArgs(r, 'add').join(' ')}`),
    ...routing.routes.map((r) => `#   ip ${ipRouteArgs(r, 'replace').join(' ')}`),
    '',
  ].join('\n');
}

export const rulesCommand: Command = {
  summary: 'print the capture rules (iptables or nft) without installing anything',
  async run(argv: readonly string[], io: Io): Promise<number> {
    const flags = parseRulesFlags(argv);
    if (flags.help) {
      io.out(HELP);
      return 0;
    }
    io.out(renderRules(flags));
    return 0;
  },
};
