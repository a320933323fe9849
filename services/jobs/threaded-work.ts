/**
 * Training off the serving event loop: a JobWork that runs each job in its own worker
 * thread (training-worker.ts) with its own tfjs runtime and store, so Embed and Score stay
 * responsive while a job trains, and a backend that aborts takes down only that thread.
 * Every JobContext call of the worker arrives here as a message; its per-step spans and
 * metrics are replayed under the job's span. Executors use it like any JobWork.
 */
import type { ResourceLimits } from "node:worker_threads";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { context, type Meter } from "@opentelemetry/api";
import { StatusSchema } from "../../gen/google/rpc/status_pb.ts";
import { JobSchema } from "../../gen/vaccine/v1/jobs_pb.ts";
import { fromStatus } from "../platform/errors.ts";
import { activeBackend } from "../runtime/backend.ts";
import { startWorker } from "../runtime/start-worker.ts";
import type { StoreConfig } from "../runtime/store/create-store.ts";
import { backendAbortedError, isBackendAbort } from "./backend-abort.ts";
import type { JobWork } from "./executor.ts";
import { metricReplay, SpanReplay } from "./replayed-telemetry.ts";
import type { Stage } from "./spec.ts";
import type { FromWorker, ToWorker, TrainingWorkerData } from "./thread-messages.ts";

export interface ThreadedWorkOptions {
  /** The checkpoint store the worker builds for itself: the same one this process uses. */
  store: StoreConfig;
  /** Where the worker's metric recordings go. */
  meter: Meter;
  /** tfjs backend of the worker; default: this thread's, else VACCINE_BACKEND, else auto. */
  backend?: string;
  /** V8 heap limits of the worker (wasm memory lies outside them). */
  resourceLimits?: ResourceLimits;
  /** The per-tenant byte quota (VACCINE_QUOTA_STORED_BYTES; 0 or unset: none), read as each job starts. */
  storedBytesQuota?: () => number;
}

/** The work function of a stage, each job in a fresh worker thread. */
export function threadedWork(stage: Stage, options: ThreadedWorkOptions): JobWork {
  return (ctx) =>
    new Promise((resolve, reject) => {
      const spans = new SpanReplay(ctx.tracer, context.active());
      const metric = metricReplay(options.meter);
      const data: TrainingWorkerData = {
        stage,
        job: toBinary(JobSchema, ctx.job),
        store: options.store,
        backend: options.backend ?? activeBackend() ?? process.env.VACCINE_BACKEND ?? "auto",
        storedBytesQuota: options.storedBytesQuota?.() ?? 0,
      };
      const worker = startWorker(import.meta.url, "./training-worker", { workerData: data, resourceLimits: options.resourceLimits });
      let settled = false;
      const onStop = () => worker.postMessage({ t: "stop", reason: ctx.signal.reason } satisfies ToWorker);
      const settle = (finish: () => void) => {
        if (settled) return;
        settled = true;
        ctx.signal.removeEventListener("abort", onStop);
        // Discarded after every job: an aborted backend must not serve another one.
        void worker.terminate();
        finish();
      };
      if (ctx.signal.aborted) onStop();
      else ctx.signal.addEventListener("abort", onStop, { once: true });

      worker.on("message", (m: FromWorker) => {
        if (settled) return;
        switch (m.t) {
          case "emit":
            return ctx.emit(m.event);
          case "progress":
            return ctx.progress(m.progress);
          case "trainingState":
            return ctx.setTrainingState(m.ref);
          case "span":
            return spans.add(m.span);
          case "metric":
            return metric(m);
          case "done":
            return settle(() => resolve(m.outcome));
          case "failed":
            return settle(() => reject(m.aborted ? backendAbortedError(ctx.job, stage, m.message) : fromStatus(fromBinary(StatusSchema, m.status))));
        }
      });
      // An uncaught error or an exit before the outcome: the thread (or its backend) died.
      worker.on("error", (err) => settle(() => reject(isBackendAbort(err) ? backendAbortedError(ctx.job, stage, err.message) : err)));
      worker.on("exit", (code) => settle(() => reject(backendAbortedError(ctx.job, stage, `the training worker exited with code ${code}`))));
    });
}

