import { BlockList, isIP } from 'node:net';
import type { Policy, RbacMatch, ServiceAccountMatch, StringMatch } from './local-config.js';

/** The peer identity as ztunnel sees it (from the client certificate's SPIFFE URI SAN). */
export interface PeerIdentity {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

/** What an L4 policy is evaluated against. No identity ⇒ plaintext (15006). */
export interface ConnectionAttributes {
  sourceIp: string;
  sourceIdentity?: PeerIdentity | undefined;
  destinationIp: string;
  destinationPort: number;
}

export type AuthorizationDecision =
  | { allowed: true; reason: 'no-allow-policies' | 'allow-matched'; policy?: string }
  | { allowed: false; reason: 'deny-matched' | 'no-allow-matched'; policy?: string };

/** Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; undefined for anything else. */
export function parseSpiffeIdentity(uri: string): PeerIdentity | undefined {
  const m = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(uri);
  if (!m) return undefined;
  return { trustDomain: m[1]!, namespace: m[2]!, serviceAccount: m[3]! };
}

export function formatSpiffeIdentity(id: PeerIdentity): string {
  return `spiffe://${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

function stringMatches(m: StringMatch, value: string | undefined): boolean {
  if (value === undefined) return false;
  switch (m.kind) {
    case 'exact':
      return value === m.value;
    case 'prefix':
      return value.startsWith(m.value);
    case 'suffix':
      return value.endsWith(m.value);
    case 'presence':
      return value !== '';
  }
}

function serviceAccountMatches(m: ServiceAccountMatch, id: PeerIdentity | undefined): boolean {
  if (!id) return false;
  if (m.namespace !== undefined && m.namespace !== id.namespace) return false;
  return stringMatches(m.name, id.serviceAccount);
}

const cidrCache = new Map<string, BlockList>();
function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}
function ipInCidr(ipRaw: string, cidr: string): boolean {
  const ip = normalizeIp(ipRaw);
  let list = cidrCache.get(cidr);
  if (!list) {
    list = new BlockList();
    const [addr = '', len] = cidr.split('/');
    const type = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    if (len === undefined) list.addAddress(addr, type);
    else list.addSubnet(addr, Number(len), type);
    cidrCache.set(cidr, list);
  }
  const family = isIP(ip);
  if (family === 0) return false;
  return list.check(ip, family === 6 ? 'ipv6' : 'ipv4');
}

/** A positive list passes when empty or any element matches; a negative list when none does. */
function field<T>(pos: readonly T[], neg: readonly T[], test: (x: T) => boolean): boolean {
  if (pos.length > 0 && !pos.some(test)) return false;
  return !neg.some(test);
}

export function rbacMatchMatches(m: RbacMatch, c: ConnectionAttributes): boolean {
  const id = c.sourceIdentity;
  const principal = id ? `${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}` : undefined;
  return (
    field(m.namespaces, m.notNamespaces, (s) => stringMatches(s, id?.namespace)) &&
    field(m.serviceAccounts, m.notServiceAccounts, (s) => serviceAccountMatches(s, id)) &&
    field(m.principals, m.notPrincipals, (s) =>
      stringMatches(s.kind === 'presence' ? s : { ...s, value: s.value.replace(/^spiffe:\/\//, '') }, principal),
    ) &&
    field(m.sourceIps, m.notSourceIps, (cidr) => ipInCidr(c.sourceIp, cidr)) &&
    field(m.destinationIps, m.notDestinationIps, (cidr) => ipInCidr(c.destinationIp, cidr)) &&
    field(m.destinationPorts, m.notDestinationPorts, (p) => p === c.destinationPort)
  );
}

/** A policy matches if any rule matches; a rule if all its clauses match; a clause if any match matches. */
export function policyMatches(p: Policy, c: ConnectionAttributes): boolean {
  return p.rules.some((rule) => rule.every((clause) => clause.some((m) => rbacMatchMatches(m, c))));
}

export interface EvaluateOptions {
  /** Called for dry-run policies that would have matched (they never change the decision). */
  onDryRun?: (policy: Policy, matched: boolean) => void;
}

/**
 * ztunnel's L4 order: any matching DENY denies; no ALLOW policy allows; any matching ALLOW allows;
 * otherwise deny.
 */
export function evaluatePolicies(
  policies: readonly Policy[],
  c: ConnectionAttributes,
  options: EvaluateOptions = {},
): AuthorizationDecision {
  const live = policies.filter((p) => {
    if (!p.dryRun) return true;
    options.onDryRun?.(p, policyMatches(p, c));
    return false;
  });
  for (const p of live) {
    if (p.action === 'Deny' && policyMatches(p, c)) {
      return { allowed: false, reason: 'deny-matched', policy: `${p.namespace}/${p.name}` };
    }
  }
  const allows = live.filter((p) => p.action === 'Allow');
  if (allows.length === 0) return { allowed: true, reason: 'no-allow-policies' };
  const hit = allows.find((p) => policyMatches(p, c));
  if (hit) return { allowed: true, reason: 'allow-matched', policy: `${hit.namespace}/${hit.name}` };
  return { allowed: false, reason: 'no-allow-matched' };
}
