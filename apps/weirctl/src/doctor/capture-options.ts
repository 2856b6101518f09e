/**
 * The capture options doctor checks a pod against: the node agent's own (its `GET /debug/config`),
 * explicit flags over them, and only when the agent does not answer, the flags over the agent's defaults.
 */
import type { CaptureConfig } from '@weir/cni-agent/capture-rules';
import { z } from 'zod';
import { httpGetUrl } from '../in-netns.js';

/** weir-cni-agent's defaults (apps/cni-agent config): what a node agent run without flags captures with. */
export const AGENT_DEFAULT_CAPTURE: CaptureConfig = {
  mode: 'tproxy',
  dnsCapture: true,
  ipv6: 'auto',
  probeSnatIp: '169.254.7.127',
  probeSnatIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
  backend: 'auto',
};

const AgentConfig = z.object({
  capture: z.object({
    mode: z.enum(['tproxy', 'redirect']),
    dnsCapture: z.boolean(),
    ipv6: z.union([z.boolean(), z.literal('auto')]),
    probeSnatIp: z.string(),
    probeSnatIpv6: z.string(),
    backend: z.enum(['auto', 'legacy', 'nft', 'nftables']),
  }),
});

export interface ResolvedCapture {
  capture: CaptureConfig;
  fromAgent: boolean;
  /** One line for the output: where the options came from and what they are. */
  note: string;
}

/** What to assume when the agent does not answer: its defaults, or what is known of how it was started. */
export interface CaptureFallback {
  capture: CaptureConfig;
  /** Names it in the output, e.g. "the agent's defaults". */
  label: string;
}

/**
 * `GET <agentUrl>/debug/config` in `netns` (undefined: this one); flags in `overrides` win. When the agent
 * does not answer: the flags over `fallback` (default: the agent's defaults).
 */
export async function resolveCapture(
  netns: string | undefined,
  agentUrl: string,
  overrides: Partial<CaptureConfig>,
  fallback: CaptureFallback = { capture: AGENT_DEFAULT_CAPTURE, label: "the agent's defaults" },
): Promise<ResolvedCapture> {
  const url = `${agentUrl.replace(/\/+$/, '')}/debug/config`;
  const where = `${url}${netns === undefined ? '' : ` in ${netns}`}`;
  const flagged = (Object.keys(FLAG_OF) as Array<keyof CaptureConfig>)
    .filter((k) => overrides[k] !== undefined)
    .map((k) => FLAG_OF[k])
    .join(', ');
  const r = await httpGetUrl(netns, url);
  let why: string;
  if (r.ok) {
    let parsed: z.ZodSafeParseResult<z.output<typeof AgentConfig>> | undefined;
    try {
      parsed = AgentConfig.safeParse(JSON.parse(r.body));
    } catch (err) {
      why = `${url} is not JSON: ${(err as Error).message}`;
    }
    if (parsed?.success) {
      const capture = { ...parsed.data.capture, ...overrides };
      return { capture, fromAgent: true, note: `capture options of weir-cni-agent (${where})${flagged ? `, ${flagged} from the command line` : ''}: ${describe(capture)}` };
    }
    why ??= `${url} has no capture options${parsed ? ` (${parsed.error.issues[0]?.path.join('.') ?? ''}: ${parsed.error.issues[0]?.message ?? 'invalid'})` : ''}`;
  } else {
    why = r.error;
  }
  const capture = { ...fallback.capture, ...overrides };
  return {
    capture,
    fromAgent: false,
    note: `weir-cni-agent does not answer (${why}): using ${flagged ? `${flagged} from the command line and ` : ''}${fallback.label}: ${describe(capture)}`,
  };
}

const FLAG_OF: Record<keyof CaptureConfig, string> = {
  mode: '--mode',
  dnsCapture: '--[no-]dns-capture',
  ipv6: '--[no-]ipv6',
  probeSnatIp: '--probe-snat-ip',
  probeSnatIpv6: '--probe-snat-ipv6',
  backend: '--iptables-backend',
};

function describe(c: CaptureConfig): string {
  return `mode ${c.mode}, DNS capture ${c.dnsCapture ? 'on' : 'off'}, IPv6 ${c.ipv6 === 'auto' ? 'auto' : c.ipv6 ? 'on' : 'off'}, probe SNAT ${c.probeSnatIp} and ${c.probeSnatIpv6}, iptables backend ${c.backend}`;
}
