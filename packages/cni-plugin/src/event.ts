import { isIP } from 'node:net';
import * as z from 'zod/mini';
import type { CniResult } from './config.js';
import './zod-locale.js';

/** The agent's route for pod-add events on `<cni_agent_run_dir>/pluginevent.sock`. */
export const CMD_ADD_PATH = '/cmdadd';
export const PLUGIN_EVENT_SOCKET = 'pluginevent.sock';

function buildIpConfigSchema() {
  const ipString = z.string().check(z.refine((s) => isIP(s) !== 0, 'must be an IPv4 or IPv6 address'));
  const maskString = z.string().check(
    z.refine((s) => {
      const b = Buffer.from(s, 'base64');
      return (b.length === 4 || b.length === 16) && b.toString('base64') === s;
    }, 'must be a base64 netmask of 4 or 16 bytes'),
  );
  return z.object({
    Interface: z.optional(z.nullable(z.int().check(z.nonnegative()))),
    Address: z.object({ IP: ipString, Mask: maskString }),
    Gateway: z.optional(z.nullable(z.union([ipString, z.literal('')]))),
  });
}

function buildCmdAddEventSchema(ipConfig: ReturnType<typeof buildIpConfigSchema>) {
  const nonEmpty = () => z.string().check(z.minLength(1));
  return z.object({
    Netns: nonEmpty(),
    PodName: nonEmpty(),
    PodNamespace: nonEmpty(),
    // Weir's addition (istio-cni sends none): K8S_POD_UID from CNI_ARGS, so the agent can tell the pod
    // from a deleted one of the same name still in its cache. Optional: istio-cni's plugin omits it.
    PodUID: z.optional(nonEmpty()),
    IPs: z.pipe(
      z.nullable(z.array(ipConfig)),
      z.transform((v) => v ?? []),
    ),
  });
}

// Pure calls: the plugin binary's bundle, which only sends the event, drops both (the agent parses).
/** One entry of `IPs`: Go's `{Interface *int, Address net.IPNet, Gateway net.IP}` as JSON. */
export const cmdAddIpConfigSchema = /* @__PURE__ */ buildIpConfigSchema();

/**
 * The `/cmdadd` body as istio-cni sends it (Go field names as keys), plus an optional `PodUID`. `IPs`
 * may be `null` (Go's nil slice, when the primary plugin returned no addresses) and parses to `[]`.
 */
export const cmdAddEventSchema = /* @__PURE__ */ buildCmdAddEventSchema(cmdAddIpConfigSchema);

export type CmdAddIpConfig = z.output<typeof cmdAddIpConfigSchema>;
/** A parsed `/cmdadd` body. */
export type CmdAddEvent = z.output<typeof cmdAddEventSchema>;
/** The `/cmdadd` body on the wire. */
export type CmdAddEventBody = z.input<typeof cmdAddEventSchema>;

function maskBytes(prefix: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = prefix >= (i + 1) * 8 ? 0xff : prefix <= i * 8 ? 0 : (0xff << (8 - (prefix - i * 8))) & 0xff;
  return b;
}

/** Converts a CNI result's `ips` to the event's `IPs`, as Go marshals `net.IPNet` (mask as base64 bytes). */
export function ipConfigsFromResult(result: CniResult | undefined): CmdAddIpConfig[] | null {
  const ips = result?.ips ?? [];
  if (ips.length === 0) return null;
  return ips.map((ip) => {
    const [addr = '', prefix = ''] = ip.address.split('/');
    const v6 = isIP(addr) === 6;
    return {
      Interface: ip.interface ?? null,
      Address: { IP: addr, Mask: maskBytes(Number(prefix), v6 ? 16 : 4).toString('base64') },
      Gateway: ip.gateway ?? '',
    };
  });
}

/** The address and prefix length of one `IPs` entry (`10.244.1.5`, 24). */
export function ipConfigAddress(ip: CmdAddIpConfig): { ip: string; prefixLength: number } {
  let prefixLength = 0;
  for (const byte of Buffer.from(ip.Address.Mask, 'base64')) {
    for (let bit = 7; bit >= 0; bit--) if (byte & (1 << bit)) prefixLength++;
  }
  return { ip: ip.Address.IP, prefixLength };
}
