import type { HandlerContext } from "@connectrpc/connect";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { checkPage, RequestValidator } from "../platform/validate.ts";
import type { JobExecutor } from "./executor.ts";
import { checkJobInputs } from "./inputs.ts";
import { checkJobId } from "./validate.ts";

/**
 * The job RPCs behave the same for every job kind; AlignService and FineTuneService route
 * theirs here after validating their own spec.
 */
export function jobHandlers(deps: SuiteDeps, executor: JobExecutor, kind: JobKind.ALIGN | JobKind.FINE_TUNE) {
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
          ? await executor.create(kind, { case: "align", value: spec as AlignSpec })
          : await executor.create(kind, { case: "fineTune", value: spec as FineTuneSpec });
      return { job };
    },
    get: async (req: { jobId: string }) => ({ job: await executor.get(kind, byId(req)) }),
    cancel: async (req: { jobId: string }) => ({ job: await executor.cancel(kind, byId(req)) }),
    list(req: { pageSize: number; pageToken: string }) {
      const v = new RequestValidator();
      checkPage(v, req.pageSize, req.pageToken);
      v.check();
      return executor.list(kind, req.pageSize, req.pageToken);
    },
    async *watch(req: { jobId: string; afterSequence: number }, ctx: HandlerContext) {
      const v = new RequestValidator();
      checkJobId(v, req.jobId);
      v.number("after_sequence", req.afterSequence, { min: 0, integer: true });
      v.check();
      for await (const event of executor.watch(kind, req.jobId, ctx.signal, req.afterSequence)) yield { event };
    },
  };
}
