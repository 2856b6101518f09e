import { CommandFailedError, IptablesError } from './errors.js';
import type { CommandExecutor } from './executor.js';
import { silentLogger, type Logger } from './logger.js';
import type { Family } from './model.js';
import { ISTIO_DEFAULTS } from './presets.js';
import { hex } from './render-iptables.js';

/** `ip rule add fwmark <mark>/<mask> pref <priority> lookup <table>` */
export interface FwmarkRule {
  readonly family: Family;
  readonly fwmark: number;
  readonly mask: number;
  readonly table: number;
  readonly priority: number;
}

/** `ip route add local <destination> dev <device> table <table>` */
export interface LocalRoute {
  readonly family: Family;
  readonly destination: string;
  readonly device: string;
  readonly table: number;
}

/** Policy routing a rule set needs, as data the applier (or anyone) runs. */
export interface PolicyRouting {
  readonly rules: readonly FwmarkRule[];
  readonly routes: readonly LocalRoute[];
}

export interface InpodRoutingOptions {
  readonly ipv4?: boolean;
  readonly ipv6?: boolean;
  readonly mark?: number;
  readonly mask?: number;
  readonly table?: number;
  readonly priority?: number;
}

/**
 * The in-pod policy routing (both modes): packets marked 0x111 (TPROXY'd inbound, and replies of
 * inbound connections whose source ztunnel spoofed, via the connmark restore) are routed to the
 * local stack by `table 133`'s `local 0.0.0.0/0 dev lo`.
 */
export function inpodRouting(options: InpodRoutingOptions = {}): PolicyRouting {
  const d = ISTIO_DEFAULTS;
  const families: Family[] = [];
  if (options.ipv4 ?? true) families.push('ipv4');
  if (options.ipv6 ?? false) families.push('ipv6');
  const table = options.table ?? d.routeTable;
  return {
    rules: families.map((family) => ({
      family,
      fwmark: options.mark ?? d.inboundMark,
      mask: options.mask ?? d.markMask,
      table,
      priority: options.priority ?? d.routeRulePriority,
    })),
    routes: families.map((family) => ({
      family,
      destination: family === 'ipv4' ? '0.0.0.0/0' : '::/0',
      device: 'lo',
      table,
    })),
  };
}

const fam = (f: Family): string => (f === 'ipv4' ? '-4' : '-6');

export function ipRuleArgs(rule: FwmarkRule, op: 'add' | 'del'): string[] {
  return [fam(rule.family), 'rule', op, 'fwmark', `${hex(rule.fwmark)}/${hex(rule.mask)}`, 'pref', String(rule.priority), 'lookup', String(rule.table)];
}

export function ipRouteArgs(route: LocalRoute, op: 'replace' | 'del'): string[] {
  return [fam(route.family), 'route', op, 'local', route.destination, 'dev', route.device, 'table', String(route.table)];
}

/**
 * The kernel refused the IPv6 capture route (`local ::/0 dev lo`, EACCES) because IPv6 is disabled
 * on `lo` while it is on elsewhere in the netns, so IPv6 is there to capture but cannot be routed
 * to the local stack. Capture fails closed; the fix is the netns's, not a retry.
 */
export class Ipv6LoopbackDisabledError extends IptablesError {
  /** Interfaces of the netns with IPv6 on (`disable_ipv6` = 0), `lo` not among them. */
  readonly enabledOn: readonly string[];

  constructor(route: string, enabledOn: readonly string[], options?: { cause?: unknown }) {
    const where = enabledOn.length ? `but enabled on ${enabledOn.join(', ')} ` : '';
    super(
      'ERR_IPTABLES_IPV6_LO_DISABLED',
      `IPv6 is disabled on lo ${where}in the netns: the IPv6 capture route (${route}) needs IPv6 on lo. ` +
        'Set net.ipv6.conf.lo.disable_ipv6=0 in the pod (or disable IPv6 on all of its interfaces), or run the agent with IPv6 capture off; the pod stays uncaptured until then',
      options,
    );
    this.name = 'Ipv6LoopbackDisabledError';
    this.enabledOn = enabledOn;
  }
}

/** Whether an `ip` argv (ipRouteArgs) installs a route through `lo` for IPv6. */
function isIpv6LoRoute(args: readonly string[]): boolean {
  return args[0] === '-6' && args[1] === 'route' && args.includes('dev') && args[args.indexOf('dev') + 1] === 'lo';
}

/**
 * Each interface of the executor's netns and whether IPv6 is on on it (its
 * `/proc/sys/net/ipv6/conf/<if>/disable_ipv6` is 0), `all` and `default` left out. Empty when the
 * kernel has no IPv6.
 */
