import { execInNetns, run, type RunResult } from '@weir/topology';

/** Run a command in the netns at `netns` (a path), or in this process's netns when undefined. */
export function runIn(netns: string | undefined, cmd: string, args: readonly string[], timeoutMs = 15_000): Promise<RunResult> {
  return netns === undefined ? run(cmd, args, { timeoutMs }) : execInNetns(netns, cmd, args, { timeoutMs });
}

/** GET `http://<address><path>` from inside `netns` (admin ports listen on that netns's loopback). */
export function httpGet(netns: string | undefined, address: string, path: string): Promise<{ ok: true; body: string } | { ok: false; error: string }> {
  return httpGetUrl(netns, `http://${address}${path}`);
}

/** GET `url` from inside `netns`. */
export async function httpGetUrl(netns: string | undefined, url: string): Promise<{ ok: true; body: string } | { ok: false; error: string }> {
  const r = await runIn(netns, 'curl', ['-sS', '-f', '--max-time', '3', url]).catch((err: unknown) => ({ code: 1, stdout: '', stderr: (err as Error).message }));
  if (r.code === 0) return { ok: true, body: r.stdout };
  return { ok: false, error: `GET ${url}${netns === undefined ? '' : ` in ${netns}`}: ${r.stderr.trim().replace(/^curl: \(\d+\) /, '') || `curl exited ${r.code}`}` };
}

/** The parts of ztunnel's `/config_dump` weirctl reads. */
export interface ZtunnelDump {
  policies: Array<Record<string, unknown> & { name: string; namespace: string }>;
  pods: Array<{ uid: string; state: string; name?: string; namespace?: string; netns: { dev: number; ino: number }; lastError?: string }>;
  /** The mesh state's workloads (what outbound and inbound resolve addresses against). */
  workloads: Array<{ workloadIps?: string[] }>;
  /** Present when ztunnel runs against a control plane (XDS_ADDRESS). */
  xds: { address: string; connected: boolean; lastError: string | null } | null;
}

export async function ztunnelDump(netns: string | undefined, admin: string): Promise<{ ok: true; dump: ZtunnelDump } | { ok: false; error: string }> {
  const r = await httpGet(netns, admin, '/config_dump');
  if (!r.ok) return r;
  try {
    const dump = JSON.parse(r.body) as Partial<ZtunnelDump>;
    return { ok: true, dump: { policies: dump.policies ?? [], pods: dump.pods ?? [], workloads: dump.workloads ?? [], xds: dump.xds ?? null } };
  } catch (err) {
    return { ok: false, error: `${admin}/config_dump is not JSON: ${(err as Error).message}` };
  }
}
