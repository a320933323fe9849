/**
 * Durable job records: one JSON file per job (the Job message in proto JSON, plus the
 * trace link of the RPC that created it) and one JSONL file of its events, in a folder
 * beside the checkpoint store. Records are replaced atomically (temp + rename), so a
 * crash leaves either the old or the new record, never half of one.
 */
import { appendFileSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createRegistry, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.ts";
import { JobEventSchema, JobSchema, type Job, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";

/** The creating RPC's span, so a job's trace (possibly after a restart) links back to it. */
export interface TraceLink {
  traceId: string;
  spanId: string;
}

export interface JobRecord {
  job: Job;
  link?: TraceLink;
  events: JobEvent[];
}

// Job errors carry google.rpc details in Any fields; JSON needs their types to spell them out.
const registry = createRegistry(file_google_rpc_error_details);
const options = { registry };

const ID = /^(align|finetune)-[0-9a-f-]{36}$/;

export class JobRecords {
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  save(job: Job, link?: TraceLink): void {
    const path = join(this.dir, `${job.id}.json`);
    const tmp = `${path}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ job: toJson(JobSchema, job, options), link }));
    renameSync(tmp, path);
  }

  appendEvent(event: JobEvent): void {
    appendFileSync(join(this.dir, `${event.jobId}.events.jsonl`), JSON.stringify(toJson(JobEventSchema, event, options)) + "\n");
  }

  /** Every record on disk; a torn last event line (a crash mid-append) is dropped. */
  loadAll(): JobRecord[] {
    const ids = readdirSync(this.dir).flatMap((name) => (name.endsWith(".json") && ID.test(name.slice(0, -5)) ? [name.slice(0, -5)] : []));
    return ids.flatMap((id) => this.load(id) ?? []);
  }

  /** One job's record and events as they are on disk now, or undefined for an unknown id. */
  load(id: string): JobRecord | undefined {
    if (!ID.test(id)) return undefined;
    let raw: { job: JsonValue; link?: TraceLink };
    try {
      raw = JSON.parse(readFileSync(join(this.dir, `${id}.json`), "utf8"));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    const events: JobEvent[] = [];
    try {
      for (const line of readFileSync(join(this.dir, `${id}.events.jsonl`), "utf8").split("\n")) {
        if (!line) continue;
        try {
          events.push(fromJson(JobEventSchema, JSON.parse(line), options));
        } catch {
          break;
        }
      }
    } catch {
      // No events file yet: the process stopped between creating the record and its first event.
    }
    // The record is saved before its state change's event is appended: the events count.
    const job = fromJson(JobSchema, raw.job, options);
    job.lastSequence = events.length;
    return { job, link: raw.link, events };
  }
}
