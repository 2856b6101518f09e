/**
 * V8 flags weir-ztunnel applies at start unless `WEIR_V8_FLAGS` says otherwise.
 *
 * `--semi-space-growth-factor=1`: a node proxy is mostly idle connections, and V8's default young generation
 * grows to 16 MiB semi-spaces (~10 MiB resident) after the first bursts and stays there; kept at its initial
 * 1 MiB, a ztunnel has ~8–10 MiB less RSS. The cost is a scavenge every ~180 keep-alive requests (4 MiB
 * semi-spaces via node's command line: every ~770, but +7 MiB idle RSS, over the ≤ 80 MiB goal at 100 pods;
 * no p99 gain stood out of the noise in bench latency).
 *
 * `--heap-growing-percent=300`: without it the small young generation made bulk data cost ~35% more CPU per
 * GiB (bench datapath). Every socket read is a fresh ArrayBuffer, external memory that V8 counts against the
 * old generation's limit until a scavenge frees it, and V8 scavenges for it only after 32 MiB of young
 * ArrayBuffers. Reading an app's plaintext, ztunnel makes almost no JS garbage per 64 KiB chunk, so nothing
 * else scavenges; the limit's headroom (live size + max(8 MiB, live × growing factor) + the young generation,
 * ~9 MiB here, with V8 picking a factor near 1.1 for the fast "allocation") ran out first, and the outbound
 * ztunnel did a full mark-compact every 200–300 ms. A fixed factor of 4 (the largest V8 picks by itself)
 * gives ≥ 40 MiB headroom at ztunnel's ~14 MiB live heap: 2 full GCs per run instead of ~60, both ztunnels
 * 1.0–1.2× the CPU per GiB of two plain @weir/hbone processes on the same path (was 1.4–1.7×), with idle
 * RSS at 100 pods and at 10,000 idle connections unchanged (bench connections).
 *
 * `--no-parallel-scavenge`: the young-generation GC on the JS thread alone. A scavenge of ztunnel's 1 MiB
 * semi-space is short work, and in parallel it wakes V8's worker threads and waits for them to join; on a node
 * whose CPUs are busy (the case a proxy must serve well) those threads queue for a CPU while the event loop
 * stands still. Measured in bench latency (2 vCPUs shared with other work, runs of both settings in the same
 * minutes): each scavenge in the new-connection rounds 0.7–0.9 ms instead of 1.6–1.7 ms, i.e. 30–41 instead of
 * 77–79 ms of event-loop pause per 1,000 new connections (both ztunnels); the CPU per new connection moved
 * within the machine's noise (−17% to +50% over six pairs, most of them lower).
 *
 * All are read whenever V8 resizes or collects, so setting them from inside the process works; `--max-semi-space-size`
 * and `--min-semi-space-size` only count on node's command line (V8 reads them when it creates the heap),
 * which the image's entrypoint owns.
 */
export const DEFAULT_V8_FLAGS = '--semi-space-growth-factor=1 --heap-growing-percent=300 --no-parallel-scavenge';

/**
 * V8's `--interrupt-budget` (66 KiB of bytecode executed per tiering tick; V8 11.3 to 12.x), and the 4× weir-ztunnel
 * runs its start-up under (main.ts) unless `WEIR_V8_FLAGS` sets one: start-up then compiles ~10 instead of ~25
 * functions with TurboFan, and an idle ztunnel keeps ~4 MiB less RSS. Kept for good, the 4× budget cost 20–60%
 * more CPU per new connection over the first ~5,000 connections (TurboFan reaches the connection path later).
 */
export const V8_INTERRUPT_BUDGET = 66 * 1024;
export const STARTUP_INTERRUPT_BUDGET = 4 * V8_INTERRUPT_BUDGET;

/** The flags main.ts sets while ztunnel starts and once it has: none when `flags` (WEIR_V8_FLAGS) set a budget. */
export function startupV8Flags(flags: readonly string[]): { starting: string[]; started: string[] } {
  if (flags.some((f) => /^--interrupt[-_]budget(=|$)/.test(f))) return { starting: [], started: [] };
  return { starting: [`--interrupt-budget=${STARTUP_INTERRUPT_BUDGET}`], started: [`--interrupt-budget=${V8_INTERRUPT_BUDGET}`] };
}

/**
 * Flags that, set from inside a running process (as here), abort it at its next full GC (Node 20.20: `Check
 * failed: concurrent_marking_handle_ …` for the single-threaded ones, `… concurrent_marking()->IsStopped()` for
 * parallel marking; `--no-concurrent-marking`, `--no-parallel-scavenge`, `--no-concurrent-sweeping` do not).
 */
const ABORTING_FLAGS = new Set(['single-threaded', 'single-threaded-gc', 'no-parallel-marking']);

export class V8FlagsError extends Error {
  readonly code = 'ERR_ZTUNNEL_V8_FLAGS';
}

/** `WEIR_V8_FLAGS` (unset: the defaults; empty: none) as a list of `--flag[=value]` tokens. */
export function v8Flags(value: string | undefined): string[] {
  const tokens = (value ?? DEFAULT_V8_FLAGS).split(/\s+/).filter((t) => t !== '');
  const bad = tokens.filter((t) => !/^--[a-z0-9][a-z0-9_-]*(=\S+)?$/.test(t));
  if (bad.length > 0) throw new V8FlagsError(`WEIR_V8_FLAGS=${JSON.stringify(value)}: ${bad.map((b) => JSON.stringify(b)).join(', ')} is not of the form --name or --name=value (V8 itself warns about, and skips, flags it does not know)`);
  const aborting = tokens.filter((t) => ABORTING_FLAGS.has(t.slice(2).split('=')[0]!.replaceAll('_', '-')));
  if (aborting.length > 0) {
    throw new V8FlagsError(
      `WEIR_V8_FLAGS=${JSON.stringify(value)}: ${aborting.map((b) => JSON.stringify(b)).join(', ')} aborts V8 at its next full GC when set after start; pass it on node's command line instead`,
    );
  }
  return tokens;
}
