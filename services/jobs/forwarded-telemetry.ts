/**
 * Telemetry of a job's worker thread, forwarded to the thread that started it: the worker
 * has no exporter of its own, so its spans and metric recordings become messages that
 * replayed-telemetry.ts turns into real spans (under the job's span) and real recordings.
 * The work function sees an ordinary Tracer and Meter.
 */
import {
  context,
  createNoopMeter,
  SpanKind,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Exception,
  type HrTime,
  type Meter,
  type Span,
  type SpanContext,
  type SpanOptions,
  type SpanStatus,
  type TimeInput,
  type Tracer,
} from "@opentelemetry/api";
import { randomBytes } from "node:crypto";
import type { FromWorker, SpanRecord, SyncInstrument } from "./thread-messages.ts";

type Post = (message: FromWorker) => void;

/** Epoch time as OpenTelemetry's HrTime; the same clock in every thread. */
export function hrNow(): HrTime {
  return toHrTime(performance.timeOrigin + performance.now());
}

function toHrTime(ms: number): HrTime {
  const seconds = Math.floor(ms / 1000);
  return [seconds, Math.round((ms - seconds * 1000) * 1e6)];
}

function timeOf(t: TimeInput | undefined): HrTime {
  if (t === undefined) return hrNow();
  if (Array.isArray(t)) return t as HrTime;
  if (t instanceof Date) return toHrTime(t.getTime());
  // OpenTelemetry's convention: a number below the time origin is a performance.now() reading.
  return toHrTime(t < performance.timeOrigin ? performance.timeOrigin + t : t);
}

class ForwardedSpan implements Span {
  private ended = false;
  constructor(
    readonly record: SpanRecord,
    private readonly ctx: SpanContext,
    private readonly post: Post,
  ) {}

  spanContext(): SpanContext {
    return this.ctx;
  }
  setAttribute(key: string, value: unknown): this {
    if (!this.ended && value !== undefined) this.record.attributes[key] = value;
    return this;
  }
  setAttributes(attributes: Attributes): this {
    for (const [k, v] of Object.entries(attributes)) this.setAttribute(k, v);
    return this;
  }
  addEvent(name: string, attributesOrTime?: Attributes | TimeInput, time?: TimeInput): this {
    const timeGiven = Array.isArray(attributesOrTime) || typeof attributesOrTime === "number" || attributesOrTime instanceof Date;
    if (!this.ended) {
      this.record.events.push({
        name,
        time: timeOf(timeGiven ? (attributesOrTime as TimeInput) : time),
        attributes: timeGiven ? undefined : (attributesOrTime as Attributes | undefined),
      });
    }
    return this;
  }
  // Links are not forwarded: per-step spans have none.
  addLink(): this {
    return this;
  }
  addLinks(): this {
    return this;
  }
  setStatus(status: SpanStatus): this {
    if (!this.ended) this.record.status = status;
    return this;
  }
  updateName(name: string): this {
    if (!this.ended) this.record.name = name;
    return this;
  }
  end(endTime?: TimeInput): void {
    if (this.ended) return;
    this.ended = true;
    this.record.end = timeOf(endTime);
    this.post({ t: "span", span: this.record });
  }
  isRecording(): boolean {
    return !this.ended;
  }
  recordException(exception: Exception, time?: TimeInput): void {
    const e = typeof exception === "string" ? { message: exception } : exception;
    this.addEvent(
      "exception",
      { "exception.type": (e as Error).name ?? "Error", "exception.message": e.message ?? "", "exception.stacktrace": (e as Error).stack ?? "" },
      time,
    );
  }
}

/** A Tracer whose spans are sent to the starting thread when they end. */
export function forwardingTracer(post: Post): Tracer {
  let next = 1;
  // One trace id for the worker's own span contexts; the replay gives them the job's.
  const traceId = randomBytes(16).toString("hex");
  const startSpan = (name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span => {
    const parent = options.root ? undefined : trace.getSpan(ctx);
    const record: SpanRecord = {
      id: next++,
      parentId: parent instanceof ForwardedSpan ? parent.record.id : undefined,
      name,
      kind: options.kind ?? SpanKind.INTERNAL,
      start: timeOf(options.startTime),
      end: [0, 0],
      attributes: { ...options.attributes },
      events: [],
    };
    const spanContext = { traceId, spanId: randomBytes(8).toString("hex"), traceFlags: TraceFlags.SAMPLED };
    return new ForwardedSpan(record, spanContext, post);
  };
  function startActiveSpan<F extends (span: Span) => unknown>(name: string, ...args: unknown[]): ReturnType<F> {
    const fn = args.pop() as F;
    const [options, ctx] = args as [SpanOptions | undefined, Context | undefined];
    const parentCtx = ctx ?? context.active();
    const span = startSpan(name, options, parentCtx);
    return context.with(trace.setSpan(parentCtx, span), fn as (span: Span) => ReturnType<F>, undefined, span);
  }
  return { startSpan, startActiveSpan } as Tracer;
}

const METHOD: Record<SyncInstrument, "record" | "add"> = { histogram: "record", counter: "add", upDownCounter: "add", gauge: "record" };
const FACTORY: Record<SyncInstrument, keyof Meter> = {
  histogram: "createHistogram",
  counter: "createCounter",
  upDownCounter: "createUpDownCounter",
  gauge: "createGauge",
};

/** A Meter whose synchronous instruments send each recording to the starting thread; observable ones do nothing. */
export function forwardingMeter(post: Post): Meter {
  const meter = Object.create(createNoopMeter()) as Meter;
  for (const instrument of Object.keys(METHOD) as SyncInstrument[]) {
    Object.defineProperty(meter, FACTORY[instrument], {
      value: (name: string, options?: Record<string, unknown>) => ({
        [METHOD[instrument]]: (value: number, attributes?: Record<string, unknown>) =>
          post({ t: "metric", instrument, name, options: options && { ...options }, value, attributes: attributes && { ...attributes } }),
      }),
    });
  }
  return meter;
}
