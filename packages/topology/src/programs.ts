import { fileURLToPath } from 'node:url';
import { TopologyError } from './errors.js';
import { execInNetns } from './run.js';

/** A command line for `spawn` / `exec`: the programs shipped with this package run under the current Node. */
export interface ProgramCommand {
  cmd: string;
  args: string[];
}

export type ProgramName = 'http-echo' | 'tcp-echo' | 'tcp-probe';

/** Absolute path of a shipped program (`dist/programs/<name>.js`). */
export function programPath(name: ProgramName): string {
  return fileURLToPath(new URL(`./programs/${name}.js`, import.meta.url));
}

/** HTTP server answering every request with JSON of what it saw (method, path, headers, body, client address). */
export function httpEcho(options: { port: number; host?: string; name?: string }): ProgramCommand {
  return node('http-echo', ['--port', String(options.port), '--host', options.host ?? '0.0.0.0', '--name', options.name ?? 'http-echo']);
}

/** TCP server: `echo` returns every byte; `sink` reads to EOF and answers `{bytes, sha256, client}`. */
export function tcpEcho(options: { port: number; host?: string; mode?: 'echo' | 'sink' }): ProgramCommand {
  return node('tcp-echo', ['--port', String(options.port), '--host', options.host ?? '0.0.0.0', '--mode', options.mode ?? 'echo']);
}

export interface TcpProbeOptions {
  host: string;
  port: number;
  /** Text to send; or `bytes` pseudo-random bytes. Default: nothing (connect, half-close, read). */
  payload?: string;
  bytes?: number;
  timeoutMs?: number;
}

export interface TcpProbeResult {
  ok: boolean;
  local?: string;
  remote?: string;
  sentBytes?: number;
  sentSha256?: string;
  receivedBytes?: number;
  receivedSha256?: string;
  /** What came back as text (up to 64 KiB). */
  received?: string;
  error?: string;
  code?: string;
  ms: number;
}

export function tcpProbe(options: TcpProbeOptions): ProgramCommand {
  const args = [`--connect`, `${options.host.includes(':') ? `[${options.host}]` : options.host}:${options.port}`];
  if (options.payload !== undefined) args.push('--payload', options.payload);
  if (options.bytes !== undefined) args.push('--bytes', String(options.bytes));
  args.push('--timeout', String(options.timeoutMs ?? 10_000));
  return node('tcp-probe', args);
}

/** Run the TCP probe inside a netns: a real connection from that namespace. Connection errors are in the result. */
export async function probeTcp(netnsPath: string, options: TcpProbeOptions): Promise<TcpProbeResult> {
  const command = tcpProbe(options);
  const result = await execInNetns(netnsPath, command.cmd, command.args, { timeoutMs: (options.timeoutMs ?? 10_000) + 5000 });
  const line = result.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as TcpProbeResult;
  } catch (err) {
    throw new TopologyError(
      'TOPOLOGY_PROCESS_FAILED',
      `tcp-probe in ${netnsPath} to ${options.host}:${options.port} printed no result (exit ${result.code}): ${result.stderr.trim() || line}`,
      { cause: err },
    );
  }
}

function node(name: ProgramName, args: string[]): ProgramCommand {
  return { cmd: process.execPath, args: [programPath(name), ...args] };
}
