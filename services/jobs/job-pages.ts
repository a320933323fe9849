/**
 * The pages of ListAlignJobs and ListFineTuneJobs, newest first, in every executor. A page
 * token names the last job shown by its place in that order (create time, then id), so a
 * job created between two pages does not push one already shown onto the next, and a token
 * of one kind's list is no token of the other's.
 */
import type { Job, JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import { badPageToken, keyToken, pageByKey, tokenKey } from "../platform/validate.ts";
import { JOB_ID, KIND_NAME } from "./new-job.ts";

/** A job's place in list order: these keys sorted descending list the newest first. */
export function listKey(job: Job): string {
  const t = job.createTime!;
  return `${String(t.seconds).padStart(12, "0")}.${String(t.nanos).padStart(9, "0")}:${job.id}`;
}

const LIST_KEY = /^\d{12}\.\d{9}:(.*)$/;

/** The list key a page token names; INVALID_ARGUMENT unless this kind's list issued it. */
export function keyOfToken(kind: JobKind, token: string): string {
  const key = tokenKey(token, LIST_KEY);
  const id = key && LIST_KEY.exec(key)![1];
  if (!id || !JOB_ID.test(id) || !id.startsWith(`${KIND_NAME[kind]}-`)) throw badPageToken();
  return key!;
}

/** A page of one kind's `jobs` (in any order), after the job the token names. */
export function pageOf(jobs: Job[], kind: JobKind, pageSize: number, pageToken: string): { jobs: Job[]; nextPageToken: string } {
  const after = pageToken ? keyOfToken(kind, pageToken) : undefined;
  const { page, nextKey } = pageByKey(jobs.map((job) => ({ key: listKey(job), item: job })), pageSize, after);
  return { jobs: page, nextPageToken: nextKey && keyToken(nextKey) };
}
