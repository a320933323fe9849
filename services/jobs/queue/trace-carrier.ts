/**
 * The W3C trace context of the api's enqueue span, carried in the queued job's data so the
 * worker's job span continues the same trace (api -> queue -> worker). An explicit
 * propagator: it works whether or not a global one was registered.
 */
import { context, defaultTextMapGetter, defaultTextMapSetter, ROOT_CONTEXT, type Context } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";

const propagator = new W3CTraceContextPropagator();

export type TraceCarrier = Record<string, string>;

export function injectTrace(ctx: Context = context.active()): TraceCarrier {
  const carrier: TraceCarrier = {};
  propagator.inject(ctx, carrier, defaultTextMapSetter);
  return carrier;
}

export function extractTrace(carrier: TraceCarrier | undefined): Context {
  return propagator.extract(ROOT_CONTEXT, carrier ?? {}, defaultTextMapGetter);
}
