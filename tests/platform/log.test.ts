// The pino logger: JSON lines with level names, levels filtered, and the active trace's ids;
// a warning that repeats logged at most once an interval, with how many were left out.
import { context, trace, TraceFlags } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createLogger, LimitedWarnings } from "../../services/platform/log.ts";

const manager = new AsyncLocalStorageContextManager();
beforeAll(() => context.setGlobalContextManager(manager.enable()));
afterAll(() => {
  manager.disable();
  context.disable();
});

function capture(level: "debug" | "info" | "warn" | "error" = "info") {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger(level, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

describe("createLogger", () => {
  it("writes one JSON object per record with an ISO time, the level name, the message and the fields", () => {
    const { logger, lines } = capture();
    logger.info({ job: "align-1", steps: 3 }, "started");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: "info", msg: "started", job: "align-1", steps: 3 });
    expect(new Date(lines[0].time as string).toISOString()).toBe(lines[0].time);
    expect(lines[0]).not.toHaveProperty("trace_id");
  });

  it("drops records below its level", () => {
    const { logger, lines } = capture("warn");
    logger.debug("d");
    logger.info("i");
    logger.warn("w");
    logger.error("e");
    expect(lines.map((l) => l.level)).toEqual(["warn", "error"]);
  });

  it("puts the active span's trace_id and span_id in every line written inside it", async () => {
    const { logger, lines } = capture();
    const span = trace.wrapSpanContext({ traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331", traceFlags: TraceFlags.SAMPLED });
    await context.with(trace.setSpan(context.active(), span), async () => {
      await new Promise((r) => setTimeout(r, 1));
      logger.info("inside");
    });
    logger.info("outside");
    expect(lines[0]).toMatchObject({ msg: "inside", trace_id: "0af7651916cd43dd8448eb211c80319c", span_id: "b7ad6b7169203331" });
    expect(lines[1]).not.toHaveProperty("trace_id");
  });
});

describe("LimitedWarnings", () => {
  it("logs a warning the first time, then at most once an interval with the count left out, each key on its own", () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    try {
      const { logger, lines } = capture();
      const warnings = new LimitedWarnings(logger, 1000);
      const down = (error: string) => warnings.warn({ error }, "down", `down ${error}`);
      for (let i = 0; i < 5; i++) {
        down("refused");
        vi.advanceTimersByTime(300);
      }
      down("reset");
      warnings.warn({}, "other");
      expect(lines.map((l) => [l.msg, l.error, l.suppressed])).toEqual([
        ["down", "refused", undefined],
        // 1.2 s after the first: the three between were left out.
        ["down", "refused", 3],
        ["down", "reset", undefined],
        ["other", undefined, undefined],
      ]);
      expect(lines.every((l) => l.level === "warn")).toBe(true);
      // Once the trouble is over: how many were left out, and the next is logged at once.
      down("refused");
      expect(warnings.reset()).toBe(1);
      down("refused");
      expect(lines.at(-1)).toMatchObject({ msg: "down", error: "refused" });
      expect(lines).toHaveLength(5);
    } finally {
      vi.useRealTimers();
    }
  });
});
