/**
 * Where the queue lives: the redis:// URL turned into a client (of one server, or of a Redis
 * Cluster found from one of its nodes), and the names of every Redis key the api and worker
 * processes share (BullMQ's under <prefix>:queue:*, the job records beside them).
 */
import { Cluster, Redis, type RedisOptions } from "ioredis";
import type { Logger } from "../../platform/log.ts";

/** BullMQ's queue name; its keys are <prefix>:queue:wait, :active, :<jobId>:lock, ... */
export const QUEUE_NAME = "queue";
export const DEFAULT_PREFIX = "vaccine";

/** The queue's Redis: `url` names the server, or with `cluster` any one node of the cluster. */
export interface QueueTarget {
  url: string;
  cluster?: boolean;
}

export type QueueRedis = Redis | Cluster;

/**
 * A client of the queue's Redis. `maxRetriesPerRequest` as ioredis's: a number fails a command
 * after that many reconnection attempts, null waits out an outage. A cluster client counts its
 * own retries: it holds commands without limit while it has no node at all (so a bounded one
 * refuses them then), and gives up on a command after 16 redirections, about 1.6 s of a node
 * being down (so one that waits never does). `onError` hears every connection error, a
 * cluster node's too, and `onReady` every connection made ready, a cluster node's too.
 */
export function connectQueue(target: QueueTarget, maxRetriesPerRequest: number | null, onError: (err: Error) => void = () => {}, onReady: () => void = () => {}): QueueRedis {
  const { host, port, db, ...node } = { ...redisOptions(target.url), maxRetriesPerRequest };
  if (!target.cluster) return new Redis({ host, port, db, ...node }).on("error", onError).on("ready", onReady);
  if (db) throw new Error(`a Redis Cluster has only database 0, the URL names ${db}: ${target.url}`);
  const waits = maxRetriesPerRequest === null;
  const cluster = new Cluster([{ host, port }], {
    redisOptions: node,
    enableOfflineQueue: waits,
    maxRedirections: waits ? Infinity : undefined,
    // Reconnecting as one server's client does: ioredis's default tries about ten times a second
    // for minutes, each try an error (a log line) while the cluster is away.
    clusterRetryStrategy: (times) => Math.min(times * 50, 2000),
  });
  // A node's connection errors are "node error" events: without them a lost node logs nothing.
  // The cluster stays ready while one node is lost: its return is a new connection to it made
  // ready (a connection to another node, made meanwhile, is no return).
  const lost = new Set<string>();
  return cluster
    .on("error", (err: Error) => onError(new Error(`cluster at ${host}:${port}: ${err.message}`)))
    .on("node error", (err: Error, address: string) => {
      lost.add(address);
      onError(new Error(`${address}: ${err.message}`));
    })
    .on("ready", () => {
      lost.clear();
      onReady();
    })
    .on("+node", (conn: Redis) => conn.on("ready", () => lost.delete(`${conn.options.host}:${conn.options.port}`) && onReady()));
}

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

/** What BullMQ's check of the server at connect writes with console.warn: queueProblem says the same as JSON. */
const BULLMQ_CHECKS = [/^IMPORTANT! Eviction policy is /, /^It is highly recommended to use a minimum Redis version/];

/**
 * Keeps BullMQ's server checks out of the process's JSON log. BullMQ takes no logger and
 * writes them with console.warn, as plain text, on each of its connections; queueProblem logs
 * the same once a process, as JSON. Only those lines are left out: any other console.warn is
 * written as before. The check itself stays on, since without the server's version BullMQ
 * assumes Redis 5.0 and rounds its blocking waits up to whole seconds.
 */
export function quietBullmqChecks(): void {
  const warn = console.warn;
  if ((warn as { quiet?: boolean }).quiet) return;
  const quiet = (...args: unknown[]) => {
    if (typeof args[0] === "string" && BULLMQ_CHECKS.some((p) => p.test(args[0] as string))) return;
    warn(...args);
  };
  console.warn = Object.assign(quiet, { quiet: true });
}

/**
 * What the queue's Redis says of itself at start, as a configuration error: a node of a Redis
 * Cluster without VACCINE_QUEUE_CLUSTER (every job write would fail with CROSSSLOT), the
 * reverse, or credentials it refuses. Undefined when all is well, and when it cannot be reached:
 * the process starts then, and its job RPCs answer UNAVAILABLE until Redis is back. What it
 * would lose (queueRisks) is logged.
 */
