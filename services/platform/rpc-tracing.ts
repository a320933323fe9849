import {
  context,
  isSpanContextValid,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
  type TracerProvider,
} from "@opentelemetry/api";
import type { DescMethod } from "@bufbuild/protobuf";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { Code, ConnectError, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { ATTR_ERROR_TYPE, ATTR_SERVER_ADDRESS, ATTR_SERVER_PORT } from "@opentelemetry/semantic-conventions";
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

/** "INVALID_ARGUMENT" for Code.InvalidArgument: gRPC's own spelling. */
export function statusName(code: Code | 0): string {
  return code === 0 ? "OK" : Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function rpcSystem(contentType: string | null): string {
  return contentType?.startsWith("application/grpc") ? "grpc" : "connectrpc";
}

function endSpan(span: Span, err?: unknown): void {
  if (err === undefined) {
    span.setAttribute(ATTR_RPC_STATUS_CODE, "OK");
  } else {
    const ce = ConnectError.from(err);
    const name = statusName(ce.code);
    span.setAttribute(ATTR_RPC_STATUS_CODE, name);
    span.setAttribute(ATTR_ERROR_TYPE, name);
    span.setStatus({ code: SpanStatusCode.ERROR, message: ce.rawMessage });
  }
  span.end();
}

/** Ends the span when a response stream ends, and runs each step of it in the span's context. */
async function* traced<T>(stream: AsyncIterable<T>, span: Span, ctx: Context): AsyncIterable<T> {
  const it = stream[Symbol.asyncIterator]();
  try {
    for (;;) {
      const r = await context.with(ctx, () => it.next());
      if (r.done) break;
      yield r.value;
    }
    endSpan(span);
  } catch (err) {
    endSpan(span, err);
    throw err;
  }
}

/** Runs the call; the span ends with a unary response, or when a response stream ends. */
async function withSpan<R extends UnaryResponse | StreamResponse>(span: Span, ctx: Context, call: () => Promise<R>): Promise<R> {
  try {
    const res = await call();
    if (!res.stream) {
      endSpan(span);
      return res;
    }
    return { ...res, message: traced(res.message, span, ctx) };
  } catch (err) {
    endSpan(span, err);
    throw err;
  }
}

/**
 * One SERVER span per RPC, a child of the caller's W3C traceparent; the handler runs in its
 * context, so background work it starts can link to it.
 */
export function serverTracing(provider: TracerProvider = trace.getTracerProvider()): Interceptor {
  const tracer = provider.getTracer(SCOPE);
  return (next) => async (req) => {
    const { span, ctx } = startServerSpan(tracer, req.method, req.header);
    return withSpan(span, ctx, () => context.with(ctx, () => next(req)));
  };
}

/**
 * The SERVER span of a call refused before any interceptor ran (wire-errors.ts), ended with
 * its error at once; returns its trace id (none without a tracer), for the log line.
 */
export function refusedCallSpan(provider: TracerProvider, method: DescMethod, header: Headers, err: ConnectError): string | undefined {
  const { span } = startServerSpan(provider.getTracer(SCOPE), method, header);
  endSpan(span, err);
  const sc = span.spanContext();
  return isSpanContextValid(sc) ? sc.traceId : undefined;
}

function startServerSpan(tracer: Tracer, desc: DescMethod, header: Headers): { span: Span; ctx: Context } {
  const method = `${desc.parent.typeName}/${desc.name}`;
  const parent = w3c.extract(context.active(), header, getter);
  const span = tracer.startSpan(
    method,
    { kind: SpanKind.SERVER, attributes: { [ATTR_RPC_SYSTEM_NAME]: rpcSystem(header.get("content-type")), [ATTR_RPC_METHOD]: method } },
    parent,
  );
  return { span, ctx: trace.setSpan(parent, span) };
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
    return withSpan(span, ctx, () => next(req));
  };
}
