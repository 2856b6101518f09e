import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface HostSnapshot {
  netns: string[];
  links: string[];
  iptables: string;
  ip6tables: string;
  rules: string;
  routes: string;
}

/** What `down` must leave as it was in the root network namespace (counters and timestamps stripped). */
export async function hostSnapshot(): Promise<HostSnapshot> {
  const out = async (cmd: string, args: string[]): Promise<string> => (await run(cmd, args, { maxBuffer: 64 << 20 })).stdout;
  const save = (text: string): string =>
    text
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .map((l) => l.replace(/\[\d+:\d+\]/, '[0:0]'))
      .join('\n');
  return {
    netns: (await out('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean).sort(),
    // Names, flags, master and peer only: byte counters and operstate flaps are not changes.
    links: (await out('ip', ['-o', 'link', 'show']))
      .split('\n')
      .filter(Boolean)
      .map((l) => l.replace(/^\d+: /, '').replace(/ qlen \d+/, '').replace(/ state \S+/, '').replace(/\\.*$/, '').trim())
      .sort(),
    iptables: save(await out('iptables-save', [])),
    ip6tables: save(await out('ip6tables-save', [])),
    rules: await out('ip', ['rule', 'show']),
    routes: await out('ip', ['route', 'show', 'table', 'all']),
  };
}
