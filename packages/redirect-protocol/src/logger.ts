/** The pino logger shape; any pino logger fits. Default silent. */
export interface ZdsLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): ZdsLogger;
}

const noop = (): void => {};
export const silentLogger: ZdsLogger = {
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  child: () => silentLogger,
};
