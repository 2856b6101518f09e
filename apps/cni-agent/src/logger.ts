import { Writable } from 'node:stream';
import { pino, type Logger as PinoLogger } from 'pino';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

function fmtValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (v instanceof Object) return JSON.stringify(v);
  return String(v);
}

/** One pino JSON record as a ztunnel-shaped text line: `<time>  INFO <scope>: <msg> k=v …`. */
export function textLine(json: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const { time, level, msg, scope, pid: _pid, hostname: _host, ...fields } = rec;
  const ts = new Date(typeof time === 'number' ? time : Date.now()).toISOString().replace('Z', '000Z');
  const lvl = (LEVELS[level as number] ?? String(level)).padStart(5);
  const kv = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${fmtValue(v)}`)
    .join(' ');
  return `${ts} ${lvl} ${typeof scope === 'string' ? scope : 'agent'}: ${String(msg ?? '')}${kv ? ` ${kv}` : ''}\n`;
}

export function createLogger(opts: { format: 'text' | 'json'; level: string }, out: NodeJS.WritableStream = process.stderr): PinoLogger {
  const base = { level: opts.level, base: undefined, serializers: { err: pino.stdSerializers.err } };
  if (opts.format === 'json') return pino(base, pino.destination({ fd: out === process.stdout ? 1 : 2, sync: true }));
  const text = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) out.write(textLine(line));
      cb();
    },
  });
  return pino(base, text);
}
