import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { scopeOf, visibleTenant } from "../common/ownership.ts";
import { checkStoredBytesQuota } from "../common/quotas.ts";
import { rpcError } from "../platform/errors.ts";
import { principalOf } from "../platform/principal.ts";
import { checkPage, RequestValidator } from "../platform/validate.ts";
import type { JobExecutor, JobSpec } from "./executor.ts";
import { checkJobInputs } from "./inputs.ts";
import { JOB_ID, jobIdFor, jobNotFound, sameRequest } from "./new-job.ts";
import { checkJobId } from "./validate.ts";

/** A Create's request_id (align.proto): short, and safe in logs and ids. */
const MAX_REQUEST_ID = 64;
const REQUEST_ID = /^[A-Za-z0-9._~-]+$/;

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
    /** `checkSpec` validates the spec into the validator it is given, then checks it (throws). */
    async create(spec: AlignSpec | FineTuneSpec | undefined, requestId: string, ctx: HandlerContext, checkSpec: (v: RequestValidator) => void) {
      if (requestId.length > MAX_REQUEST_ID || (requestId !== "" && !REQUEST_ID.test(requestId))) {
        // Named with whatever else the request gets wrong, in one answer.
        checkSpec(new RequestValidator().fail("request_id", `must be 1 to ${MAX_REQUEST_ID} characters of [A-Za-z0-9._~-]`));
      }
      const scope = scopeOf(principalOf(ctx));
      const tenant = scope?.tenant ?? "";
      const jobSpec: JobSpec = kind === JobKind.ALIGN ? { case: "align", value: spec as AlignSpec } : { case: "fineTune", value: spec as FineTuneSpec };
      // A retry gets its job before anything is checked again, its spec included: its inputs
      // may have changed since (a dataset deleted after the job read it), its tenant reached a
      // quota, or a bound been lowered (VACCINE_MAX_STEPS).
      if (requestId && spec) {
        const prior = await executor.get(kind, jobIdFor(kind, tenant, requestId), tenant).catch((err: unknown) => {
          if (ConnectError.from(err).code !== Code.NotFound) throw err;
        });
        if (prior) return { job: sameRequest(prior, jobSpec) };
      }
      checkSpec(new RequestValidator());
      await checkJobInputs(deps, stage, spec!, scope, ctx.signal);
      if (scope) await checkStoredBytesQuota(deps, scope.tenant);
      // The job quota is the executor's to check, atomically with the creation.
      const maxActive = scope ? (deps.quotas?.jobs ?? 0) : 0;
      return { job: await executor.create(kind, jobSpec, tenant, maxActive, requestId) };
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
      if (req.afterSequence > 0) {
        // Events only ever add up: a sequence at or under the last one now stays valid.
        const { lastSequence } = await executor.get(kind, id, tenantOf(ctx));
        if (req.afterSequence > lastSequence) {
          throw rpcError(Code.OutOfRange, "SEQUENCE_AHEAD", `after_sequence ${req.afterSequence} is past the job's last event (${lastSequence}): resume from the last event this client received`, {
            field: "after_sequence",
            last_sequence: String(lastSequence),
          });
        }
      }
      for await (const event of executor.watch(kind, id, ctx.signal, req.afterSequence, tenantOf(ctx))) yield { event };
    },
  };
}
