/**
 * Job records and event logs in Redis, where every api and worker process sees them.
 *
 *   <prefix>:job:<id>          hash: job (the Job in proto JSON), state (authoritative, beside
 *                              the JSON so an api can change it while a worker owns the JSON),
 *                              link, seq (last event sequence), owner (token of the worker that
 *                              claimed it), attempt (claims), failures, cancel ("1" once asked)
 *   <prefix>:job:<id>:events   stream; entry id <sequence>-0, field e = the JobEvent in proto JSON
 *   <prefix>:index:<kind>      sorted set of "<create time>:<id>" for List, newest first
 *   <prefix>:index:<kind>:<tenant>  the same for one tenant's jobs (List with tenancy)
 *   <prefix>:active:<tenant>   set of the tenant's job ids not yet seen final (its job quota)
 *   <prefix>:unfinished        set of every job id not final (what deletes check); a job
 *                              leaves it when a write makes it final
 *
 * Every change is one Lua script, so a state change and its event land together, sequence
 * numbers come from one counter (XADD refuses an id that is not above the last: no
 * duplicates), and a state change is a compare-and-set on the state it expects. A worker's
 * writes are fenced: they carry its BullMQ lock token and are refused unless that token
 * still holds the job's lock and claimed the record, so a worker that lost its lock (killed,
 * stalled, partitioned) can write nothing after another worker took the job.
 */
