// Minimal pino-compatible logger interface; the server never logs on the data path.

export interface Logger {
  debug(fields: object, msg: string): void;
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
  error(fields: object, msg: string): void;
}

const noop = (): void => {};
export const NULL_LOGGER: Logger = Object.freeze({ debug: noop, info: noop, warn: noop, error: noop });
