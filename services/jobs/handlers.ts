import type { HandlerContext } from "@connectrpc/connect";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { scopeOf, visibleTenant } from "../common/ownership.ts";
import { checkStoredBytesQuota } from "../common/quotas.ts";
import { principalOf } from "../platform/principal.ts";
import { checkPage, RequestValidator } from "../platform/validate.ts";
import type { JobExecutor } from "./executor.ts";
import { checkJobInputs } from "./inputs.ts";
import { JOB_ID, jobNotFound } from "./new-job.ts";
import { checkJobId } from "./validate.ts";

/**
 * The job RPCs behave the same for every job kind; AlignService and FineTuneService route
 * theirs here after validating their own spec. With tenancy (docs/security.md) each call
 * sees only its tenant's jobs (an admin: all), and Create records the caller's tenant.
 */
export function jobHandlers(deps: SuiteDeps, executor: JobExecutor, kind: JobKind.ALIGN | JobKind.FINE_TUNE) {
  const stage = kind === JobKind.ALIGN ? "align" : "finetune";
  const byId = (req: { jobId: string }, more?: (v: RequestValidator) => void) => {
    const v = new RequestValidator();
    checkJobId(v, req.jobId);
    more?.(v);
    v.check();
    // An id this server never gives names no job; refused here, it never becomes a store or
    // Redis key (the queue's keys are built from it: "<id>:events" would name a stream).
    if (!JOB_ID.test(req.jobId)) throw jobNotFound(req.jobId);
    return req.jobId;
  };
  const tenantOf = (ctx: HandlerContext) => visibleTenant(scopeOf(principalOf(ctx)));
  return {
    async create(spec: AlignSpec | FineTuneSpec, ctx: HandlerContext) {
      const scope = scopeOf(principalOf(ctx));
      await checkJobInputs(deps, stage, spec, scope, ctx.signal);
      if (scope) await checkStoredBytesQuota(deps, scope.tenant);
      const tenant = scope?.tenant ?? "";
      // The job quota is the executor's to check, atomically with the creation.
      const maxActive = scope ? (deps.quotas?.jobs ?? 0) : 0;
      const job =
        kind === JobKind.ALIGN
          ? await executor.create(kind, { case: "align", value: spec as AlignSpec }, tenant, maxActive)
          : await executor.create(kind, { case: "fineTune", value: spec as FineTuneSpec }, tenant, maxActive);
      return { job };
    },
    get: async (req: { jobId: string }, ctx: HandlerContext) => ({ job: await executor.get(kind, byId(req), tenantOf(ctx)) }),
    cancel: async (req: { jobId: string }, ctx: HandlerContext) => ({ job: await executor.cancel(kind, byId(req), tenantOf(ctx)) }),
    list(req: { pageSize: number; pageToken: string }, ctx: HandlerContext) {
      const v = new RequestValidator();
      checkPage(v, req.pageSize, req.pageToken);
      v.check();
      return executor.list(kind, req.pageSize, req.pageToken, tenantOf(ctx));
    },
    async *watch(req: { jobId: string; afterSequence: number }, ctx: HandlerContext) {
      const id = byId(req, (v) => v.number("after_sequence", req.afterSequence, { min: 0, integer: true }));
      for await (const event of executor.watch(kind, id, ctx.signal, req.afterSequence, tenantOf(ctx))) yield { event };
    },
  };
}
