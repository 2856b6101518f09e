/** A chain of `nft list table` output: its rules as the weir tags they carry (undefined: untagged). */
export interface ListedNftChain {
  readonly name: string;
  readonly rules: readonly { readonly tag: string | undefined; readonly text: string }[];
}

/**
 * Read `nft list table …` output far enough to diff it against a tagged rendering: chain names and,
 * per rule, the `comment "weir:…"` tag (or none, for rules someone else added).
 */
export function parseNftListing(text: string): ListedNftChain[] {
  const chains: { name: string; rules: { tag: string | undefined; text: string }[] }[] = [];
  let current: (typeof chains)[number] | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const start = /^chain (\S+) \{$/.exec(line);
    if (start) {
      current = { name: start[1] as string, rules: [] };
      chains.push(current);
      continue;
    }
    if (!current) continue;
    if (line === '}') {
      current = undefined;
      continue;
    }
    if (line === '' || /^type \S+ hook /.test(line) || line.startsWith('policy ')) continue;
    const tag = /comment "(weir:[0-9a-f]+)"/.exec(line)?.[1];
    current.rules.push({ tag, text: line.replace(/ counter packets \d+ bytes \d+/, ' counter') });
  }
  return chains;
}
