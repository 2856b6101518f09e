import { IptablesError } from './errors.js';
import type { CommandExecutor } from './executor.js';
import { silentLogger, type Logger } from './logger.js';
import type { Family } from './model.js';
import {
  attr,
  attributes,
  concat,
  errnoOf,
  F_ACK,
  F_APPEND,
  F_CREATE,
  F_DUMP,
  F_EXCL,
  message,
  nest,
  NETLINK_NETFILTER,
  NLMSG_ERROR,
  padded,
  replies,
  type NetlinkAttribute,
} from './netlink-codec.js';
import type { NetlinkExchange } from './rtnetlink.js';

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
const NFNL_SUBSYS_NFTABLES = 10;
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
const nft = (msg: number): number => (NFNL_SUBSYS_NFTABLES << 8) | msg;
const NEWTABLE = nft(0);
const GETTABLE = nft(1);
const DELTABLE = nft(2);
const NEWCHAIN = nft(3);
const GETCHAIN = nft(4);
const NEWRULE = nft(6);
const GETRULE = nft(7);
const TABLE = { NAME: 1, FLAGS: 2, USERDATA: 6 } as const;
const CHAIN = { TABLE: 1, NAME: 3, HOOK: 4, POLICY: 5, TYPE: 7, COUNTERS: 8, USERDATA: 12 } as const;
const RULE = { TABLE: 1, CHAIN: 2, EXPRESSIONS: 4, COMPAT: 5, USERDATA: 7 } as const;
const COMPAT_PROTO = 1;
const COMPAT_FLAGS = 2;
const COMPAT_F_INV = 1 << 1;
const LIST_ELEM = 1;
const EXPR_NAME = 1;
const EXPR_DATA = 2;
const COUNTER_BYTES = 1;
const COUNTER_PACKETS = 2;
const NFPROTO: Record<Family, number> = { ipv4: 2, ipv6: 10 };
const EEXIST = 17;
const PROTOCOLS: Record<string, number> = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58, 'ipv6-icmp': 58, sctp: 132, all: 0 };

/** A NUL-terminated name (tables, chains, expressions: ASCII) without a TextDecoder per attribute. */
function cstring(a: NetlinkAttribute | undefined): string {
  if (!a) return '';
  const end = a.data.indexOf(0);
  return Buffer.from(a.data.buffer, a.data.byteOffset, end < 0 ? a.data.length : end).toString('latin1');
}
const find = (attrs: readonly NetlinkAttribute[], type: number): NetlinkAttribute | undefined => attrs.find((a) => a.type === type);

/** One request of an install: a table, chain or rule, as iptables-nft-restore sent it. */
interface Request {
  readonly type: number;
  readonly flags: number;
  /** nfgenmsg and attributes. */
  readonly body: Uint8Array;
  /** What it is, for errors: `table nat`, `rule nat ISTIO_OUTPUT #2`. */
  readonly what: string;
}

/** A fresh install of one family as the kernel stored it: replayable in another netns. */
interface Install {
  readonly family: Family;
  /** `-p` of each rule of the text, by `table chain`. */
  readonly protocols: ReadonlyMap<string, readonly { proto: number; inv: boolean }[]>;
  readonly tables: readonly string[];
  readonly requests: readonly Request[];
  /** The rule requests, to compare a replayed netns against. */
  readonly rules: readonly Request[];
  /** All requests as one nfnetlink batch, made on the first replay. */
  batch?: Uint8Array;
  /** What the first replay that checked out read back (readBackOf), to check later ones by. */
  readBack?: Uint8Array;
}

/** `-p` of each `-A` line of an iptables-restore text, by `table chain`, in order. */
function ruleProtocols(restore: string): Map<string, { proto: number; inv: boolean }[]> | undefined {
  const out = new Map<string, { proto: number; inv: boolean }[]>();
  let table = '';
  for (const line of restore.split('\n')) {
    if (line.startsWith('*')) table = line.slice(1);
    if (!line.startsWith('-A ')) continue;
    const [, chain = ''] = line.split(' ');
    const m = /(?:^| )(! )?-p (\S+)/.exec(line);
    const name = m?.[2]?.toLowerCase() ?? 'all';
    const proto = /^\d+$/.test(name) ? Number(name) : PROTOCOLS[name];
    if (proto === undefined) return undefined;
    const key = `${table} ${chain}`;
    out.set(key, [...(out.get(key) ?? []), { proto, inv: m?.[1] !== undefined }]);
  }
  return out;
}

