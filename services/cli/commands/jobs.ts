/** align, finetune and jobs: create training jobs, then list, get, cancel and watch them. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { AlignSpecSchema } from "../../../gen/vaccine/v1/training_pb.ts";
import { JobEventSchema, JobSchema, JobState, type Job, type JobEvent } from "../../../gen/vaccine/v1/jobs_pb.ts";
import { UsageError, type OptionTable } from "../args.ts";
import type { Clients } from "../client.ts";
import type { Command, CommandGroup, Context } from "../command.ts";
import { describeError, statusError } from "../errors.ts";
import { describeJob, interactive, jobTable, jsonOf, KIND_NAMES, stateName, writeLine } from "../output.ts";
import { createProgress, jobProgress } from "../progress.ts";
import { DATASET_OPTIONS, datasetRef, LORA_OPTIONS, loraConfig, TRAINING_OPTIONS, trainingConfig } from "../spec-flags.ts";

type Kind = keyof typeof KIND_NAMES;

/** The job RPCs of either service, called the same way. */
interface JobApi {
  get(jobId: string): Promise<{ job?: Job }>;
  cancel(jobId: string): Promise<{ job?: Job }>;
  list(pageSize: number, pageToken: string): Promise<{ jobs: Job[]; nextPageToken: string }>;
  watch(jobId: string): AsyncIterable<{ event?: JobEvent }>;
}

function jobApi(clients: Clients, kind: Kind): JobApi {
  if (kind === "align") {
    const c = clients.align;
    return {
      get: (jobId) => c.getAlignJob({ jobId }),
      cancel: (jobId) => c.cancelAlignJob({ jobId }),
      list: (pageSize, pageToken) => c.listAlignJobs({ pageSize, pageToken }),
      watch: (jobId) => c.watchAlignJob({ jobId }),
    };
  }
  const c = clients.fineTune;
  return {
    get: (jobId) => c.getFineTuneJob({ jobId }),
    cancel: (jobId) => c.cancelFineTuneJob({ jobId }),
    list: (pageSize, pageToken) => c.listFineTuneJobs({ pageSize, pageToken }),
    watch: (jobId) => c.watchFineTuneJob({ jobId }),
  };
}

// The {job}, {event} and {jobs, nextPageToken} responses of both services have the same proto
// JSON, so one writer serves both.
const jobJson = (job: Job | undefined) => (job ? { job: jsonOf(JobSchema, job) } : {});
const pageJson = (page: { jobs: Job[]; nextPageToken: string }) => ({
  jobs: page.jobs.map((j) => jsonOf(JobSchema, j)),
  ...(page.nextPageToken ? { nextPageToken: page.nextPageToken } : {}),
});

const WATCH_OPTION: OptionTable = { watch: { type: "boolean", help: "Follow the job until it ends (exit 1 unless it SUCCEEDED)." } };

/** Prints a created job, and follows it with --watch. */
async function created(ctx: Context, kind: Kind, job: Job): Promise<number> {
  const follow = ctx.flags.bool("watch");
  if (ctx.json) writeLine(ctx.stdout, jobJson(job));
  // When following, the final summary comes at the end; the id first, to find the job again.
  else if (follow) ctx.stdout.write(`job ${job.id} created\n`);
  else ctx.stdout.write(`${describeJob(job)}\nFollow it with: vaccine jobs watch ${job.id}\n`);
  return follow ? watch(ctx, kind, job) : 0;
}

/** Streams the job's events (progress, or JSON lines), then prints the final job. */
async function watch(ctx: Context, kind: Kind, job: Job): Promise<number> {
  const api = jobApi(ctx.clients(), kind);
  if (ctx.json) {
    for await (const { event } of api.watch(job.id)) writeLine(ctx.stdout, event ? { event: jsonOf(JobEventSchema, event) } : {});
  } else {
    const progress = createProgress(ctx.stdout, interactive(ctx));
    const perturbation = job.spec.case === "align" && job.spec.value.method.case === "vaccine";
    const feed = jobProgress(progress, { perturbation });
    try {
      for await (const { event } of api.watch(job.id)) if (event) feed(event);
    } finally {
      progress.end();
    }
  }
  const final = (await api.get(job.id)).job!;
  if (ctx.json) writeLine(ctx.stdout, jobJson(final));
  else ctx.stdout.write(describeJob(final));
  if (final.state === JobState.SUCCEEDED) return 0;
  ctx.stderr.write(final.error ? describeError(statusError(final.error)) : `error: job ${final.id} ended ${stateName(final.state)}\n`);
  return 1;
}

