/**
 * The other end of forwarded-telemetry.ts: a worker's finished spans become spans of this
 * thread's tracer, with the worker's start and end times, under the job's span; its metric
 * recordings go to this thread's meter. A span arrives after its children (it ends last),
 * so children wait until their parent arrives and the whole subtree is replayed at once.
 */
import { trace, type Attributes, type Context, type Meter, type Tracer } from "@opentelemetry/api";
import type { FromWorker, SpanRecord, SyncInstrument } from "./thread-messages.ts";

export class SpanReplay {
  private readonly waiting = new Map<number, SpanRecord[]>();

  /** parent: the context whose span (the job's) becomes the parent of the worker's top spans. */
  constructor(
    private readonly tracer: Tracer,
    private readonly parent: Context,
  ) {}

  add(record: SpanRecord): void {
    if (record.parentId === undefined) return this.replay(record, this.parent);
    const siblings = this.waiting.get(record.parentId) ?? [];
    siblings.push(record);
    this.waiting.set(record.parentId, siblings);
  }

  private replay(record: SpanRecord, parent: Context): void {
    const span = this.tracer.startSpan(record.name, { kind: record.kind, startTime: record.start, attributes: record.attributes as Attributes }, parent);
    const children = this.waiting.get(record.id) ?? [];
    this.waiting.delete(record.id);
    // Children end before their parent, in the order they ended in the worker.
    for (const child of children) this.replay(child, trace.setSpan(parent, span));
    for (const e of record.events) span.addEvent(e.name, e.attributes as Attributes | undefined, e.time);
    if (record.status) span.setStatus(record.status);
    span.end(record.end);
  }
}

type Recorder = { record?: (v: number, a?: Attributes) => void; add?: (v: number, a?: Attributes) => void };

/** Creates each instrument once on this thread's meter and applies the worker's recordings. */
export function metricReplay(meter: Meter): (m: Extract<FromWorker, { t: "metric" }>) => void {
  const instruments = new Map<string, Recorder>();
  const create: Record<SyncInstrument, (name: string, options?: object) => Recorder> = {
    histogram: (n, o) => meter.createHistogram(n, o),
    counter: (n, o) => meter.createCounter(n, o),
    upDownCounter: (n, o) => meter.createUpDownCounter(n, o),
    gauge: (n, o) => meter.createGauge(n, o),
  };
  return (m) => {
    const key = `${m.instrument}:${m.name}`;
    let instrument = instruments.get(key);
    if (!instrument) instruments.set(key, (instrument = create[m.instrument](m.name, m.options)));
    const attributes = m.attributes as Attributes | undefined;
    if (instrument.record) instrument.record(m.value, attributes);
    else instrument.add!(m.value, attributes);
  };
}