/** Tables and the chains the text declares (`:X` or `-N X`), by table. */
function declaredChains(restore: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  let table = '';
  for (const line of restore.split('\n')) {
    if (line.startsWith('*')) out.set((table = line.slice(1)), out.get(line.slice(1)) ?? new Set());
    const m = /^(?::(\S+) |-N (\S+)$)/.exec(line);
    const chain = m?.[1] ?? m?.[2];
    if (chain) out.get(table)?.add(chain);
  }
  return out;
}

function nfgen(family: number, body: readonly Uint8Array[] = []): Uint8Array {
  return concat([Uint8Array.of(family, 0, 0, 0), ...body]);
}

const u32be = (n: number): Uint8Array => Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
const ZERO_COUNTERS = [attr(COUNTER_BYTES, new Uint8Array(8)), attr(COUNTER_PACKETS, new Uint8Array(8))];

const COUNTER_NAME = Buffer.from('counter\0', 'latin1');

/** A rule's expressions with every counter at zero (as a new rule starts). */
function freshExpressions(list: NetlinkAttribute): Uint8Array {
  const elems = attributes(list.data).map((elem) => {
    const parts = attributes(elem.data);
    const name = find(parts, EXPR_NAME)?.data;
    if (name === undefined || Buffer.compare(COUNTER_NAME, name) !== 0) return padded(elem);
    return nest(LIST_ELEM, parts.map((p) => (p.type === EXPR_DATA ? nest(EXPR_DATA, ZERO_COUNTERS) : padded(p))));
  });
  return nest(RULE.EXPRESSIONS, elems);
}

/** The attribute messages of one dump, each as its attribute list; an error reply throws. */
async function dump(exchange: NetlinkExchange, type: number, family: Family, what: string): Promise<NetlinkAttribute[][]> {
  const bytes = await exchange(message(type, F_DUMP, 1, nfgen(NFPROTO[family])), 1, NETLINK_NETFILTER);
  return replies(bytes, 'ERR_IPTABLES_COMMAND_FAILED', `nftables ${what} dump`).map((r) => {
    if (r.type === NLMSG_ERROR) {
      const errno = errnoOf(r);
      throw Object.assign(new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `reading nftables ${what} of ${family} failed: errno ${errno}`), { errno });
    }
    return attributes(r.payload.subarray(4));
  });
}

/**
 * What a netns holding exactly `restore` (a fresh install of `family`) holds, as the requests that
 * recreate it; `foreign` when the netns holds anything else of that family (a table, chain or rule
 * the text does not make), so that nothing foreign is ever copied to other pods; `unsupported`
 * when a rule's protocol has no number here.
 */
async function readInstall(exchange: NetlinkExchange, family: Family, restore: string): Promise<Install | 'foreign' | 'unsupported'> {
  const protocols = ruleProtocols(restore);
  const declared = declaredChains(restore);
  if (!protocols) return 'unsupported';
  const [tables, chains, rules] = [await dump(exchange, GETTABLE, family, 'tables'), await dump(exchange, GETCHAIN, family, 'chains'), await dump(exchange, GETRULE, family, 'rules')];
  const fam = NFPROTO[family];
  const requests: Request[] = [];
  const names = tables.map((t) => cstring(find(t, TABLE.NAME)));
  if (names.length !== declared.size || names.some((n) => !declared.has(n))) return 'foreign';
  for (const t of tables) {
    const keep = [TABLE.NAME, TABLE.FLAGS, TABLE.USERDATA].flatMap((type) => t.filter((a) => a.type === type).map(padded));
    requests.push({ type: NEWTABLE, flags: F_CREATE | F_EXCL, body: nfgen(fam, keep), what: `table ${cstring(find(t, TABLE.NAME))}` });
  }
  for (const c of chains) {
    const table = cstring(find(c, CHAIN.TABLE));
    const name = cstring(find(c, CHAIN.NAME));
    // A chain the text did not declare must be a builtin (hooked) one that iptables-nft made.
    if (!declared.get(table)?.has(name) && !find(c, CHAIN.HOOK)) return 'foreign';
    const keep = [CHAIN.TABLE, CHAIN.NAME, CHAIN.HOOK, CHAIN.POLICY, CHAIN.TYPE, CHAIN.COUNTERS, CHAIN.USERDATA].flatMap((type) =>
      c.filter((a) => a.type === type).map((a) => (a.type === CHAIN.COUNTERS ? nest(CHAIN.COUNTERS, ZERO_COUNTERS) : padded(a))),
    );
    requests.push({ type: NEWCHAIN, flags: F_CREATE | F_EXCL, body: nfgen(fam, keep), what: `chain ${table} ${name}` });
  }
  const ruleRequests = rulesOf(fam, rules, protocols);
  if (ruleRequests === 'foreign') return 'foreign';
  requests.push(...ruleRequests);
  return { family, protocols, tables: names, requests, rules: ruleRequests };
}