const align: Command = {
  summary: "Create an alignment job: a LoRA adapter over the base model, trained with SFT or Vaccine.",
  synopsis: "--base <ref> (--data <uri> | --builtin <name>) [options]",
  details: 'A checkpoint <ref> is "uri@digest"; "builtin:base" reads it from $VACCINE_BUILTIN_BASE.',
  options: {
    base: { type: "string", value: "<ref>", help: "Base checkpoint to align (required)." },
    ...DATASET_OPTIONS,
    method: { type: "string", value: "<method>", help: "sft or vaccine (default vaccine)." },
    rho: { type: "string", value: "<rho>", help: "Vaccine: bound on the perturbation norm (default 2; 0 is SFT)." },
    tau: { type: "string", value: "<n>", help: "Vaccine: recompute the perturbation every n steps (default 1)." },
    ...LORA_OPTIONS,
    ...TRAINING_OPTIONS,
    ...WATCH_OPTION,
  },
  async run(ctx) {
    const f = ctx.flags;
    const method = f.str("method") ?? "vaccine";
    if (method !== "sft" && method !== "vaccine") throw new UsageError(`--method: expected sft or vaccine, got "${method}"`);
    if (method === "sft" && (f.has("rho") || f.has("tau"))) throw new UsageError("--rho and --tau apply to --method vaccine");
    const spec: MessageInitShape<typeof AlignSpecSchema> = {
      baseCheckpoint: f.requiredRef("base"),
      dataset: datasetRef(f, true),
      method: method === "sft" ? { case: "sft", value: {} } : { case: "vaccine", value: { rho: f.num("rho"), refreshEvery: f.int("tau") } },
      lora: loraConfig(f),
      training: trainingConfig(f),
    };
    const { job } = await ctx.clients().align.createAlignJob({ spec });
    return created(ctx, "align", job!);
  },
};

const finetune: Command = {
  summary: "Create a fine-tuning job: a user adapter on top of an aligned checkpoint.",
  synopsis: "--aligned <ref> (--data <uri> | --builtin <name>) [options]",
  details: 'A checkpoint <ref> is "uri@digest", as align prints its result.',
  options: {
    aligned: { type: "string", value: "<ref>", help: "Aligned checkpoint to fine-tune (required)." },
    ...DATASET_OPTIONS,
    ...LORA_OPTIONS,
    ...TRAINING_OPTIONS,
    gate: { type: "boolean", help: "Screen the dataset with the moderation model before training." },
    "max-flagged": { type: "string", value: "<p>", help: "Largest flagged fraction the gate accepts (default 0)." },
    "gate-threshold": { type: "string", value: "<t>", help: "Probability above which the gate flags an example (default 0.5)." },
    "moderation-model": { type: "string", value: "<ref>", help: "Moderation model of the gate (default: the server's)." },
    ...WATCH_OPTION,
  },
  async run(ctx) {
    const f = ctx.flags;
    const gateFlags = ["max-flagged", "gate-threshold", "moderation-model"].filter((n) => f.has(n));
    if (!f.bool("gate") && gateFlags.length) throw new UsageError(`--${gateFlags[0]} needs --gate`);
    const spec = {
      alignedCheckpoint: f.requiredRef("aligned"),
      dataset: datasetRef(f, true),
      lora: loraConfig(f),
      training: trainingConfig(f),
      moderationGate: f.bool("gate")
        ? { enabled: true, maxFlaggedFraction: f.num("max-flagged"), threshold: f.num("gate-threshold"), moderationModel: f.ref("moderation-model") }
        : undefined,
    };
    const { job } = await ctx.clients().fineTune.createFineTuneJob({ spec });
    return created(ctx, "finetune", job!);
  },
};

