import { pino, type Logger as PinoLogger } from 'pino';

/** The logger shape the library accepts (pino's). */
export interface Logger {
  trace?(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
  /** pino's: lets a caller skip building the fields of a line that would not be written. */
  isLevelEnabled?(level: string): boolean;
}

const noop = (): void => {};
export const silentLogger: Logger = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  child: () => silentLogger,
  isLevelEnabled: () => false,
};

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';
export const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error'];

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'ERROR' };
const RESERVED = new Set(['level', 'time', 'msg', 'component', 'pid', 'hostname']);

function formatValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (typeof v === 'object' && v !== null) {
    const e = v as { message?: unknown; type?: unknown };
    if (typeof e.message === 'string' && typeof e.type === 'string') return JSON.stringify(e.message);
    return JSON.stringify(v);
  }
  return String(v);
}

/**
 * Renders one pino JSON record the way ztunnel prints (`2026-11-29T10:00:00.000000Z  INFO inpod: msg
 * k=v`). Exported for tests.
 */
export function formatTextLine(record: Record<string, unknown>): string {
  const time = typeof record.time === 'number' ? new Date(record.time) : new Date();
  const ts = `${time.toISOString().slice(0, -1)}000Z`;
  const level = (LEVEL_NAMES[Number(record.level)] ?? 'INFO').padStart(5);
  const component = typeof record.component === 'string' ? `${record.component}: ` : '';
  const fields = Object.entries(record)
    .filter(([k, v]) => !RESERVED.has(k) && v !== undefined)
    .map(([k, v]) => `${k}=${formatValue(v)}`);
  const msg = typeof record.msg === 'string' ? record.msg : '';
  return `${ts} ${level} ${component}${msg}${fields.length ? ' ' + fields.join(' ') : ''}\n`;
}

export interface CreateLoggerOptions {
  level?: LogLevel;
  format?: 'text' | 'json';
  /** Where lines go; default stdout. */
  write?: (line: string) => void;
}

export interface LogControl {
  logger: Logger;
  readonly level: LogLevel;
  /** Changes the level of the root logger and every child made from it. */
  setLevel(level: LogLevel): void;
  /** Children still tracked for setLevel (those not yet garbage collected). */
  readonly childCount: number;
}

/** A pino logger writing ztunnel-shaped text (default) or JSON lines, with a runtime level switch. */
export function createLogger(options: CreateLoggerOptions = {}): LogControl {
  const write = options.write ?? ((line: string) => process.stdout.write(line));
  const format = options.format ?? 'text';
  // Children (several per pod) are found again for setLevel; a collected one leaves its entry via
  // the registry, so the set does not grow with every pod ever enrolled.
  const children = new Set<WeakRef<PinoLogger>>();
  const collected = new FinalizationRegistry<WeakRef<PinoLogger>>((ref) => children.delete(ref));
  let level: LogLevel = options.level ?? 'info';
  const destination = {
    write(line: string): void {
      if (format === 'json') write(line);
      else write(formatTextLine(JSON.parse(line) as Record<string, unknown>));
    },
  };
  const root = pino(
    {
      level,
      base: undefined,
      timestamp: format === 'json' ? pino.stdTimeFunctions.isoTime : pino.stdTimeFunctions.epochTime,
      formatters: format === 'json' ? { level: (label) => ({ level: label }) } : {},
      onChild: (child) => {
        const ref = new WeakRef(child);
        children.add(ref);
        collected.register(child, ref);
      },
    },
    destination,
  );
  return {
    logger: root as unknown as Logger,
    get childCount() {
      return children.size;
    },
    get level() {
      return level;
    },
    setLevel(next: LogLevel) {
      level = next;
      root.level = next;
      for (const ref of children) {
        const child = ref.deref();
        if (child) child.level = next;
      }
    },
  };
}
