/** align, finetune and jobs: create training jobs, then list, get, cancel and watch them. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.ts";
import type { AlignSpecSchema } from "../../../gen/vaccine/v1/training_pb.ts";
import { CheckpointKind, JobEventSchema, JobSchema, JobState, LogSeverity, type Job, type JobEvent } from "../../../gen/vaccine/v1/jobs_pb.ts";
import type { Clients } from "../../client/clients.ts";
import { fromStatus } from "../../platform/errors.ts";
import { NotServedReason } from "../../platform/not-served.ts";
import type { Command, CommandGroup, Context } from "../command.ts";
import { codeName, describeError, UsageError } from "../errors.ts";
import { choice, float, int, ref, text, toggle } from "../flags.ts";
import { describeJob, duration, formatRef, interactive, jobTable, jsonOf, KIND_NAMES, nextPage, num, stateName, writeLine } from "../output.ts";
import { createProgress, type Progress } from "../progress-bar.ts";
import { resumedWatch } from "../resumed-watch.ts";
import { ALIGN_METHOD_FLAGS, alignMethodOneof, DATASET_FLAGS, datasetRef, GUARD_FLAGS, guardOneof, LORA_FLAGS, loraConfig, MODERATION_MODEL, TRAINING_FLAGS, trainingConfig } from "../spec-flags.ts";

type Kind = keyof typeof KIND_NAMES;

/** The job RPCs of either service, called the same way. */
interface JobApi {
  get(jobId: string): Promise<{ job?: Job }>;
  cancel(jobId: string): Promise<{ job?: Job }>;
  list(pageSize: number, pageToken: string): Promise<{ jobs: Job[]; nextPageToken: string }>;
  watch(jobId: string, afterSequence: number): AsyncIterable<{ event?: JobEvent }>;
}

function jobApi(clients: Clients, kind: Kind): JobApi {
  if (kind === "align") {
    const c = clients.align;
    return {
      get: (jobId) => c.getAlignJob({ jobId }),
      cancel: (jobId) => c.cancelAlignJob({ jobId }),
      list: (pageSize, pageToken) => c.listAlignJobs({ pageSize, pageToken }),
      watch: (jobId, afterSequence) => c.watchAlignJob({ jobId, afterSequence }),
    };
  }
  const c = clients.fineTune;
  return {
    get: (jobId) => c.getFineTuneJob({ jobId }),
    cancel: (jobId) => c.cancelFineTuneJob({ jobId }),
    list: (pageSize, pageToken) => c.listFineTuneJobs({ pageSize, pageToken }),
    watch: (jobId, afterSequence) => c.watchFineTuneJob({ jobId, afterSequence }),
  };
}

// The {job}, {event} and {jobs, nextPageToken} responses of both services have the same proto
// JSON, so one writer serves both.
const jobJson = (job: Job | undefined) => (job ? { job: jsonOf(JobSchema, job) } : {});
const pageJson = (page: { jobs: Job[]; nextPageToken: string }) => ({
  jobs: page.jobs.map((j) => jsonOf(JobSchema, j)),
  ...(page.nextPageToken ? { nextPageToken: page.nextPageToken } : {}),
});

const WATCH = toggle("watch", "Follow the job until it ends (exit 1 unless it SUCCEEDED); a stream the server cuts is resumed.");

// Recent steps weigh more in the ETA, so it follows speed changes (e.g. the tau refresh).
const EMA = 0.3;