import { create, createRegistry, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { file_google_rpc_error_details } from "../../../gen/google/rpc/error_details_pb.ts";
import { JobEventSchema, JobKind, JobSchema, JobState, type Job, type JobEvent } from "../../../gen/vaccine/v1/jobs_pb.ts";
import { FINAL, unfinishedOf, type JobEventInit } from "../executor.ts";
import type { TraceLink } from "../records.ts";
import type { QueueKeys, QueueRedis } from "./connection.ts";
import { listKey } from "../job-pages.ts";
import { KIND_NAME } from "../new-job.ts";

// Job errors carry google.rpc details in Any fields; JSON needs their types to spell them out.
const json = { registry: createRegistry(file_google_rpc_error_details) };


/** A kind's short name, as in job ids, key names and metric attributes. */

export interface StoredJob {
  job: Job;
  link?: TraceLink;
  owner: string;
  attempt: number;
  failures: number;
  cancel: boolean;
  /** The last event's sequence number. */
  seq: number;
}

/** One atomic change; every part is optional. */
export interface Change {
  /** Replaces the stored JSON (its state field is ignored: `to` sets the state). */
  job?: Job;
  /** Compare-and-set: applied only while the stored state is `from`. */
  from?: JobState;
  to?: JobState;
  event?: JobEventInit;
  /** Sets the cancel flag and publishes the id to workers. */
  cancel?: boolean;
  /** Further hash fields (failures). */
  fields?: Record<string, string | number>;
}

export type WriteResult =
  | { ok: true; sequence: number }
  | { ok: false; why: "fenced" | "missing" }
  | { ok: false; why: "state"; state: JobState };

// A tenant's jobs not final, counted through its active set (`set`), ids found final (or gone)
// leaving it; `prefix` + id is a job's record key. Records are read by key names built here,
// not passed as KEYS: Redis allows that for keys of the script's slot, and in a cluster every
// key of the queue is in its prefix's hash tag's slot (connection.ts).
const FINAL_STATES = `local FINAL_STATES = {${[...FINAL].map((s) => `["${s}"] = true`).join(", ")}}`;

const ACTIVE = `
${FINAL_STATES}
local function active(set, prefix)
  local n = 0
  for _, id in ipairs(redis.call("SMEMBERS", set)) do
    local state = redis.call("HGET", prefix .. id, "state")
    if state == false or FINAL_STATES[state] then redis.call("SREM", set, id) else n = n + 1 end
  end
  return n
end`;

// KEYS: the tenant's active set. ARGV: record key prefix.
const COUNT_ACTIVE = `${ACTIVE}
return active(KEYS[1], ARGV[1])`;

// KEYS: record, events, index, tenant index, tenant's active set, unfinished set. ARGV: job JSON, state, link,
// first event JSON, index member, tenant ("" without tenancy: only the global index), job id,
// record key prefix, the tenant's job quota ("0": none). Returns -1 when the id exists, the
// tenant's active jobs when they are at the quota (nothing written), else -2.
const CREATE = `${ACTIVE}
if redis.call("EXISTS", KEYS[1]) == 1 then return -1 end
local quota = tonumber(ARGV[9])
if quota > 0 then
  local n = active(KEYS[5], ARGV[8])
  if n >= quota then return n end
end
redis.call("HSET", KEYS[1], "job", ARGV[1], "state", ARGV[2], "link", ARGV[3], "seq", 1, "owner", "", "attempt", 0, "failures", 0)
redis.call("XADD", KEYS[2], "1-0", "e", ARGV[4])
redis.call("ZADD", KEYS[3], 0, ARGV[5])
redis.call("SADD", KEYS[6], ARGV[7])
if ARGV[6] ~= "" then
  redis.call("ZADD", KEYS[4], 0, ARGV[5])
  redis.call("SADD", KEYS[5], ARGV[7])
end
return -2`;

// KEYS: record, events, lock, unfinished set. ARGV: token ("" = an api's unfenced write), job
// JSON, expected state, new state, event JSON, cancel ("1"), cancel channel, job id, then
// field/value pairs. A job that turns final leaves the unfinished set.
const WRITE = `
${FINAL_STATES}
if redis.call("EXISTS", KEYS[1]) == 0 then return {"missing"} end
if ARGV[1] ~= "" then
  if redis.call("GET", KEYS[3]) ~= ARGV[1] or redis.call("HGET", KEYS[1], "owner") ~= ARGV[1] then return {"fenced"} end
end
if ARGV[3] ~= "" then
  local current = redis.call("HGET", KEYS[1], "state")
  if current ~= ARGV[3] then return {"state", current} end
  redis.call("HSET", KEYS[1], "state", ARGV[4])
  if FINAL_STATES[ARGV[4]] then redis.call("SREM", KEYS[4], ARGV[8]) end
end
if ARGV[2] ~= "" then redis.call("HSET", KEYS[1], "job", ARGV[2]) end
for i = 9, #ARGV, 2 do redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[6] == "1" then
  redis.call("HSET", KEYS[1], "cancel", "1")
  redis.call("PUBLISH", ARGV[7], ARGV[8])
end
local seq = 0
if ARGV[5] ~= "" then
  seq = redis.call("HINCRBY", KEYS[1], "seq", 1)
  redis.call("XADD", KEYS[2], seq .. "-0", "e", ARGV[5])
end
return {"ok", tostring(seq)}`;

// KEYS: record, lock. ARGV: token. The worker holding the lock becomes the record's owner.
const CLAIM = `
if redis.call("EXISTS", KEYS[1]) == 0 then return "missing" end
if redis.call("GET", KEYS[2]) ~= ARGV[1] then return "fenced" end
redis.call("HSET", KEYS[1], "owner", ARGV[1])
redis.call("HINCRBY", KEYS[1], "attempt", 1)
return "ok"`;

interface Scripts {
  vaccineCreate(record: string, events: string, index: string, tenantIndex: string, active: string, unfinished: string, ...args: string[]): Promise<number>;
  vaccineWrite(record: string, events: string, lock: string, unfinished: string, ...args: string[]): Promise<string[]>;
  vaccineClaim(record: string, lock: string, token: string): Promise<string>;
  vaccineActive(active: string, prefix: string): Promise<number>;
}

export class RedisJobs {
  private readonly redis: QueueRedis & Scripts;

  constructor(
    redis: QueueRedis,
    readonly keys: QueueKeys,
  ) {
    redis.defineCommand("vaccineCreate", { numberOfKeys: 6, lua: CREATE });
    redis.defineCommand("vaccineWrite", { numberOfKeys: 4, lua: WRITE });
    redis.defineCommand("vaccineClaim", { numberOfKeys: 2, lua: CLAIM });
    redis.defineCommand("vaccineActive", { numberOfKeys: 1, lua: COUNT_ACTIVE });
    this.redis = redis as QueueRedis & Scripts;
  }

  /**
   * Records a new job with its first event (sequence 1): "created", "exists" when the id does,
   * or, with `quota` > 0, the tenant's jobs not final when they are that many already (checked
   * in the same script: concurrent creates cannot both pass).
   */
  async create(job: Job, link: TraceLink | undefined, first: JobEventInit, quota = 0): Promise<"created" | "exists" | { active: number }> {
    const k = this.keys;
    const r = await this.redis.vaccineCreate(
      k.job(job.id),
      k.events(job.id),
      k.index(KIND_NAME[job.kind]),
      k.tenantIndex(KIND_NAME[job.kind], job.tenant),
      k.active(job.tenant),
      k.unfinished,
      jobJson(job),
      String(job.state),
      JSON.stringify(link ?? null),
      eventJson(job.id, first),
      listKey(job),
      job.tenant,
      job.id,
      k.job(""),
      String(quota),
    );
    return r === -2 ? "created" : r === -1 ? "exists" : { active: r };
  }

  async read(id: string): Promise<StoredJob | undefined> {
    const h = await this.redis.hgetall(this.keys.job(id));
    return h.job ? parse(h) : undefined;
  }

  /** Takes ownership of the record for the worker holding the job's lock with `token`. */
  async claim(id: string, token: string): Promise<"ok" | "missing" | "fenced"> {
    return (await this.redis.vaccineClaim(this.keys.job(id), this.keys.lock(id), token)) as "ok" | "missing" | "fenced";
  }

  /** Applies a change; `token` fences it on the job's lock (undefined: an api's write). */
  async write(id: string, change: Change, token?: string): Promise<WriteResult> {
    const k = this.keys;
    const fields = Object.entries(change.fields ?? {}).flatMap(([f, v]) => [f, String(v)]);
    const r = await this.redis.vaccineWrite(
      k.job(id),
      k.events(id),
      k.lock(id),
      k.unfinished,
      token ?? "",
      change.job ? jobJson(change.job) : "",
      change.from !== undefined ? String(change.from) : "",
      change.to !== undefined ? String(change.to) : "",
      change.event ? eventJson(id, change.event) : "",
      change.cancel ? "1" : "",
      k.cancel,
      id,
      ...fields,
    );
    if (r[0] === "ok") return { ok: true, sequence: Number(r[1]) };
    if (r[0] === "state") return { ok: false, why: "state", state: Number(r[1]) as JobState };
    return { ok: false, why: r[0] as "fenced" | "missing" };
  }

  /** A page of a kind's jobs (of one tenant's when `tenant` is set), newest first, after the member `after` (exclusive). */
  async page(kind: JobKind, size: number, after: string, tenant?: string): Promise<{ jobs: Job[]; last?: string; more: boolean }> {
    const index = tenant === undefined ? this.keys.index(KIND_NAME[kind]) : this.keys.tenantIndex(KIND_NAME[kind], tenant);
    const members = (await this.redis.call("ZRANGE", index, after ? `(${after}` : "+", "-", "BYLEX", "REV", "LIMIT", "0", String(size + 1))) as string[];
    const shown = members.slice(0, size);
    const pipeline = this.redis.pipeline();
    for (const m of shown) pipeline.hgetall(this.keys.job(m.slice(m.indexOf(":") + 1)));
    const rows = ((await pipeline.exec()) ?? []).map(([, h]) => h as Record<string, string>);
    return { jobs: rows.filter((h) => h.job).map((h) => parse(h).job), last: shown.at(-1), more: members.length > size };
  }

  /** The tenant's jobs not final yet; ids found final (or gone) leave the set. */
  async active(tenant: string): Promise<number> {
    return this.redis.vaccineActive(this.keys.active(tenant), this.keys.job(""));
  }

  /**
   * Jobs not final of `tenant` (undefined: every tenant's), read through the unfinished set;
   * ids found final (or gone) leave it. A final state is never left, so removing one is safe.
   */
  async unfinished(tenant?: string): Promise<Job[]> {
    if (!(await this.redis.exists(this.keys.unfinishedFilled))) await this.fillUnfinished();
    const ids = await this.redis.smembers(this.keys.unfinished);
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hgetall(this.keys.job(id));
    const rows = ((await pipeline.exec()) ?? []).map(([, h]) => h as Record<string, string>);
    const jobs = rows.map((h) => (h.job ? parse(h).job : undefined));
    const ended = ids.filter((_, i) => !jobs[i] || FINAL.has(jobs[i].state));
    if (ended.length > 0) await this.redis.srem(this.keys.unfinished, ...ended);
    return unfinishedOf(jobs.filter((j) => j !== undefined), tenant);
  }

  /**
   * Adds the jobs not final that were recorded before the unfinished set existed (a queue
   * upgraded in place), once per queue: every record's state is read.
   */
  private async fillUnfinished(): Promise<void> {
    for (const kind of Object.values(KIND_NAME)) {
      const members = await this.redis.zrange(this.keys.index(kind), 0, -1);
      const ids = members.map((m) => m.slice(m.indexOf(":") + 1));
      const pipeline = this.redis.pipeline();
      for (const id of ids) pipeline.hget(this.keys.job(id), "state");
      const states = ((await pipeline.exec()) ?? []).map(([, s]) => s as string | null);
      const open = ids.filter((_, i) => states[i] !== null && !FINAL.has(Number(states[i]) as JobState));
      if (open.length > 0) await this.redis.sadd(this.keys.unfinished, ...open);
    }
    await this.redis.set(this.keys.unfinishedFilled, "1");
  }

  /** A job's events after `after`, from `conn`. */
  async events(conn: QueueRedis, id: string, after: number): Promise<JobEvent[]> {
    return (await this.eventsOf(conn, new Map([[id, after]]))).get(id) ?? [];
  }

  /**
   * Events of several jobs, each after its own sequence, in one read: up to 1000 a job.
   * With `blockMs`, waits that long for one (a blocking read needs a connection of its own).
   */
  async eventsOf(conn: QueueRedis, after: ReadonlyMap<string, number>, blockMs?: number): Promise<Map<string, JobEvent[]>> {
    const ids = [...after.keys()];
    const args: (string | number)[] = ["COUNT", 1000];
    if (blockMs !== undefined) args.push("BLOCK", blockMs);
    const res = (await conn.call("XREAD", ...args, "STREAMS", ...ids.map((id) => this.keys.events(id)), ...ids.map((id) => `${after.get(id)}-0`))) as
      | [string, [string, string[]][]][]
      | null;
    const idOf = new Map(ids.map((id) => [this.keys.events(id), id]));
    return new Map(
      (res ?? []).map(([key, entries]) => [
        idOf.get(key)!,
        entries.map(([entryId, fields]) => {
          const e = fromJson(JobEventSchema, JSON.parse(fields[fields.indexOf("e") + 1]) as JsonValue, json);
          e.sequence = Number(entryId.split("-")[0]);
          return e;
        }),
      ]),
    );
  }
}


function jobJson(job: Job): string {
  return JSON.stringify(toJson(JobSchema, job, json));
}

function eventJson(jobId: string, event: JobEventInit): string {
  return JSON.stringify(toJson(JobEventSchema, create(JobEventSchema, { jobId, time: timestampNow(), event }), json));
}

function parse(h: Record<string, string>): StoredJob {
  const job = fromJson(JobSchema, JSON.parse(h.job) as JsonValue, json);
  job.state = Number(h.state) as JobState;
  job.lastSequence = Number(h.seq ?? 0);
  const link = JSON.parse(h.link ?? "null") as TraceLink | null;
  return {
    job,
    link: link ?? undefined,
    owner: h.owner ?? "",
    attempt: Number(h.attempt ?? 0),
    failures: Number(h.failures ?? 0),
    cancel: h.cancel === "1",
    seq: Number(h.seq ?? 0),
  };
}
