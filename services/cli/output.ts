/** Where commands write and how results read: proto JSON lines, or aligned text for people. */
import { createRegistry, toJson, type DescMessage, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.ts";
import { JobKind, JobState, type Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import { AlignSpecSchema, FineTuneSpecSchema, file_vaccine_v1_training } from "../../gen/vaccine/v1/training_pb.ts";
import { fromStatus } from "../platform/errors.ts";
import { oneLineError } from "./errors.ts";

export type Env = Record<string, string | undefined>;

/** The part of a stream the CLI uses; tests pass fakes (isTTY and columns included). */
export interface Output {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface Io {
  stdout: Output;
  stderr: Output;
  env: Env;
}

/** A checkpoint as the API names it; mirrors CheckpointRef without tying flags to the generated type. */
export interface Ref {
  uri: string;
  digest: string;
}

/** "uri@digest", the form every command prints refs in, so they paste back. */
export function formatRef(ref: Ref | undefined): string {
  return ref ? `${ref.uri}@${ref.digest}` : "";
}

// Job.error holds google.rpc details in Anys; proto JSON can only print Anys it can resolve.
const REGISTRY = createRegistry(file_google_rpc_error_details);

/** A message's proto JSON. */
export function jsonOf<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): JsonValue {
  return toJson(schema, message, { registry: REGISTRY });
}

/** One JSON value as one line. */
export function writeLine(out: Output, value: unknown): void {
  out.write(JSON.stringify(value) + "\n");
}

/** One message as one line of proto JSON. */
export function writeJson<Desc extends DescMessage>(out: Output, schema: Desc, message: MessageShape<Desc>): void {
  writeLine(out, jsonOf(schema, message));
}

/** Live redraws only for a person at a terminal: not when piped, and not in CI logs. */
export function interactive(io: Io): boolean {
  const ci = io.env.CI;
  return io.stdout.isTTY === true && (ci === undefined || ci === "" || ci === "false" || ci === "0");
}

export const stateName = (state: JobState): string => JobState[state] ?? String(state);

export const KIND_NAMES: Record<string, JobKind.ALIGN | JobKind.FINE_TUNE> = { align: JobKind.ALIGN, finetune: JobKind.FINE_TUNE };
export const kindName = (kind: JobKind): string => Object.keys(KIND_NAMES).find((k) => KIND_NAMES[k] === kind) ?? "unspecified";

/** A float for reading: at most `digits` decimals, no trailing zeros. */
export function num(n: number, digits = 4): string {
  return String(Number(n.toFixed(digits)));
}

export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

const time = (ts: Timestamp | undefined) => (ts ? timestampDate(ts).toISOString() : "");

/** Rows as left-aligned columns; the first row is the header. */
/** The line that says how to get the next page: the same command, with the filters and page size that were given. */
export function nextPage(command: string, token: string, flags: Record<string, string | number | undefined> = {}): string {
  const given = Object.entries(flags).flatMap(([name, value]) => (value === undefined ? [] : [`--${name} ${value}`]));
  return token ? `more: vaccine ${[command, ...given, `--page-token ${token}`].join(" ")}\n` : "";
}

export function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]))).join("  ")).join("\n") + "\n";
}

const TRAINING = createRegistry(file_vaccine_v1_training);

/** A oneof member for people: its proto name and the settings the spec sets, e.g. "t_vaccine (rho 3, layers 1)". */
function member(owner: DescMessage, m: { case: string | undefined; value?: unknown }): string {
  if (m.case === undefined) return "";
  const value = m.value as MessageShape<DescMessage>;
  const json = toJson(TRAINING.getMessage(value.$typeName)!, value, { useProtoFieldName: true }) as Record<string, JsonValue>;
  // Scalars only: a dataset ref is a setting of its own, too long for one line.
  const set = Object.entries(json).flatMap(([k, v]) => (typeof v === "object" ? [] : [`${k} ${v}`]));
  const name = owner.fields.find((f) => f.localName === m.case)!.name;
  return set.length ? `${name} (${set.join(", ")})` : name;
}

const method = (job: Job) => (job.spec.case === "align" ? member(AlignSpecSchema, job.spec.value.method) : "");
const guard = (job: Job) => (job.spec.case === "fineTune" ? member(FineTuneSpecSchema, job.spec.value.guard) : "");

/** A job for people: one field a line, refs in the uri@digest form commands accept. */
export function describeJob(job: Job): string {
  const p = job.progress;
  const rows: [string, string][] = [
    ["job", job.id],
    ["kind", kindName(job.kind)],
    ["state", stateName(job.state)],
    ["tenant", job.tenant],
    ["method", method(job)],
    ["guard", guard(job)],
    ["progress", p && p.totalSteps > 0 ? `step ${p.step}/${p.totalSteps}, epoch ${num(p.epoch, 2)}, loss ${num(p.loss)}` : ""],
    ["created", time(job.createTime)],
    ["started", time(job.startTime)],
    ["ended", time(job.endTime)],
    ["result", formatRef(job.result)],
    ["training state", formatRef(job.trainingState)],
    // An all-zero trace id is W3C's "no trace": the server was not tracing.
    ["trace", /^0*$/.test(job.traceId) ? "" : job.traceId],
    ["error", job.error ? oneLineError(fromStatus(job.error)) : ""],
  ];
  const lines = rows.filter(([, v]) => v !== "").map(([k, v]) => `${k.padEnd(14)}  ${v}`);
  job.lineage.forEach((ref, i) => lines.push(`${(i === 0 ? "lineage" : "").padEnd(14)}  ${formatRef(ref)}`));
  return lines.join("\n") + "\n";
}

/** Jobs as a table, newest first as the server lists them. */
export function jobTable(jobs: Job[]): string {
  const rows = jobs.map((j) => [
    j.id,
    kindName(j.kind),
    stateName(j.state),
    j.progress && j.progress.totalSteps > 0 ? `${j.progress.step}/${j.progress.totalSteps}` : "",
    j.progress && j.progress.step > 0 ? num(j.progress.loss) : "",
    time(j.createTime),
    formatRef(j.result),
  ]);
  return table([["ID", "KIND", "STATE", "STEP", "LOSS", "CREATED", "RESULT"], ...rows]);
}
