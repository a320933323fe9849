/**
 * Durable job records: one JSON file per job (the Job message in proto JSON, plus the
 * trace link of the RPC that created it and the span of its first run) and one JSONL file of its events, in a folder
 * beside the checkpoint store. Records are replaced atomically (temp + rename), so a
 * crash leaves either the old or the new record, never half of one; an events file whose
 * append was cut (a crash, a full disk) is written again whole (rewriteEvents).
 */
import { appendFileSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createRegistry, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.ts";
import { JobEventSchema, JobSchema, type Job, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";

/** The creating RPC's span, so a job's trace (possibly after a restart) links back to it. */
export interface TraceLink {
  traceId: string;
  spanId: string;
  /** W3C trace flags (sampled or not); unset: sampled. */
  traceFlags?: number;
}

export interface JobRecord {
  job: Job;
  link?: TraceLink;
  /** The span of the job's first run: a run after a restart continues its trace. */
  firstRun?: TraceLink;
  events: JobEvent[];
  /** The events file held a line that is not an event (an append cut short): `events` are those before it. */
  torn: boolean;
}

// Job errors carry google.rpc details in Any fields; JSON needs their types to spell them out.
const registry = createRegistry(file_google_rpc_error_details);
const options = { registry };

const ID = /^(align|finetune)-[0-9a-f-]{36}$/;

export class JobRecords {
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  save(job: Job, link?: TraceLink, firstRun?: TraceLink): void {
    replaceFile(join(this.dir, `${job.id}.json`), JSON.stringify({ job: toJson(JobSchema, job, options), link, firstRun }));
  }

  appendEvent(event: JobEvent): void {
    appendFileSync(join(this.dir, `${event.jobId}.events.jsonl`), eventLine(event));
  }

  /** Replaces a job's events file with these events, atomically: after an append failed or was torn. */
  rewriteEvents(id: string, events: readonly JobEvent[]): void {
    replaceFile(join(this.dir, `${id}.events.jsonl`), events.map(eventLine).join(""));
  }

  /**
   * Every record on disk that can be read; a torn last event line (a crash mid-append) is
   * dropped. A record that cannot be read is left out and given to `unreadable`, so that one
   * damaged file does not keep every other job from being served.
   */
  loadAll(unreadable: (id: string, err: Error) => void = () => {}): JobRecord[] {
    const ids = readdirSync(this.dir).flatMap((name) => (name.endsWith(".json") && ID.test(name.slice(0, -5)) ? [name.slice(0, -5)] : []));
    return ids.flatMap((id) => {
      try {
        return this.load(id) ?? [];
      } catch (err) {
        unreadable(id, err as Error);
        return [];
      }
    });
  }

  /** One job's record and events as they are on disk now, or undefined for an unknown id. */
  load(id: string): JobRecord | undefined {
    if (!ID.test(id)) return undefined;
    let raw: { job: JsonValue; link?: TraceLink; firstRun?: TraceLink };
    try {
      raw = JSON.parse(readFileSync(join(this.dir, `${id}.json`), "utf8"));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    const events: JobEvent[] = [];
    let torn = false;
    try {
      const text = readFileSync(join(this.dir, `${id}.events.jsonl`), "utf8");
      for (const line of text.split("\n")) {
        if (!line) continue;
        try {
          events.push(fromJson(JobEventSchema, JSON.parse(line), options));
        } catch {
          torn = true;
          break;
        }
      }
      // A last line without its newline: the next append would be joined to it.
      torn ||= text !== "" && !text.endsWith("\n");
    } catch {
      // No events file yet: the process stopped between creating the record and its first event.
    }
    // The record is saved before its state change's event is appended: the events count.
    const job = fromJson(JobSchema, raw.job, options);
    job.lastSequence = events.length;
    return { job, link: raw.link, firstRun: raw.firstRun, events, torn };
  }
}

function eventLine(event: JobEvent): string {
  return JSON.stringify(toJson(JobEventSchema, event, options)) + "\n";
}

/** Writes a temp file beside `path` and renames it over; a failed write leaves no temp file. */
function replaceFile(path: string, content: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, content);
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}
