/**
 * Telemetry of a training pass: a span per step with the step's numbers as attributes and
 * child spans for each pass of the step (perturbation and update; a defence's probe and
 * harmful-data passes), so an SRE can read the per-step latency of each in a trace; plus
 * histograms of step and pass latency and a counter of trained tokens.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import { context, SpanStatusCode, type Meter, type Span, type Tracer } from "@opentelemetry/api";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import type { StepMetrics } from "../runtime/train/loop.ts";
import type { PhaseName, PhaseRunner } from "../runtime/train/step.ts";

export interface TrainingTelemetry {
  /** A step run here (its passes report through `phase`) or on data-parallel threads (they report their times in the metrics). */
  step: (run: () => StepMetrics | Promise<StepMetrics>) => Promise<StepMetrics>;
  phase: PhaseRunner;
}

/** Attribute and metric names, in one place for the runbook and the tests. */
export const TRAINING = {
  stepSpan: "train.step",
  phaseSpan: {
    perturbation: "train.perturbation",
    update: "train.update",
    probe: "train.probe",
    harmful: "train.harmful",
    harmful_shifted: "train.harmful_shifted",
  } satisfies Record<PhaseName, string>,
  stepDuration: "vaccine.train.step.duration",
  passDuration: "vaccine.train.pass.duration",
  tokens: "vaccine.train.tokens",
} as const;

export function trainingTelemetry(tracer: Tracer, meter: Meter, attrs: { kind: string; method: string; rho: number }): TrainingTelemetry {
  const stepDuration = meter.createHistogram(TRAINING.stepDuration, { unit: "s", description: "Wall time of one training step" });
  const passDuration = meter.createHistogram(TRAINING.passDuration, { unit: "s", description: "Wall time of one pass of a step (perturbation, update, probe, harmful, harmful_shifted)" });
  const tokens = meter.createCounter(TRAINING.tokens, { unit: "{token}", description: "Supervised tokens trained on" });
  const common = { "vaccine.job.kind": attrs.kind, "vaccine.method": attrs.method };
  let phased = false;
  const passSpan = (name: PhaseName, startTime: number, ms: number) => {
    const span = tracer.startSpan(TRAINING.phaseSpan[name], { startTime }, context.active());
    passDuration.record(ms / 1000, { ...common, "vaccine.pass": name });
    span.end(startTime + ms);
  };
  return {
    step: (run) =>
      tracer.startActiveSpan(TRAINING.stepSpan, { attributes: { ...common, "vaccine.rho": attrs.rho } }, async (span) => {
        const started = Date.now();
        phased = false;
        try {
          const m = await run();
          // Passes run on data-parallel threads report only their times (thread 0's): their
          // spans are placed from the step's start.
          if (!phased) for (const p of m.phases ?? []) passSpan(p.name, started + p.startMs, p.ms);
          span.setAttributes({
            "vaccine.step": m.step,
            "vaccine.loss": m.loss,
            "vaccine.grad_norm": m.gradNorm,
            "vaccine.learning_rate": m.learningRate,
            "vaccine.tokens": m.tokens,
            "vaccine.perturbation_norm": m.perturbationNorm,
          });
          // Lisa: which state the step trained in, so a trace shows the alternation.
          const lisa = m.lisa && { "vaccine.lisa.state": m.lisa.state };
          if (m.lisa) span.setAttributes({ ...lisa, "vaccine.lisa.proximal": m.lisa.proximal });
          stepDuration.record(m.stepMs / 1000, { ...common, ...lisa });
          tokens.add(m.tokens, common);
          return m;
        } catch (err) {
          failed(span, err);
          throw err;
        } finally {
          span.end();
        }
      }),
    phase: (name, fn) =>
      tracer.startActiveSpan(TRAINING.phaseSpan[name], (span) => {
        phased = true;
        const t0 = performance.now();
        try {
          return fn();
        } finally {
          passDuration.record((performance.now() - t0) / 1000, { ...common, "vaccine.pass": name });
          span.end();
        }
      }),
  };
}

function failed(span: Span, err: unknown): void {
  span.recordException(err as Error);
  span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
}

/**
 * A job run's span ended by `error`: status ERROR (what span metrics count failed runs by),
 * and an exception event typed by its ErrorInfo reason; the SDK would type it by the
 * ConnectError's numeric code ("9").
 */
export function markRunFailed(span: Span, error: ConnectError): void {
  span.recordException({ name: error.findDetails(ErrorInfoSchema)[0]?.reason ?? Code[error.code], message: error.rawMessage });
  span.setStatus({ code: SpanStatusCode.ERROR, message: error.rawMessage });
}
