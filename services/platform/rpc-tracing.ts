import {
  context,
  isSpanContextValid,
  metrics,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Histogram,
  type MeterProvider,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
  type TracerProvider,
} from "@opentelemetry/api";
import type { DescMethod } from "@bufbuild/protobuf";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { Code, ConnectError, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { ATTR_ERROR_TYPE, ATTR_SERVER_ADDRESS, ATTR_SERVER_PORT, METRIC_RPC_SERVER_CALL_DURATION } from "@opentelemetry/semantic-conventions";
import { ATTR_RPC_METHOD, ATTR_RPC_SYSTEM_NAME } from "@opentelemetry/semantic-conventions/incubating";
import { SCOPE } from "./telemetry.ts";

/** rpc.status_code: the status name, e.g. "INVALID_ARGUMENT" (current RPC semantic conventions). */
export const ATTR_RPC_STATUS_CODE = "rpc.status_code";

// The W3C propagator explicitly, so propagation works whether or not a global one is installed.
const w3c = new W3CTraceContextPropagator();
const getter: TextMapGetter<Headers> = {
  keys: (h) => [...h.keys()],
  get: (h, key) => h.get(key) ?? undefined,
};
const setter: TextMapSetter<Headers> = { set: (h, key, value) => h.set(key, value) };

/** "INVALID_ARGUMENT" for Code.InvalidArgument: gRPC's own spelling (connect's Canceled is gRPC's CANCELLED). */
export function statusName(code: Code | 0): string {
  if (code === 0) return "OK";
  return code === Code.Canceled ? "CANCELLED" : Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function rpcSystem(contentType: string | null): string {
  return contentType?.startsWith("application/grpc") ? "grpc" : "connectrpc";
}

/** Ends the span with the call's outcome; returns the outcome's attributes (status name, and error type on errors). */
function endSpan(span: Span, err?: unknown): Record<string, string> {
  const outcome: Record<string, string> = { [ATTR_RPC_STATUS_CODE]: "OK" };
  if (err !== undefined) {
    const ce = ConnectError.from(err);
    outcome[ATTR_RPC_STATUS_CODE] = outcome[ATTR_ERROR_TYPE] = statusName(ce.code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: ce.rawMessage });
  }
  span.setAttributes(outcome);
  span.end();
  return outcome;
}

/** Calls `end` when a response stream ends, and runs each step of it in the span's context. */
async function* traced<T>(stream: AsyncIterable<T>, ctx: Context, end: (err?: unknown) => void): AsyncIterable<T> {
  const it = stream[Symbol.asyncIterator]();
  try {
    for (;;) {
      const r = await context.with(ctx, () => it.next());
      if (r.done) break;
      yield r.value;
    }
    end();
  } catch (err) {
    end(err);
    throw err;
  }
}

/** Runs the call; `end` is called with a unary response, or when a response stream ends. */
async function withSpan<R extends UnaryResponse | StreamResponse>(ctx: Context, end: (err?: unknown) => void, call: () => Promise<R>): Promise<R> {
  try {
    const res = await call();
    if (!res.stream) {
      end();
      return res;
    }
    return { ...res, message: traced(res.message, ctx, end) };
  } catch (err) {
    end(err);
    throw err;
  }
}


/**
 * One SERVER span per RPC, a child of the caller's W3C traceparent, and its duration in
 * rpc.server.call.duration by method and status (the span's own attributes): `interceptor`
 * for calls that reach the interceptors (the handler runs in the span's context, so background
 * work it starts can link to it), `refused` for calls refused before them (wire-errors.ts).
 */
export function serverTelemetry(tracerProvider: TracerProvider = trace.getTracerProvider(), meterProvider: MeterProvider = metrics.getMeterProvider()) {
  const tracer = tracerProvider.getTracer(SCOPE);
  const duration = meterProvider.getMeter(SCOPE).createHistogram(METRIC_RPC_SERVER_CALL_DURATION, {
    unit: "s",
    // Buckets: telemetry.ts's seconds, as every histogram's (a Watch lasts minutes, past the conventions' 10 s).
    description: "Duration of RPCs served, until the last message of a stream",
  });
  const interceptor: Interceptor = (next) => async (req) => {
    const call = startServerCall(tracer, duration, req.method, req.header);
    return withSpan(call.ctx, call.end, () => context.with(call.ctx, () => next(req)));
  };
  /** Records a refused call, ended with its error at once; returns its trace id (none without a tracer), for the log line. */
  const refused = (method: DescMethod, header: Headers, err: ConnectError): string | undefined => {
    const call = startServerCall(tracer, duration, method, header);
    call.end(err);
    const sc = call.span.spanContext();
    return isSpanContextValid(sc) ? sc.traceId : undefined;
  };
  return { interceptor, refused };
}

function startServerCall(tracer: Tracer, duration: Histogram, desc: DescMethod, header: Headers) {
  const method = `${desc.parent.typeName}/${desc.name}`;
  const attributes = { [ATTR_RPC_SYSTEM_NAME]: rpcSystem(header.get("content-type")), [ATTR_RPC_METHOD]: method };
  const parent = w3c.extract(context.active(), header, getter);
  const span = tracer.startSpan(method, { kind: SpanKind.SERVER, attributes }, parent);
  const start = performance.now();
  const end = (err?: unknown) => duration.record((performance.now() - start) / 1000, { ...attributes, ...endSpan(span, err) });
  return { span, ctx: trace.setSpan(parent, span), end };
}

/** One CLIENT span per RPC, with the traceparent header injected for the server. */
export function clientTracing(provider: TracerProvider = trace.getTracerProvider()): Interceptor {
  const tracer = provider.getTracer(SCOPE);
  return (next) => async (req) => {
    const method = `${req.service.typeName}/${req.method.name}`;
    const url = new URL(req.url);
    const span = tracer.startSpan(method, {
      kind: SpanKind.CLIENT,
      attributes: {
        [ATTR_RPC_SYSTEM_NAME]: rpcSystem(req.header.get("content-type")),
        [ATTR_RPC_METHOD]: method,
        [ATTR_SERVER_ADDRESS]: url.hostname,
        [ATTR_SERVER_PORT]: Number(url.port),
      },
    });
    const ctx = trace.setSpan(context.active(), span);
    w3c.inject(ctx, req.header, setter);
    // Keeps any other propagated fields (baggage) a global propagator carries.
    propagation.inject(ctx, req.header, setter);
    return withSpan(ctx, (err) => endSpan(span, err), () => next(req));
  };
}
