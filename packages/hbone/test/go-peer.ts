import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import type { Peers } from './peers.js';

const SOURCE = fileURLToPath(new URL('./peers/hbonepeer.go', import.meta.url));

/** Builds test/peers/hbonepeer.go with Debian's Go (GOPATH mode, caches in the temp dir). */
export async function buildGoPeer(peers: Peers): Promise<string> {
  const dir = await peers.tmp('go');
  const bin = join(dir, 'hbonepeer');
  const env = {
    ...process.env,
    GO111MODULE: 'off',
    GOFLAGS: '',
    GOCACHE: join(tmpdir(), 'weir-hbone-gocache'),
    GOPATH: join(tmpdir(), 'weir-hbone-gopath'),
  };
  const r = await peers.run('go', ['build', '-o', bin, SOURCE], { env, cwd: dir, timeoutMs: 180_000 });
  if (r.code !== 0) throw new Error(`go build of ${SOURCE} failed (is golang-go installed?):\n${r.out}`);
  return bin;
}

/** Waits for the peer's `LISTENING <addr>` line and returns the port. */
export function listeningPort(p: ChildProcess, peers: Peers, ms = 20_000): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`Go peer did not print LISTENING within ${ms} ms:\n${peers.logOf(p)}`)), ms);
    p.stdout?.on('data', (b: Buffer) => {
      buf += b.toString();
      const m = /LISTENING \S+:(\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    p.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`Go peer exited (${code}) before listening:\n${peers.logOf(p)}`));
    });
  });
}
