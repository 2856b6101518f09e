import { readFile } from 'node:fs/promises';
import type { SupervisedProcess } from './process.js';
import { run } from './run.js';

export interface CaptureOptions {
  /**
   * Interface inside the netns. Default `any`. In the underlay, `br0` only sees frames addressed to the
   * bridge itself; node-to-node traffic is on the ports `n<index>` (and on `any`, once per port).
   */
  iface?: string;
  /** A pcap filter, e.g. `tcp port 15008`. Default: everything. */
  filter?: string;
  /** Names the capture process and its files. */
  name: string;
}

/**
 * A tcpdump capture running inside a netns (e.g. the underlay's `br0`, to assert what crosses between
 * nodes). Packets are written unbuffered to a pcap file; read it raw or decoded.
 */
export class PacketCapture {
  /** @internal */
  constructor(
    readonly process: SupervisedProcess,
    readonly pcapFile: string,
  ) {}

  /** Stop capturing (SIGINT lets tcpdump close the file cleanly). */
  async stop(): Promise<void> {
    await this.process.stop('SIGINT', 3000);
  }

  /** The pcap file's bytes: search them for a payload that must (or must not) have crossed the wire. */
  async bytes(): Promise<Buffer> {
    return readFile(this.pcapFile);
  }

  /**
   * `tcpdump -r` of the file: one line per packet, numeric, plus `extraArgs` (e.g. `-A`, or a filter).
   * Interface names are resolved in the reader's netns, so they are meaningless here; ignore them.
   */
  async decode(extraArgs: readonly string[] = []): Promise<string> {
    return (await run('tcpdump', ['-r', this.pcapFile, '-nn', ...extraArgs], { check: true })).stdout;
  }
}

export function tcpdumpArgs(pcapFile: string, options: CaptureOptions): string[] {
  // --immediate-mode: no kernel ring batching (packets of the last second are otherwise lost at stop);
  // -U: each packet reaches the file at once; -s 0: whole packets; -nn: no name lookups.
  return ['-i', options.iface ?? 'any', '--immediate-mode', '-U', '-s', '0', '-nn', '-w', pcapFile, ...(options.filter ? options.filter.split(' ') : [])];
}