/** Feeds a job's events to a progress display; `perturbation` adds Vaccine's norm. */
export function jobProgress(progress: Progress, options: { perturbation: boolean }): (event: JobEvent) => void {
  let stepSeconds: number | undefined;
  return (event) => {
    const e = event.event;
    switch (e.case) {
      case "step": {
        const s = e.value;
        stepSeconds = stepSeconds === undefined ? s.stepSeconds : EMA * s.stepSeconds + (1 - EMA) * stepSeconds;
        const fields = [`loss ${num(s.loss)}`];
        if (options.perturbation) fields.push(`perturbation ${num(s.perturbationNorm)}`);
        fields.push(`ETA ${duration(stepSeconds * (s.totalSteps - s.step))}`);
        progress.update({ label: "step", done: s.step, total: s.totalSteps, fields });
        break;
      }
      case "stateChange": {
        const why = e.value.error ? ` (${codeName(e.value.error.code)}: ${e.value.error.message})` : "";
        progress.note(`state ${stateName(e.value.to)}${why}`);
        break;
      }
      case "checkpointWritten": {
        const what = e.value.kind === CheckpointKind.RESULT ? "result" : "training state";
        progress.note(`${what} at step ${e.value.step}: ${formatRef(e.value.checkpoint)}`);
        break;
      }
      case "log":
        progress.note(`log ${(LogSeverity[e.value.severity] ?? "").toLowerCase()}: ${e.value.message}`);
        break;
    }
  };
}

/** Prints a created job, and follows it with --watch. */
async function created(ctx: Context, kind: Kind, job: Job): Promise<number> {
  const follow = ctx.flags.has(WATCH);
  if (ctx.json) writeLine(ctx.stdout, jobJson(job));
  // When following, the final summary comes at the end; the id first, to find the job again.
  else if (follow) ctx.stdout.write(`job ${job.id} created\n`);
  else ctx.stdout.write(`${describeJob(job)}\nFollow it with: vaccine jobs watch ${job.id}\n`);
  return follow ? watch(ctx, kind, job) : 0;
}

/** Streams the job's events (progress, or JSON lines), then prints the final job. */
async function watch(ctx: Context, kind: Kind, job: Job): Promise<number> {
  const api = jobApi(ctx.clients(), kind);
  // A stream cut by the server (a restart, Redis away) is resumed where it stopped: the job goes on.
  const events = () =>
    resumedWatch((after) => api.watch(job.id, after), {
      onPause: (why, seconds) => ctx.stderr.write(`watch interrupted (${why}); resuming in ${seconds} s\n`),
    });
  if (ctx.json) {
    for await (const event of events()) writeLine(ctx.stdout, { event: jsonOf(JobEventSchema, event) });
  } else {
    const progress = createProgress(ctx.stdout, interactive(ctx));
    const perturbation = job.spec.case === "align" && (job.spec.value.method.case === "vaccine" || job.spec.value.method.case === "tVaccine");
    const feed = jobProgress(progress, { perturbation });
    try {
      for await (const event of events()) feed(event);
    } finally {
      progress.end();
    }
  }
  const final = (await api.get(job.id)).job!;
  if (ctx.json) writeLine(ctx.stdout, jobJson(final));
  else ctx.stdout.write(describeJob(final));
  if (final.state === JobState.SUCCEEDED) return 0;
  ctx.stderr.write(final.error ? describeError(fromStatus(final.error)) : `error: job ${final.id} ended ${stateName(final.state)}\n`);
  return 1;
}

const BASE = ref("base", "<ref>", "Base checkpoint to align (required).");
const REQUEST_ID = text("request-id", "<id>", "Run the command again with the same id to get the job the first run made, not a second one (a retry after a lost answer); 64 characters of [A-Za-z0-9._~-].");

const align: Command = {
  summary: "Create an alignment job: a LoRA adapter over the base model, trained with SFT, Vaccine or a defence (T-Vaccine, Booster, RepNoise).",
  synopsis: "--base <ref> (--data <uri> | --builtin <name>) [options]",
  details: 'A checkpoint <ref> is "uri@digest", or "builtin:base" for the shipped base model ($VACCINE_BUILTIN_BASE overrides its ref, for a server built from other files).',
  flags: [BASE, ...DATASET_FLAGS, ...ALIGN_METHOD_FLAGS, ...LORA_FLAGS, ...TRAINING_FLAGS, REQUEST_ID, WATCH],
  async run(ctx) {
    const f = ctx.flags;
    const spec: MessageInitShape<typeof AlignSpecSchema> = {
      baseCheckpoint: f.required(BASE),
      dataset: datasetRef(f, true),
      method: alignMethodOneof(f),
      lora: loraConfig(f),
      training: trainingConfig(f),
    };
    const { job } = await ctx.clients().align.createAlignJob({ spec, requestId: f.get(REQUEST_ID) });
    return created(ctx, "align", job!);
  },
};