export async function ipv6Interfaces(executor: CommandExecutor): Promise<{ name: string; ipv6: boolean }[]> {
  const args = ['-c', 'grep -H . /proc/sys/net/ipv6/conf/*/disable_ipv6 2>/dev/null || true'];
  const r = await executor.run('sh', args);
  if (r.code !== 0) throw new CommandFailedError('ERR_IPTABLES_COMMAND_FAILED', 'sh', args, r.code, r.stderr);
  return r.stdout
    .split('\n')
    .map((l) => /^\/proc\/sys\/net\/ipv6\/conf\/([^/]+)\/disable_ipv6:(\d+)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null && m[1] !== 'all' && m[1] !== 'default')
    .map((m) => ({ name: m[1] as string, ipv6: m[2] === '0' }));
}

/** Installs and removes policy routing idempotently (`ip rule`/`ip route`) through an executor. */
export class RoutingApplier {
  readonly #executor: CommandExecutor;
  readonly #logger: Logger;

  constructor(options: { executor: CommandExecutor; logger?: Logger }) {
    this.#executor = options.executor;
    this.#logger = options.logger ?? silentLogger;
  }

  /** What is not in place yet, as the `ip` argv that would add it. */
  async missing(spec: PolicyRouting): Promise<string[][]> {
    const out: string[][] = [];
    for (const rule of spec.rules) if (!(await this.#hasRule(rule))) out.push(ipRuleArgs(rule, 'add'));
    for (const route of spec.routes) if (!(await this.#hasRoute(route))) out.push(ipRouteArgs(route, 'replace'));
    return out;
  }

  /** Add what is missing; returns whether anything ran. */
  async apply(spec: PolicyRouting): Promise<{ changed: boolean }> {
    const todo = await this.missing(spec);
    for (const args of todo) {
      try {
        await this.#ip(args);
      } catch (err) {
        throw (await this.#explain(args, err)) ?? err;
      }
    }
    if (todo.length) this.#logger.info({ commands: todo.map((a) => `ip ${a.join(' ')}`) }, 'applied policy routing');
    return { changed: todo.length > 0 };
  }

  /** Remove the rules and routes of `spec` that exist; leaves everything else. */
  async remove(spec: PolicyRouting): Promise<void> {
    for (const rule of spec.rules) while (await this.#hasRule(rule)) await this.#ip(ipRuleArgs(rule, 'del'));
    for (const route of spec.routes) if (await this.#hasRoute(route)) await this.#ip(ipRouteArgs(route, 'del'));
  }

  /** An IPv6 `lo` route refused (EACCES; newer `ip` prints the kernel's extack text) because IPv6 is off on `lo`: the error saying so. */
  async #explain(args: readonly string[], err: unknown): Promise<Ipv6LoopbackDisabledError | undefined> {
    if (!(err instanceof CommandFailedError) || !isIpv6LoRoute(args) || !/Permission denied|IPv6 is disabled on nexthop device/i.test(err.stderr)) return undefined;
    const links = await ipv6Interfaces(this.#executor).catch(() => undefined);
    if (!links || links.find((l) => l.name === 'lo')?.ipv6 !== false) return undefined;
    return new Ipv6LoopbackDisabledError(`ip ${args.join(' ')}`, links.filter((l) => l.ipv6).map((l) => l.name), { cause: err });
  }

  async #hasRule(rule: FwmarkRule): Promise<boolean> {
    return countRule(rule, await this.#ip([fam(rule.family), 'rule', 'show'])) > 0;
  }

  async #hasRoute(route: LocalRoute): Promise<boolean> {
    const args = [fam(route.family), 'route', 'show', 'table', String(route.table)];
    const r = await this.#executor.run('ip', args);
    // A table with no routes yet "does not exist" to the kernel.
    if (r.code !== 0 && /FIB table does not exist/.test(r.stderr)) return false;
    if (r.code !== 0) throw new CommandFailedError('ERR_IPTABLES_ROUTING_FAILED', 'ip', args, r.code, r.stderr);
    return hasRoute(route, r.stdout);
  }

  async #ip(args: string[]): Promise<string> {
    const r = await this.#executor.run('ip', args);
    if (r.code !== 0) throw new CommandFailedError('ERR_IPTABLES_ROUTING_FAILED', 'ip', args, r.code, r.stderr);
    return r.stdout;
  }
}

/** How many copies of `rule` an `ip rule show` listing holds. */
export function countRule(rule: FwmarkRule, listing: string): number {
  const want = `fwmark ${hex(rule.fwmark)}/${hex(rule.mask)} lookup ${rule.table}`;
  return listing.split('\n').filter((l) => l.startsWith(`${rule.priority}:`) && l.includes(want)).length;
}

/** Whether an `ip route show table <t>` listing holds `route` (other lines, e.g. rules, are ignored). */
export function hasRoute(route: LocalRoute, listing: string): boolean {
  const dest = route.destination === '0.0.0.0/0' || route.destination === '::/0' ? 'default' : route.destination;
  return listing.split('\n').some((l) => l.startsWith(`local ${dest} dev ${route.device} `) || l === `local ${dest} dev ${route.device}`);
}
