/**
 * Structured logs with pino: one JSON line per record on stderr, which log collectors in a
 * pod ingest without parsing rules; every line written inside a traced call carries the
 * active `trace_id` and `span_id`, so a log line leads to its trace. On a terminal the lines
 * are pretty-printed for humans instead.
 */
import { context, isSpanContextValid, trace } from "@opentelemetry/api";
import { pino, stdTimeFunctions, type DestinationStream, type Logger } from "pino";
import pretty from "pino-pretty";

export type { Logger };

export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The active span's ids, or nothing outside a trace. */
function traceFields(): Record<string, string> {
  const sc = trace.getSpan(context.active())?.spanContext();
  return sc && isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}

/** A logger at `level`; `destination` defaults to stderr (pretty on a terminal). */
export function createLogger(level: LogLevel = "info", destination?: DestinationStream): Logger {
  const out = destination ?? (process.stderr.isTTY ? pretty({ destination: 2, colorize: true }) : pino.destination({ fd: 2, sync: true }));
  return pino(
    {
      level,
      base: undefined,
      timestamp: stdTimeFunctions.isoTime,
      // "level":"info" rather than pino's numbers: what people and log queries read.
      formatters: { level: (label) => ({ level: label }) },
      mixin: traceFields,
    },
    out,
  );
}

/** For tests and embedding: drops everything. */
export const silentLogger: Logger = pino({ level: "silent" });

/**
 * Warnings that repeat while something stays wrong (a Redis or a collector away): each key is
 * logged the first time, then at most once every `everyMs`, with `suppressed`, how many of it
 * were left out since its last line. One line per failed retry buried the rest of the log.
 */
export class LimitedWarnings {
  private readonly said = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly everyMs = 60_000,
  ) {}

  /** `key` (default: the message) is what counts as the same warning. */
  warn(fields: Record<string, unknown>, msg: string, key = msg): void {
    const now = Date.now();
    const last = this.said.get(key);
    if (last && now - last.at < this.everyMs) {
      last.suppressed++;
      return;
    }
    this.logger.warn({ ...fields, ...(last?.suppressed && { suppressed: last.suppressed }) }, msg);
    this.said.set(key, { at: now, suppressed: 0 });
  }

  /** Forgets every key, so that the next warning is logged at once; returns how many were left out since their last line. */
  reset(): number {
    const suppressed = [...this.said.values()].reduce((n, s) => n + s.suppressed, 0);
    this.said.clear();
    return suppressed;
  }
}