const ALIGNED = ref("aligned", "<ref>", "Aligned checkpoint to fine-tune (required).");
const GATE = toggle("gate", "Screen the dataset with the moderation model before training.");
const MAX_FLAGGED = float("max-flagged", "<p>", "Largest flagged fraction the gate accepts (default 0).");
const GATE_THRESHOLD = float("gate-threshold", "<t>", "Probability above which the gate flags an example (default 0.5).");

const finetune: Command = {
  summary: "Create a fine-tuning job: a user adapter on top of an aligned checkpoint.",
  synopsis: "--aligned <ref> (--data <uri> | --builtin <name>) [options]",
  details: 'A checkpoint <ref> is "uri@digest", as align prints its result.',
  flags: [ALIGNED, ...DATASET_FLAGS, ...LORA_FLAGS, ...TRAINING_FLAGS, GATE, MAX_FLAGGED, GATE_THRESHOLD, MODERATION_MODEL, ...GUARD_FLAGS, REQUEST_ID, WATCH],
  async run(ctx) {
    const f = ctx.flags;
    const gateFlags = [MAX_FLAGGED, GATE_THRESHOLD, MODERATION_MODEL].filter((flag) => f.has(flag));
    if (!f.has(GATE) && gateFlags.length) throw new UsageError(`--${gateFlags[0].name} needs --gate`);
    const spec = {
      alignedCheckpoint: f.required(ALIGNED),
      dataset: datasetRef(f, true),
      lora: loraConfig(f),
      training: trainingConfig(f),
      moderationGate: f.has(GATE)
        ? { enabled: true, maxFlaggedFraction: f.get(MAX_FLAGGED), threshold: f.get(GATE_THRESHOLD), moderationModel: f.get(MODERATION_MODEL) }
        : undefined,
      guard: guardOneof(f),
    };
    const { job } = await ctx.clients().fineTune.createFineTuneJob({ spec, requestId: f.get(REQUEST_ID) });
    return created(ctx, "finetune", job!);
  },
};

const KINDS = Object.keys(KIND_NAMES) as Kind[];
const KIND = choice("kind", "<kind>", "align or finetune (get, watch, cancel: default whichever service has the job; list: default both).", { align: "align", finetune: "finetune" } satisfies Record<Kind, Kind>);
const JOB_ID = { name: "[job-id]", help: "The job, as align and finetune print it." };

function jobId(ctx: Context): string {
  const [id] = ctx.args;
  if (id === undefined) throw new UsageError("a job id is required");
  return id;
}

/**
 * Runs a call on the service holding the job. Without --kind it asks AlignService, then
 * FineTuneService (job ids are unique across kinds); a service that is not served counts as
 * not having the job.
 */
async function onJob<T>(ctx: Context, call: (api: JobApi, kind: Kind) => Promise<T>): Promise<T> {
  const only = ctx.flags.get(KIND);
  let first: ConnectError | undefined;
  for (const kind of only ? [only] : KINDS) {
    try {
      return await call(jobApi(ctx.clients(), kind), kind);
    } catch (err) {
      const e = ConnectError.from(err);
      if (only || (e.code !== Code.NotFound && e.code !== Code.Unimplemented)) throw e;
      first ??= e;
    }
  }
  throw first!;
}

function printJob(ctx: Context, job: Job | undefined): void {
  if (ctx.json) writeLine(ctx.stdout, jobJson(job));
  else ctx.stdout.write(describeJob(job!));
}

const PAGE_SIZE = int("page-size", "<n>", "Jobs per page, 0 to 1000 (default 0: the server's 50).");
const PAGE_TOKEN = text("page-token", "<token>", "Token of the next page, as printed by the previous page (needs --kind).");

