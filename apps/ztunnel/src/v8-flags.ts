/**
 * V8 flags weir-ztunnel applies at start unless `WEIR_V8_FLAGS` says otherwise. A node proxy is mostly
 * idle connections: V8's default young generation grows to 16 MiB semi-spaces (32 MiB reserved, ~10 MiB
 * resident) after the first bursts and stays there. Keeping it at its initial 1 MiB saves ~8–10 MiB of
 * RSS per ztunnel; the data path's CPU per GiB did not measurably change (bench datapath).
 *
 * `--semi-space-growth-factor` is the lever because it is read whenever V8 considers growing the young
 * generation, so setting it from inside the process works; `--max-semi-space-size` and `--min-semi-space-size`
 * only count on node's command line (V8 reads them when it creates the heap), which the image's entrypoint owns.
 *
 * The cost is a scavenge every ~180 keep-alive requests. Measured against it (bench latency + connections with
 * BENCH_ZTUNNEL_NODE_ARGS, load 3–7 on 2 cores): 4 MiB semi-spaces (`--min-semi-space-size=4` on node's command
 * line plus this default) scavenge every ~770 requests but add ~7 MiB idle RSS (84.7 against 77.7 MiB at 100 pods:
 * the ≤ 80 MiB goal missed), no flag ~11 MiB; `--max-semi-space-size=4` stays at 79.8 MiB but V8 seldom grows to it
 * (every ~270). No long-lived p99 gain stood out of the run-to-run noise (p99 ÷ Go 0.8–4.0 across all settings), so
 * the default stays.
 */
export const DEFAULT_V8_FLAGS = '--semi-space-growth-factor=1';

export class V8FlagsError extends Error {
  readonly code = 'ERR_ZTUNNEL_V8_FLAGS';
}

/** `WEIR_V8_FLAGS` (unset: the defaults; empty: none) as a list of `--flag[=value]` tokens. */
export function v8Flags(value: string | undefined): string[] {
  const tokens = (value ?? DEFAULT_V8_FLAGS).split(/\s+/).filter((t) => t !== '');
  const bad = tokens.filter((t) => !/^--[a-z0-9][a-z0-9_-]*(=\S+)?$/.test(t));
  if (bad.length > 0) throw new V8FlagsError(`WEIR_V8_FLAGS=${JSON.stringify(value)}: ${bad.map((b) => JSON.stringify(b)).join(', ')} is not of the form --name or --name=value (V8 itself warns about, and skips, flags it does not know)`);
  return tokens;
}
