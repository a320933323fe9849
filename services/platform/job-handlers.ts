import type { HandlerContext } from "@connectrpc/connect";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import type { JobExecutor } from "./jobs/executor.ts";
import { checkJobInputs } from "./training-jobs.ts";
import type { SuiteDeps } from "./deps.ts";
import { RequestValidator } from "./validate.ts";
import { checkJobId, checkPage } from "./validate-training.ts";

/**
 * The job RPCs behave the same for every job kind; AlignService and FineTuneService route
 * theirs here after validating their own spec.
 */
export function jobHandlers(deps: SuiteDeps, kind: JobKind.ALIGN | JobKind.FINE_TUNE) {
  const executor: JobExecutor = deps.executor ?? missingExecutor();
  const stage = kind === JobKind.ALIGN ? "align" : "finetune";
  const byId = (req: { jobId: string }) => {
    const v = new RequestValidator();
    checkJobId(v, req.jobId);
    v.check();
    return req.jobId;
  };
  return {
    async create(spec: AlignSpec | FineTuneSpec) {
      await checkJobInputs(deps, stage, spec);
      const job =
        kind === JobKind.ALIGN
          ? executor.create(kind, { case: "align", value: spec as AlignSpec })
          : executor.create(kind, { case: "fineTune", value: spec as FineTuneSpec });
      return { job };
    },
    get: (req: { jobId: string }) => ({ job: executor.get(kind, byId(req)) }),
    cancel: (req: { jobId: string }) => ({ job: executor.cancel(kind, byId(req)) }),
    list(req: { pageSize: number; pageToken: string }) {
      const v = new RequestValidator();
      checkPage(v, req.pageSize, req.pageToken);
      v.check();
      return executor.list(kind, req.pageSize, req.pageToken);
    },
    async *watch(req: { jobId: string }, ctx: HandlerContext) {
      for await (const event of executor.watch(kind, byId(req), ctx.signal)) yield { event };
    },
  };
}

function missingExecutor(): never {
  throw new Error("job services need an executor: include align or finetune in the process's services");
}