const list: Command = {
  summary: "List jobs, newest first; both kinds unless --kind is given.",
  synopsis: "[--kind align|finetune] [--page-size <n>] [--page-token <token>]",
  details: 'Without --kind, --json prints {"align": <page>, "finetune": <page>}.',
  flags: [KIND, PAGE_SIZE, PAGE_TOKEN],
  async run(ctx) {
    const kind = ctx.flags.get(KIND);
    const pageToken = ctx.flags.get(PAGE_TOKEN) ?? "";
    if (pageToken && !kind) throw new UsageError("--page-token needs --kind (each service pages its own jobs)");
    const tried = kind ? [kind] : KINDS;
    const settled = await Promise.allSettled(tried.map((k) => jobApi(ctx.clients(), k).list(ctx.flags.get(PAGE_SIZE) ?? 0, pageToken)));
    // A process may serve one of the two services (a pod per service): list the kind it serves.
    const failed = settled.flatMap((r, i) => (r.status === "rejected" ? [{ kind: tried[i], reason: r.reason as unknown }] : []));
    const unserved = kind ? [] : failed.filter((f) => notServed(f.reason));
    const fatal = failed.find((f) => !unserved.includes(f)) ?? (unserved.length === tried.length ? unserved[0] : undefined);
    if (fatal) throw fatal.reason;
    for (const u of unserved) ctx.stderr.write(`${u.kind} jobs: not served at this address\n`);
    const kinds = tried.filter((k) => !unserved.some((u) => u.kind === k));
    const pages = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    if (ctx.json) {
      writeLine(ctx.stdout, kind ? pageJson(pages[0]) : Object.fromEntries(kinds.map((k, i) => [k, pageJson(pages[i])])));
      return;
    }
    const created = (j: Job) => (j.createTime ? timestampMs(j.createTime) : 0);
    const jobs = pages.flatMap((p) => p.jobs).sort((a, b) => created(b) - created(a));
    ctx.stdout.write(jobs.length ? jobTable(jobs) : "no jobs\n");
    pages.forEach((p, i) => ctx.stdout.write(nextPage("jobs list", p.nextPageToken, { kind: kinds[i], "page-size": ctx.flags.get(PAGE_SIZE) })));
  },
};

const get: Command = {
  summary: "Show a job: state, progress, result and lineage.",
  synopsis: "[--kind align|finetune] <job-id>",
  flags: [KIND],
  argument: JOB_ID,
  async run(ctx) {
    const id = jobId(ctx);
    printJob(ctx, (await onJob(ctx, (api) => api.get(id))).job);
  },
};

const cancel: Command = {
  summary: "Cancel a job: a queued one at once, a running one after its current step.",
  synopsis: "[--kind align|finetune] <job-id>",
  flags: [KIND],
  argument: JOB_ID,
  async run(ctx) {
    const id = jobId(ctx);
    printJob(ctx, (await onJob(ctx, (api) => api.cancel(id))).job);
  },
};

const watchCommand: Command = {
  summary: "Follow a job's events (history first) until it ends; exit 1 unless it SUCCEEDED.",
  synopsis: "[--kind align|finetune] <job-id>",
  details: "On a terminal a progress bar is redrawn in place; otherwise plain lines. --json prints the events as JSON lines.",
  flags: [KIND],
  argument: JOB_ID,
  async run(ctx) {
    const id = jobId(ctx);
    // Get first: it finds the service holding the job and tells whether it is a Vaccine run.
    const { job, kind } = await onJob(ctx, async (api, kind) => ({ job: (await api.get(id)).job!, kind }));
    return watch(ctx, kind, job);
  },
};

export const JOB_COMMANDS: { align: Command; finetune: Command; jobs: CommandGroup } = {
  align,
  finetune,
  jobs: {
    summary: "List, show, cancel and watch alignment and fine-tuning jobs.",
    subcommands: { list, get, cancel, watch: watchCommand },
  },
};

function notServed(err: unknown): boolean {
  const e = ConnectError.from(err);
  return e.code === Code.Unimplemented && e.findDetails(ErrorInfoSchema)[0]?.reason === NotServedReason.SERVICE_NOT_SERVED;
}
