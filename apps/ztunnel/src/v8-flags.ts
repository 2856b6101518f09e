/**
 * V8 flags weir-ztunnel applies at start unless `WEIR_V8_FLAGS` says otherwise. A node proxy is mostly
 * idle connections: V8's default young generation grows to 16 MiB semi-spaces (32 MiB reserved, ~10 MiB
 * resident) after the first bursts and stays there. Keeping it at its initial 1 MiB saves ~8–10 MiB of
 * RSS per ztunnel; the data path's CPU per GiB did not measurably change (bench datapath).
 *
 * `--semi-space-growth-factor` is the lever because it is read whenever V8 considers growing the young
 * generation, so setting it from inside the process works; `--max-semi-space-size` only counts on
 * node's command line, which the image's entrypoint owns.
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
