/**
 * Where the queue lives: the redis:// URL turned into connection options, and the names of
 * every Redis key the api and worker processes share (BullMQ's under <prefix>:queue:*,
 * the job records beside them).
 */
import type { RedisOptions } from "ioredis";

/** BullMQ's queue name; its keys are <prefix>:queue:wait, :active, :<jobId>:lock, ... */
export const QUEUE_NAME = "queue";
export const DEFAULT_PREFIX = "vaccine";

/** Connection options from redis://[user:password@]host[:port][/db] or rediss:// (TLS). */
export function redisOptions(url: string): RedisOptions {
  const u = new URL(url);
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") throw new Error(`not a redis:// URL: ${url}`);
  const db = u.pathname.replace(/^\//, "");
  return {
    host: u.hostname || "127.0.0.1",
    port: u.port ? Number(u.port) : 6379,
    db: db ? Number(db) : 0,
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    tls: u.protocol === "rediss:" ? {} : undefined,
  };
}

/** Key names under one prefix (tests give each case its own prefix on a shared server). */
export function queueKeys(prefix = DEFAULT_PREFIX) {
  return {
    prefix,
    /** The job's record: a hash (see redis-jobs.ts). */
    job: (id: string) => `${prefix}:job:${id}`,
    /** The job's events: a stream whose entry ids are <sequence>-0. */
    events: (id: string) => `${prefix}:job:${id}:events`,
    /** Jobs of a kind, newest first by member (create time, then id). */
    index: (kind: string) => `${prefix}:index:${kind}`,
    /** One tenant's jobs of a kind, as `index` (List with tenancy pages through it: docs/security.md). */
    tenantIndex: (kind: string, tenant: string) => `${prefix}:index:${kind}:${tenant}`,
    /** Ids of a tenant's jobs that may not be final yet: what its job quota counts (pruned as they end). */
    active: (tenant: string) => `${prefix}:active:${tenant}`,
    /** BullMQ's lock of a taken job; its value is the taking worker's token. */
    lock: (id: string) => `${prefix}:${QUEUE_NAME}:${id}:lock`,
    /** Pub/sub channel of cancel requests (the message is the job id). */
    cancel: `${prefix}:cancel`,
    /** BullMQ's list of waiting jobs (what an autoscaler watches). */
    wait: `${prefix}:${QUEUE_NAME}:wait`,
  };
}

export type QueueKeys = ReturnType<typeof queueKeys>;