/** The NEWRULE requests recreating `rules` (a GETRULE dump), each with its `-p` as compat; `foreign` when they are not the text's. */
function rulesOf(fam: number, rules: readonly NetlinkAttribute[][], protocols: ReadonlyMap<string, readonly { proto: number; inv: boolean }[]>): Request[] | 'foreign' {
  const out: Request[] = [];
  const seen = new Map<string, number>();
  for (const r of rules) {
    const key = `${cstring(find(r, RULE.TABLE))} ${cstring(find(r, RULE.CHAIN))}`;
    const index = seen.get(key) ?? 0;
    seen.set(key, index + 1);
    const proto = protocols.get(key)?.[index];
    const exprs = find(r, RULE.EXPRESSIONS);
    if (!proto || !exprs) return 'foreign';
    const keep = [...[RULE.TABLE, RULE.CHAIN].flatMap((type) => r.filter((a) => a.type === type).map(padded)), freshExpressions(exprs), ...r.filter((a) => a.type === RULE.USERDATA).map(padded)];
    if (proto.proto !== 0) keep.push(nest(RULE.COMPAT, [attr(COMPAT_PROTO, u32be(proto.proto)), attr(COMPAT_FLAGS, u32be(proto.inv ? COMPAT_F_INV : 0))]));
    out.push({ type: NEWRULE, flags: F_CREATE | F_APPEND, body: nfgen(fam, keep), what: `rule ${key} #${index + 1}` });
  }
  if ([...protocols].some(([key, list]) => (seen.get(key) ?? 0) !== list.length)) return 'foreign';
  return out;
}

function sameRequests(a: readonly Request[], b: readonly Request[]): boolean {
  return a.length === b.length && a.every((r, i) => r.type === b[i]?.type && Buffer.compare(r.body, b[i].body) === 0);
}

/** The attributes a rule check compares (handles and positions are the kernel's numbering). */
const READ_BACK = new Set<number>([RULE.TABLE, RULE.CHAIN, RULE.EXPRESSIONS, RULE.USERDATA]);

/** A rules dump's compared attributes as sent, end to end, in dump order. */
function readBackOf(rules: readonly NetlinkAttribute[][]): Uint8Array {
  return concat(rules.flatMap((r) => r.filter((a) => READ_BACK.has(a.type)).map((a) => a.raw)));
}

/** Whether readBackOf(rules) would equal `want`, without making it. */
function sameReadBack(rules: readonly NetlinkAttribute[][], want: Uint8Array): boolean {
  let at = 0;
  for (const r of rules) {
    for (const a of r) {
      if (!READ_BACK.has(a.type)) continue;
      const { raw } = a;
      if (at + raw.length > want.length) return false;
      for (let i = 0; i < raw.length; i++) if (raw[i] !== want[at + i]) return false;
      at += raw.length;
    }
  }
  return at === want.length;
}

/** `requests` as one nfnetlink batch: BATCH_BEGIN, each with an ACK asked and seq = its index + 1, BATCH_END. */
function batchOf(requests: readonly Request[]): Uint8Array {
  const batch = nfgen(0, []);
  new DataView(batch.buffer).setUint16(2, NFNL_SUBSYS_NFTABLES, false);
  return concat([message(NFNL_MSG_BATCH_BEGIN, 0, 0, batch), ...requests.map((r, i) => message(r.type, r.flags | F_ACK, i + 1, r.body)), message(NFNL_MSG_BATCH_END, 0, requests.length + 1, batch)]);
}

/** Sends `requests` (as `batch`, made by batchOf) all or nothing; the errno of each request, in order. */
async function sendBatch(exchange: NetlinkExchange, requests: readonly Request[], batch = batchOf(requests)): Promise<number[]> {
  const got = replies(await exchange(batch, requests.length, NETLINK_NETFILTER), 'ERR_IPTABLES_RESTORE_FAILED', 'nftables batch');
  const errnos = requests.map(() => 0);
  for (const r of got) if (r.type === NLMSG_ERROR && r.seq >= 1 && r.seq <= requests.length) errnos[r.seq - 1] = errnoOf(r);
  return errnos;
}

export interface NftInstallReplayOptions {
  /** nfnetlink in the netns the executor runs in (protocol NETLINK_NETFILTER, 12). */
  readonly netlink: NetlinkExchange;
  readonly logger?: Logger;
}

