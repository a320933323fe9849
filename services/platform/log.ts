/** One JSON line per record on stderr: what log collectors in a pod ingest without parsing rules. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

const LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LEVELS)[number];

export function createLogger(
  level: LogLevel = "info",
  write: (line: string) => void = (line) => process.stderr.write(line + "\n"),
): Logger {
  const min = LEVELS.indexOf(level);
  const at = (l: LogLevel) => (msg: string, fields: Record<string, unknown> = {}) => {
    if (LEVELS.indexOf(l) >= min) write(JSON.stringify({ time: new Date().toISOString(), level: l, msg, ...fields }));
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** For tests and embedding: drops everything. */
export const silentLogger: Logger = createLogger("error", () => {});
