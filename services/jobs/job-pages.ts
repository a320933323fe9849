/**
 * The pages of ListAlignJobs and ListFineTuneJobs, newest first, in every executor. A page
 * token names the last job shown by its place in that order (create time, then id), so a
 * job created between two pages does not push one already shown onto the next, and a token
 * of one kind's list is no token of the other's.
 */
import type { Job, JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import { badPageToken, DEFAULT_PAGE_SIZE } from "../platform/validate.ts";
import { JOB_ID, KIND_NAME } from "./new-job.ts";

/** A job's place in list order: these keys sorted descending list the newest first. */
export function listKey(job: Job): string {
  const t = job.createTime!;
  return `${String(t.seconds).padStart(12, "0")}.${String(t.nanos).padStart(9, "0")}:${job.id}`;
}

/** The list key a page token names; INVALID_ARGUMENT unless this kind's list issued it. */
export function keyOfToken(kind: JobKind, token: string): string {
  const key = Buffer.from(token, "base64url").toString();
  const id = /^\d{12}\.\d{9}:(.*)$/.exec(key)?.[1];
  if (id === undefined || !JOB_ID.test(id) || !id.startsWith(`${KIND_NAME[kind]}-`)) throw badPageToken();
  return key;
}

export function tokenOfKey(key: string): string {
  return Buffer.from(key).toString("base64url");
}

/** A page of one kind's `jobs` (in any order), after the job the token names. */
export function pageOf(jobs: Job[], kind: JobKind, pageSize: number, pageToken: string): { jobs: Job[]; nextPageToken: string } {
  const after = pageToken ? keyOfToken(kind, pageToken) : undefined;
  const keyed = jobs
    .map((job) => ({ key: listKey(job), job }))
    .filter(({ key }) => after === undefined || key < after)
    .sort((a, b) => (a.key < b.key ? 1 : -1));
  const shown = keyed.slice(0, pageSize || DEFAULT_PAGE_SIZE);
  return { jobs: shown.map(({ job }) => job), nextPageToken: keyed.length > shown.length ? tokenOfKey(shown.at(-1)!.key) : "" };
}
