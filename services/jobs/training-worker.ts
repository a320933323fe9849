/**
 * Entry of a job's worker thread (started by threaded-work.ts): its own tfjs backend and
 * checkpoint store, then the stage's training work with a JobContext whose every call
 * is a message to the starting thread. A backend that aborts poisons only this thread.
 */
import { parentPort, workerData } from "node:worker_threads";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { JobSchema } from "../../gen/vaccine/v1/jobs_pb.ts";
import { StatusSchema } from "../../gen/google/rpc/status_pb.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { toStatus } from "../platform/errors.ts";
import { selectBackend } from "../runtime/backend.ts";
import { createStore } from "../runtime/store/create-store.ts";
import { lowerThreadPriority } from "../runtime/thread-priority.ts";
import { isBackendAbort } from "./backend-abort.ts";
import type { JobContext, StopReason } from "./executor.ts";
import { forwardingMeter, forwardingTracer } from "./forwarded-telemetry.ts";
import type { FromWorker, ToWorker, TrainingWorkerData } from "./thread-messages.ts";
import { trainingWork } from "./work.ts";

const port = parentPort!;
const data = workerData as TrainingWorkerData;
const post = (message: FromWorker) => port.postMessage(message);
const stop = new AbortController();
port.on("message", (m: ToWorker) => {
  if (m.t === "stop" && !stop.signal.aborted) stop.abort(m.reason satisfies StopReason);
});

// Per-step spans nest through the active context, as on the serving thread.
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
lowerThreadPriority();

async function main(): Promise<void> {
  try {
    await selectBackend(data.backend, () => {});
    const store = createStore(data.store);
    const ctx: JobContext = {
      job: fromBinary(JobSchema, data.job),
      signal: stop.signal,
      tracer: forwardingTracer(post),
      emit: (event) => post({ t: "emit", event }),
      progress: (progress) => post({ t: "progress", progress }),
      setTrainingState: (ref) => post({ t: "trainingState", ref: { uri: ref.uri, digest: ref.digest } }),
    };
    const outcome = await trainingWork(store, forwardingMeter(post), data.stage, data.storedBytesQuota)(ctx);
    post({ t: "done", outcome });
  } catch (err) {
    post({
      t: "failed",
      status: toBinary(StatusSchema, toStatus(toRpcError(err))),
      aborted: isBackendAbort(err),
      message: err instanceof Error ? err.message : String(err),
    });
  }
  // The starting thread terminates this thread once it has the outcome.
}

void main();