const KIND_OPTION: OptionTable = {
  kind: { type: "string", value: "<kind>", help: "align or finetune (default: whichever service has the job)." },
};

function kindOf(ctx: Context): Kind | undefined {
  const kind = ctx.flags.str("kind");
  if (kind !== undefined && !Object.hasOwn(KIND_NAMES, kind)) throw new UsageError(`--kind: expected align or finetune, got "${kind}"`);
  return kind as Kind | undefined;
}

function jobId(ctx: Context): string {
  const [id, ...extra] = ctx.flags.positionals;
  if (id === undefined) throw new UsageError("a job id is required");
  if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
  return id;
}

/**
 * Runs a call on the service holding the job. Without --kind it asks AlignService, then
 * FineTuneService (job ids are unique across kinds); a service that is not served counts as
 * not having the job.
 */
async function onJob<T>(ctx: Context, call: (api: JobApi, kind: Kind) => Promise<T>): Promise<T> {
  const only = kindOf(ctx);
  let first: ConnectError | undefined;
  for (const kind of only ? [only] : (Object.keys(KIND_NAMES) as Kind[])) {
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

const list: Command = {
  summary: "List jobs, newest first; both kinds unless --kind is given.",
  synopsis: "[--kind align|finetune] [--page-size <n>] [--page-token <token>]",
  details: 'Without --kind, --json prints {"align": <page>, "finetune": <page>}.',
  options: {
    ...KIND_OPTION,
    "page-size": { type: "string", value: "<n>", help: "Jobs per page, 0 to 1000 (default 0: the server's 50)." },
    "page-token": { type: "string", value: "<token>", help: "Token of the next page, as printed by the previous page (needs --kind)." },
  },
  async run(ctx) {
    const kind = kindOf(ctx);
    const pageToken = ctx.flags.str("page-token") ?? "";
    if (pageToken && !kind) throw new UsageError("--page-token needs --kind (each service pages its own jobs)");
    const kinds = kind ? [kind] : (Object.keys(KIND_NAMES) as Kind[]);
    const pages = await Promise.all(kinds.map((k) => jobApi(ctx.clients(), k).list(ctx.flags.int("page-size") ?? 0, pageToken)));
    if (ctx.json) {
      writeLine(ctx.stdout, kind ? pageJson(pages[0]) : Object.fromEntries(kinds.map((k, i) => [k, pageJson(pages[i])])));
      return;
    }
    const created = (j: Job) => (j.createTime ? timestampMs(j.createTime) : 0);
    const jobs = pages.flatMap((p) => p.jobs).sort((a, b) => created(b) - created(a));
    ctx.stdout.write(jobs.length ? jobTable(jobs) : "no jobs\n");
    pages.forEach((p, i) => {
      if (p.nextPageToken) ctx.stdout.write(`more: vaccine jobs list --kind ${kinds[i]} --page-token ${p.nextPageToken}\n`);
    });
  },
};

const get: Command = {
  summary: "Show a job: state, progress, result and lineage.",
  synopsis: "[--kind align|finetune] <job-id>",
  options: KIND_OPTION,
  async run(ctx) {
    const id = jobId(ctx);
    printJob(ctx, (await onJob(ctx, (api) => api.get(id))).job);
  },
};

const cancel: Command = {
  summary: "Cancel a job: a queued one at once, a running one after its current step.",
  synopsis: "[--kind align|finetune] <job-id>",
  options: KIND_OPTION,
  async run(ctx) {
    const id = jobId(ctx);
    printJob(ctx, (await onJob(ctx, (api) => api.cancel(id))).job);
  },
};

const watchCommand: Command = {
  summary: "Follow a job's events (history first) until it ends; exit 1 unless it SUCCEEDED.",
  synopsis: "[--kind align|finetune] <job-id>",
  details: "On a terminal a progress bar is redrawn in place; otherwise plain lines. --json prints the events as JSON lines.",
  options: KIND_OPTION,
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
