import type { ProxyPorts } from './inpod-proxy.js';

/**
 * ztunnel's own ports: the pod's listeners (15001 outbound, 15006 inbound plaintext, 15008 HBONE,
 * 15053 DNS, 15080 SOCKS5) and its admin, metrics and readiness (15000, 15020, 15021). An HBONE
 * CONNECT naming one of them on the pod IP would reach ztunnel itself, not the app: a tunnel inside a
 * tunnel whose source is the pod, which slips past source-keyed policies (review 6, section 7).
 */
const ZTUNNEL_PORTS: ReadonlySet<number> = new Set([15000, 15001, 15006, 15008, 15020, 15021, 15053, 15080]);

/** Whether an inbound HBONE target port is one of ztunnel's own (refused: 400), with this proxy's configured ports. */
export function isZtunnelPort(port: number, ports: ProxyPorts): boolean {
  return ZTUNNEL_PORTS.has(port) || port === ports.outbound || port === ports.inbound || port === ports.inboundPlaintext;
}