// Per process: what iptables-nft stores for a text depends only on the iptables build and the
// kernel. `null`: that text cannot be replayed here; it is installed by the command.
const installs = new Map<string, Install | null>();

/**
 * Runs a fresh install's `iptables-nft-restore` (or `ip6tables-`) without the process when it can:
 * the first install of a text runs the command, and what the kernel then holds of that family is
 * read back over nfnetlink (only when it is exactly what the text makes); later installs of the
 * same text send those tables, chains and rules as one nfnetlink batch — atomic, and refused
 * whole when one of the tables exists (then the command runs, as before). After a replay the
 * netns's rules are read back and must match what the command made, byte for byte (counters
 * aside), or the replay is undone and the command runs. `iptables-save` shows the same either way.
 */
export class NftInstallReplay {
  readonly #netlink: NetlinkExchange;
  readonly #logger: Logger;

  constructor(options: NftInstallReplayOptions) {
    this.#netlink = options.netlink;
    this.#logger = options.logger ?? silentLogger;
  }

  /**
   * `inner`, except that a restore of one of `fresh` (restore text → family; the command for that
   * family and backend nft) is replayed when it can be.
   */
  executor(inner: CommandExecutor, fresh: ReadonlyMap<string, Family>): CommandExecutor {
    return {
      run: async (cmd, args, opts) => {
        const family = opts?.input === undefined ? undefined : fresh.get(opts.input);
        if (family === undefined || cmd !== `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-nft-restore`) return inner.run(cmd, args, opts);
        const input = opts?.input ?? '';
        const key = `${family}\n${input}`;
        const install = installs.get(key);
        if (install && (await this.#replay(install, key))) return { code: 0, stdout: '', stderr: '' };
        const result = await inner.run(cmd, args, opts);
        if (result.code === 0 && install === undefined) await this.#learn(family, input, key);
        return result;
      },
    };
  }

  async #learn(family: Family, input: string, key: string): Promise<void> {
    try {
      const install = await readInstall(this.#netlink, family, input);
      // A netns holding foreign rules teaches nothing: the next clean install is read instead.
      if (install !== 'foreign' && !installs.has(key)) installs.set(key, install === 'unsupported' ? null : install);
      this.#logger.debug({ family, replayable: typeof install === 'object', found: typeof install === 'object' ? `${install.requests.length} requests` : install }, 'read back a fresh rule install for replay');
    } catch (err) {
      this.#logger.debug({ family, err: (err as Error).message }, 'reading back a fresh rule install failed; installs of it run the command');
    }
  }

  /** True when `install` is in the netns now; false when the command must run instead. */
  async #replay(install: Install, key: string): Promise<boolean> {
    const errnos = await sendBatch(this.#netlink, install.requests, (install.batch ??= batchOf(install.requests)));
    const failed = errnos.findIndex((e) => e !== 0);
    if (failed >= 0) {
      const errno = errnos[failed] ?? 0;
      // A table that exists: the netns is not new; the command knows what to do with that.
      if (errno === EEXIST && install.requests[failed]?.type === NEWTABLE) return false;
      installs.set(key, null);
      this.#logger.warn({ family: install.family, request: install.requests[failed]?.what, errno }, 'nftables refused a replayed rule install; installing with iptables-nft-restore from now on');
      return false;
    }
    // The batch made every table and chain as sent (exclusively, all or nothing): the rules are what to check.
    const rules = await dump(this.#netlink, GETRULE, install.family, 'rules').catch(() => undefined);
    // Byte for byte what an earlier replay read back: the same rules, without decoding each expression.
    if (rules && install.readBack && sameReadBack(rules, install.readBack)) return true;
    const now = rules ? rulesOf(NFPROTO[install.family], rules, install.protocols) : 'foreign';
    if (now !== 'foreign' && sameRequests(now, install.rules)) {
      install.readBack ??= readBackOf(rules!);
      return true;
    }
    installs.set(key, null);
    const undo = install.tables.map((name) => ({ type: DELTABLE, flags: 0, body: nfgen(NFPROTO[install.family], [attr(TABLE.NAME, new TextEncoder().encode(`${name}\0`))]), what: `table ${name}` }));
    const undone = await sendBatch(this.#netlink, undo);
    this.#logger.warn({ family: install.family, undone: undone.every((e) => e === 0) }, 'a replayed rule install read back different; undone, installing with iptables-nft-restore from now on');
    if (undone.some((e) => e !== 0)) {
      throw new IptablesError('ERR_IPTABLES_RESTORE_FAILED', `a replayed ${install.family} rule install read back different and could not be undone (errno ${undone.join(',')})`);
    }
    return false;
  }
}