export async function queueProblem(target: QueueTarget, logger: Logger, timeoutMs = 3000): Promise<string | undefined> {
  // One server's client even for a cluster: a node answers INFO about itself.
  const redis = new Redis({ ...redisOptions(target.url), db: 0, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: timeoutMs, enableOfflineQueue: false });
  let refused: Error | undefined;
  redis.on("error", (err: Error) => (refused = err));
  try {
    await redis.connect();
    const info = await redis.info();
    const clustered = /^cluster_enabled:1/m.test(info);
    if (clustered && !target.cluster) return "VACCINE_QUEUE_URL names a node of a Redis Cluster: set VACCINE_QUEUE_CLUSTER=true";
    if (!clustered && target.cluster) return "VACCINE_QUEUE_CLUSTER=true, but the Redis at VACCINE_QUEUE_URL is not in cluster mode";
    await queueRisks(redis, info, logger);
    return undefined;
  } catch {
    const auth = refused?.message.match(/^(WRONGPASS|NOAUTH|NOPERM)\b.*$/);
    return auth ? `the Redis at VACCINE_QUEUE_URL refuses its credentials: ${auth[0]}` : undefined;
  } finally {
    redis.disconnect();
  }
}

/**
 * Warnings of what the queue's Redis (in a cluster, the node the URL names) would lose, and of
 * a version older than the README asks (BullMQ's own check of it is kept out of the log). An
 * evicting policy drops keys at its memory limit, a job's lock or record among them. With neither
 * an append-only file nor snapshots a restart loses every queued job and record; with snapshots
 * only, those written since the last one, a note. The policy and the append-only file are in
 * INFO, which every Redis answers; snapshots only in CONFIG, which a managed Redis may refuse
 * (renamed): that check is then left out, and said at debug.
 */
export async function queueRisks(redis: Pick<Redis, "config">, info: string, logger: Logger): Promise<void> {
  const version = info.match(/^redis_version:(\d+)\.(\d+)/m);
  if (version && Number(version[1]) * 100 + Number(version[2]) < 602) {
    logger.warn({ redis_version: `${version[1]}.${version[2]}` }, "the queue's Redis is older than 6.2, the oldest this suite is tested against");
  }
  const policy = info.match(/^maxmemory_policy:(\S+)/m)?.[1];
  if (policy && policy !== "noeviction") {
    logger.warn({ maxmemory_policy: policy }, "the queue's Redis evicts keys at its memory limit, a job's lock or record among them: set maxmemory-policy noeviction");
  }
  if (/^aof_enabled:1/m.test(info)) return;
  let save: string;
  try {
    save = String(((await redis.config("GET", "save")) as string[])[1] ?? "");
  } catch (err) {
    logger.debug({ error: (err as Error).message }, "the queue's Redis refuses CONFIG GET: whether it keeps its data across a restart is not checked");
    return;
  }
  if (save) logger.info({ appendonly: "no", save }, "the queue's Redis keeps snapshots only: a restart loses the jobs written since the last one (appendonly yes keeps them)");
  else logger.warn({ appendonly: "no", save }, "the queue's Redis keeps nothing across a restart: a restart loses every queued job and job record; set appendonly yes");
}

/** Longest wait for a cluster's nodes before a call answers UNAVAILABLE. */
const CLUSTER_WAIT_MS = 1000;

/**
 * Waits up to `ms` for a cluster client to reach its nodes: a bounded one refuses commands
 * until then (connectQueue), so a new client, or one reconnecting, waits here first. One
 * server's client queues its commands itself.
 */
export async function clusterReady(redis: QueueRedis, ms = CLUSTER_WAIT_MS): Promise<void> {
  if (!redis.isCluster || redis.status === "ready") return;
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      redis.off("ready", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    redis.once("ready", done);
  });
}

/**
 * Key names under one prefix (tests give each case its own prefix on a shared server). In a
 * cluster the prefix must hold a hash tag, `{vaccine}` by default: a script, and BullMQ's too,
 * may only touch keys of one slot, so every key of the queue is in the tag's slot.
 */
export function queueKeys(prefix = DEFAULT_PREFIX, cluster = false) {
  if (cluster) prefix = hasHashTag(prefix) ? prefix : `{${prefix}}`;
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
    /** Ids of every job that may not be final yet: what deletes check their inputs against (pruned as they end). */
    unfinished: `${prefix}:unfinished`,
    /** Set once the jobs recorded before the unfinished set existed were added to it. */
    unfinishedFilled: `${prefix}:unfinished:filled`,
    /** BullMQ's lock of a taken job; its value is the taking worker's token. */
    lock: (id: string) => `${prefix}:${QUEUE_NAME}:${id}:lock`,
    /** Pub/sub channel of cancel requests (the message is the job id). */
    cancel: `${prefix}:cancel`,
    /** BullMQ's list of waiting jobs (what an autoscaler watches). */
    wait: `${prefix}:${QUEUE_NAME}:wait`,
  };
}

export type QueueKeys = ReturnType<typeof queueKeys>;

/** Redis Cluster's rule: a key's slot is that of the text between its first "{" and the next "}", when not empty. */
function hasHashTag(key: string): boolean {
  const open = key.indexOf("{");
  return open >= 0 && key.indexOf("}", open + 1) > open + 1;
}
