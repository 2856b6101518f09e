/** The pino logger shape; any pino logger fits. */
export interface HboneLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: object): HboneLogger;
}

const noop = (): void => {};
export const silentLogger: HboneLogger = {
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  child: () => silentLogger,
};
