/** The pino-shaped logger the library accepts; silent unless one is given. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

export type LoggerLevel = 'debug' | 'info' | 'warn' | 'error' | 'none';

const RANK: Record<LoggerLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, none: 100 };

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger;
  },
};

function fmtValue(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s !== undefined && /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s ?? null);
}

/**
 * A small logger for the plugin binary: one line per event to `write` (the runtime keeps a plugin's
 * stderr; stdout belongs to the CNI result). Text shaped like ztunnel's
 * (`2026-11-29T10:00:00.000Z  INFO cni: msg key=value`), or JSON lines with `format: 'json'`.
 */
export function lineLogger(
  level: LoggerLevel,
  write: (line: string) => void,
  opts: { format?: 'text' | 'json'; scope?: string; bindings?: Record<string, unknown> } = {},
): Logger {
  const min = RANK[level];
  const scope = opts.scope ?? 'cni';
  const bound = opts.bindings ?? {};
  const emit = (lvl: Exclude<LoggerLevel, 'none'>, obj: object, msg?: string) => {
    if (RANK[lvl] < min) return;
    const fields: Record<string, unknown> = { ...bound, ...obj };
    if (fields['err'] instanceof Error) fields['err'] = (fields['err'] as Error).message;
    const time = new Date().toISOString();
    if (opts.format === 'json') {
      write(`${JSON.stringify({ time, level: lvl, scope, msg: msg ?? '', ...fields })}\n`);
      return;
    }
    const kv = Object.entries(fields)
      .map(([k, v]) => `${k}=${fmtValue(v)}`)
      .join(' ');
    write(`${time} ${lvl.toUpperCase().padStart(5)} ${scope}: ${msg ?? ''}${kv ? ` ${kv}` : ''}\n`);
  };
  return {
    debug: (o, m) => emit('debug', o, m),
    info: (o, m) => emit('info', o, m),
    warn: (o, m) => emit('warn', o, m),
    error: (o, m) => emit('error', o, m),
    child: (b) => lineLogger(level, write, { ...opts, bindings: { ...bound, ...b } }),
  };
}
