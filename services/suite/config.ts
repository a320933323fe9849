/**
 * Process configuration from environment variables. Every variable is declared once here,
 * with its default and its check, so a bad value fails at start with a message that names
 * the variable, and the README's configuration table can be checked against this list.
 */
import { DEFAULT_INFERENCE_CONCURRENCY } from "../common/call-slots.ts";
import { DEFAULT_MAX_WATCHES } from "../jobs/queue/watch-limit.ts";
import { LOG_LEVELS, type LogLevel } from "../platform/log.ts";
import { AUTH_MODES, type AuthMode } from "../platform/principal.ts";
import { telemetryProblems } from "../platform/telemetry-env.ts";

export const SERVICE_NAMES = ["align", "finetune", "embed", "score", "datasets", "checkpoints"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export const BACKENDS = ["auto", "tensorflow-gpu", "tensorflow", "wasm", "cpu"] as const;

/** all: serve and train; api: serve every RPC and enqueue; worker: train queued jobs (health only). */
export const ROLES = ["all", "api", "worker"] as const;

export interface Config {
  host: string;
  port: number;
  services: ServiceName[];
  backend: (typeof BACKENDS)[number];
  nativeKernels: "auto" | "off";
  store: "local" | "s3";
  storeRoot: string;
  s3Bucket: string;
  s3Prefix: string;
  s3Endpoint: string;
  s3Region: string;
  cacheDir: string;
  jobsDir: string;
  maxRunningJobs: number;
  /** Read by the training itself (runtime/pipeline/train-adapter.ts trainThreads); declared here to be validated and documented. */
  trainThreads: number;
  /** Peak memory one training job may need, in MiB; "auto": see defaultJobMemoryLimitMb (jobs/admission.ts). */
  jobMemoryLimitMb: number | "auto";
  modelCacheMb: number;
  /** Embed and Moderate calls batched across callers (common/call-batcher.ts). */
  batchWindowMs: number;
  batchMaxRows: number;
  /** Score calls that decode at once (common/call-slots.ts). */
  inferenceConcurrency: number;
  maxDatasetMb: number;
  maxCheckpointMb: number;
  maxUploadFileMb: number;
  shutdownTimeoutMs: number;
  logLevel: LogLevel;
  role: (typeof ROLES)[number];
  queueUrl: string;
  queueCluster: boolean;
  maxWatches: number;
  workerConcurrency: number;
  workerLockMs: number;
  jobAttempts: number;
  // Transport, authentication and limits (docs/security.md).
  tlsCert: string;
  tlsKey: string;
  tlsClientCa: string;
  healthPort: number | undefined;
  auth: AuthMode;
  authTokensFile: string;
  authJwks: string;
  authIssuer: string;
  authAudience: string;
  authClockSkewS: number;
  authMaxLifetimeS: number;
  authTenantClaim: string;
  authRolesClaim: string;
  authMtlsMap: string;
  reflectionOpen: boolean;
  maxMessageMb: number;
  unaryDeadlineMs: number;
  streamIdleMs: number;
  maxStreamsPerConnection: number;
  keepaliveMs: number;
  keepaliveTimeoutMs: number;
  idleTimeoutMs: number;
  rateLimitRps: number;
  rateLimitBurst: number;
  maxPromptTokens: number;
  maxNewTokens: number;
  maxGeneratedTokens: number;
  maxEmbedValues: number;
  maxSteps: number;
  maxTrainingTokens: number;
  quotaJobs: number;
  quotaStoredBytes: number;
}

interface Variable<K extends keyof Config> {
  name: string;
  key: K;
  default: string;
  description: string;
  parse: (raw: string) => Config[K];
}

class BadValue extends Error {}

function integer(min: number, max: number) {
  return (raw: string): number => {
    const n = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || n < min || n > max) throw new BadValue(`an integer from ${min} to ${max}`);
    return n;
  };
}

function choice<T extends string>(allowed: readonly T[]) {
  return (raw: string): T => {
    if (!(allowed as readonly string[]).includes(raw)) throw new BadValue(`one of ${allowed.join(", ")}`);
    return raw as T;
  };
}

function serviceList(raw: string): ServiceName[] {
  const names = raw.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = names.filter((n) => !(SERVICE_NAMES as readonly string[]).includes(n));
  if (names.length === 0 || bad.length > 0) throw new BadValue(`a comma-separated list of ${SERVICE_NAMES.join(", ")}`);
  return [...new Set(names)] as ServiceName[];
}

function redisUrl(raw: string): string {
  if (raw !== "" && !/^rediss?:\/\/[^/]+(\/\d+)?$/.test(raw)) throw new BadValue("redis://host:port/db (or rediss:// for TLS), or empty");
  return raw;
}

function optionalPort(raw: string): number | undefined {
  return raw === "" ? undefined : integer(0, 65535)(raw);
}

function bool(raw: string): boolean {
  if (raw !== "true" && raw !== "false") throw new BadValue("true or false");
  return raw === "true";
}

/** A file path, an https:// URL, or empty; plain http would let the network forge the keys. */
function jwksSource(raw: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) && !/^https:\/\//i.test(raw)) throw new BadValue("a file path or an https:// URL");
  return raw;
}

function nonEmpty(raw: string): string {
  if (raw.trim() === "") throw new BadValue("a non-empty string");
  return raw;
}

// The type parameter ties each parser to its field.
const v = <K extends keyof Config>(x: Variable<K>) => x;

export const VARIABLES = [
  v({ name: "VACCINE_HOST", key: "host", default: "127.0.0.1", description: "Address to listen on (0.0.0.0 in a container).", parse: nonEmpty }),
  v({ name: "VACCINE_PORT", key: "port", default: "50051", description: "Port for gRPC, gRPC-Web and Connect (0 picks a free port).", parse: integer(0, 65535) }),
  v({ name: "VACCINE_SERVICES", key: "services", default: SERVICE_NAMES.join(","), description: "Services this process serves.", parse: serviceList }),
  v({ name: "VACCINE_BACKEND", key: "backend", default: "auto", description: "tfjs backend: auto, tensorflow-gpu, tensorflow, wasm or cpu.", parse: choice(BACKENDS) }),
  v({ name: "VACCINE_NATIVE_KERNELS", key: "nativeKernels", default: "auto", description: "On the wasm backend: native kernels (matrix products on OpenBLAS, exp) when their addon is built (auto), or only the stock wasm kernels (off).", parse: choice(["auto", "off"] as const) }),
  v({ name: "VACCINE_STORE", key: "store", default: "local", description: "Checkpoint store: local (a folder) or s3 (S3-compatible object storage).", parse: choice(["local", "s3"] as const) }),
  v({ name: "VACCINE_STORE_ROOT", key: "storeRoot", default: ".data/store", description: "Root folder of the local checkpoint store.", parse: nonEmpty }),
  v({ name: "VACCINE_S3_BUCKET", key: "s3Bucket", default: "", description: "Bucket of the s3 store (required with VACCINE_STORE=s3); credentials from the AWS_* variables.", parse: (raw) => raw }),
  v({ name: "VACCINE_S3_PREFIX", key: "s3Prefix", default: "vaccine", description: "Key prefix of the s3 store.", parse: (raw) => raw }),
  v({ name: "VACCINE_S3_ENDPOINT", key: "s3Endpoint", default: "", description: "Endpoint of an S3-compatible server (empty: AWS).", parse: (raw) => raw }),
  v({ name: "VACCINE_S3_REGION", key: "s3Region", default: "us-east-1", description: "Region of the s3 store.", parse: nonEmpty }),
  v({ name: "VACCINE_CACHE_DIR", key: "cacheDir", default: ".data/cache", description: "Local cache of checkpoints read from the s3 store.", parse: nonEmpty }),
  v({ name: "VACCINE_JOBS_DIR", key: "jobsDir", default: ".data/jobs", description: "Durable job records (a persistent volume in a cluster).", parse: nonEmpty }),
  v({ name: "VACCINE_MODEL_CACHE_MB", key: "modelCacheMb", default: "2048", description: "Memory for checkpoints kept loaded by Embed and Score, counted as float32 (a BF16 model takes twice its files). A larger model is loaded for each call and freed after it; 0 keeps none.", parse: integer(0, 1_048_576) }),
  v({ name: "VACCINE_BATCH_WINDOW_MS", key: "batchWindowMs", default: "2", description: "How long an Embed or Moderate call waits for concurrent calls on the same checkpoint and options, to share one forward pass with them, in ms (0: every call runs alone).", parse: integer(0, 1000) }),
  v({ name: "VACCINE_BATCH_MAX_ROWS", key: "batchMaxRows", default: "128", description: "Texts or pairs one shared forward pass may hold: a batch that reaches it runs at once, and a larger call runs alone.", parse: integer(1, 65_536) }),
  v({ name: "VACCINE_INFERENCE_CONCURRENCY", key: "inferenceConcurrency", default: String(DEFAULT_INFERENCE_CONCURRENCY), description: "Long inference calls (Generate, ScoreHarmfulness, ScoreTask, ComputeDrift) run at once per process; the others wait their turn, within their deadline. They share the serving thread: each one running delays every other call (Embed's too) by one decoding step or forward pass per turn of it.", parse: integer(1, 256) }),
  v({ name: "VACCINE_MAX_DATASET_MB", key: "maxDatasetMb", default: "1024", description: "Largest dataset an upload may send, in MiB.", parse: integer(1, 1_048_576) }),
  v({ name: "VACCINE_MAX_CHECKPOINT_MB", key: "maxCheckpointMb", default: "65536", description: "Largest checkpoint folder an import may send, in MiB (all files).", parse: integer(1, 16_777_216) }),
  v({ name: "VACCINE_MAX_UPLOAD_FILE_MB", key: "maxUploadFileMb", default: "32768", description: "Largest single file of a checkpoint import, in MiB.", parse: integer(1, 16_777_216) }),
  v({ name: "VACCINE_TRAIN_THREADS", key: "trainThreads", default: "1", description: "Threads one training job splits each batch over (data-parallel, each with its own copy of the model; the same result within float rounding), for every method and guard.", parse: integer(1, 64) }),
  v({ name: "VACCINE_MAX_RUNNING_JOBS", key: "maxRunningJobs", default: "1", description: "Training jobs run at once per process (one per accelerator).", parse: integer(1, 64) }),
  v({
    name: "VACCINE_JOB_MEMORY_LIMIT_MB",
    key: "jobMemoryLimitMb",
    default: "auto",
    description: "Estimated peak memory one training job may need, in MiB; a job over it is refused at Create (RESOURCE_EXHAUSTED). auto: half the memory of the machine or cgroup, shared by the jobs that run at once (VACCINE_MAX_RUNNING_JOBS, or VACCINE_WORKER_CONCURRENCY with a queue), at most 4096 on the wasm backend.",
    parse: (raw) => (raw === "auto" ? "auto" : integer(64, 16_777_216)(raw)),
  }),
  v({ name: "VACCINE_SHUTDOWN_TIMEOUT_MS", key: "shutdownTimeoutMs", default: "10000", description: "Longest wait for in-flight work on SIGTERM before closing anyway.", parse: integer(0, 3_600_000) }),
  v({ name: "VACCINE_LOG_LEVEL", key: "logLevel", default: "info", description: "debug, info, warn or error.", parse: choice(LOG_LEVELS) }),
  v({ name: "VACCINE_ROLE", key: "role", default: "all", description: "all (serve and train), api (serve and enqueue, no training) or worker (train queued jobs; health only). api and worker need VACCINE_QUEUE_URL.", parse: choice(ROLES) }),
  v({ name: "VACCINE_QUEUE_URL", key: "queueUrl", default: "", description: "Redis of the shared job queue, redis://host:port/db (empty: jobs run embedded in this process).", parse: redisUrl }),
  v({ name: "VACCINE_QUEUE_CLUSTER", key: "queueCluster", default: "false", description: "true: VACCINE_QUEUE_URL names a node of a Redis Cluster (database 0); the queue's keys are under the hash tag {vaccine}, in one slot.", parse: bool }),
  v({ name: "VACCINE_MAX_WATCHES", key: "maxWatches", default: String(DEFAULT_MAX_WATCHES), description: "With a queue: Watch streams an api process serves at once (they share one Redis connection); over it a Watch is refused with RESOURCE_EXHAUSTED (WATCH_LIMIT).", parse: integer(1, 100_000) }),
  v({ name: "VACCINE_WORKER_CONCURRENCY", key: "workerConcurrency", default: "1", description: "Queued jobs a worker trains at once (one per accelerator).", parse: integer(1, 64) }),
  v({ name: "VACCINE_WORKER_LOCK_MS", key: "workerLockMs", default: "30000", description: "A worker's lock on a job; a killed worker's job is taken over within about twice this. Keep it above the time Redis may be away (a restart, a failover): a longer outage counts as a lost worker.", parse: integer(1000, 3_600_000) }),
  v({ name: "VACCINE_JOB_ATTEMPTS", key: "jobAttempts", default: "3", description: "Runs of a queued job that may fail (errors or lost workers) before it is FAILED.", parse: integer(1, 100) }),
  v({ name: "VACCINE_TLS_CERT", key: "tlsCert", default: "", description: "PEM certificate chain of the port; with VACCINE_TLS_KEY turns TLS on (empty: plaintext). Re-read when the file changes.", parse: (raw) => raw }),
  v({ name: "VACCINE_TLS_KEY", key: "tlsKey", default: "", description: "PEM private key of VACCINE_TLS_CERT.", parse: (raw) => raw }),
  v({ name: "VACCINE_TLS_CLIENT_CA", key: "tlsClientCa", default: "", description: "PEM CA bundle: every client must present a certificate it signed (mTLS; needs TLS).", parse: (raw) => raw }),
  v({ name: "VACCINE_HEALTH_PORT", key: "healthPort", default: "", description: "A second, plaintext port serving only grpc.health.v1, for probes that cannot speak TLS (empty: none).", parse: optionalPort }),
  v({ name: "VACCINE_AUTH", key: "auth", default: "none", description: "Authentication: none, token, jwt or mtls (none warns at start unless the host is loopback).", parse: choice(AUTH_MODES) }),
  v({ name: "VACCINE_AUTH_TOKENS_FILE", key: "authTokensFile", default: "", description: "With token: JSON or YAML mapping the SHA-256 (hex) of each bearer token to {tenant, roles, principal}; reloaded on change.", parse: (raw) => raw }),
  v({ name: "VACCINE_AUTH_JWKS", key: "authJwks", default: "", description: "With jwt: the issuer's JWKS, a file (reloaded on change) or an https:// URL.", parse: jwksSource }),
  v({ name: "VACCINE_AUTH_ISSUER", key: "authIssuer", default: "", description: "With jwt: the required iss claim.", parse: (raw) => raw }),
  v({ name: "VACCINE_AUTH_AUDIENCE", key: "authAudience", default: "", description: "With jwt: the required aud claim.", parse: (raw) => raw }),
  v({ name: "VACCINE_AUTH_CLOCK_SKEW_S", key: "authClockSkewS", default: "60", description: "With jwt: clock difference tolerated on exp and nbf, in seconds.", parse: integer(0, 600) }),
  v({ name: "VACCINE_AUTH_MAX_LIFETIME_S", key: "authMaxLifetimeS", default: "86400", description: "With jwt: the longest lifetime a token may have, in seconds: one whose exp lies further ahead (beyond the clock skew), or further after its iat, is refused.", parse: integer(1, 31_536_000) }),
  v({ name: "VACCINE_AUTH_TENANT_CLAIM", key: "authTenantClaim", default: "tenant", description: "With jwt: the claim naming the tenant.", parse: nonEmpty }),
  v({ name: "VACCINE_AUTH_ROLES_CLAIM", key: "authRolesClaim", default: "roles", description: "With jwt: the claim listing the roles (a list, or a space-separated string).", parse: nonEmpty }),
  v({ name: "VACCINE_AUTH_MTLS_MAP", key: "authMtlsMap", default: "", description: "With mtls: JSON or YAML mapping certificate identities (CN=, DNS:, URI:, email:) to {tenant, roles, principal}; reloaded on change.", parse: (raw) => raw }),
  v({ name: "VACCINE_REFLECTION_OPEN", key: "reflectionOpen", default: "false", description: "true: server reflection answers without credentials.", parse: bool }),
  v({ name: "VACCINE_MAX_MESSAGE_MB", key: "maxMessageMb", default: "16", description: "Largest message the server reads, in MiB; a larger one is refused unread with RESOURCE_EXHAUSTED (uploads stream 1 MiB chunks).", parse: integer(1, 4095) }),
  v({ name: "VACCINE_UNARY_DEADLINE_MS", key: "unaryDeadlineMs", default: "300000", description: "Deadline of unary calls sent without one (0: none).", parse: integer(0, 86_400_000) }),
  v({ name: "VACCINE_STREAM_IDLE_MS", key: "streamIdleMs", default: "120000", description: "An upload or import whose next message takes longer than this is ended with DEADLINE_EXCEEDED (0: never).", parse: integer(0, 86_400_000) }),
  v({ name: "VACCINE_MAX_STREAMS_PER_CONNECTION", key: "maxStreamsPerConnection", default: "100", description: "Calls open at once on one HTTP/2 connection.", parse: integer(1, 10_000) }),
  v({ name: "VACCINE_KEEPALIVE_MS", key: "keepaliveMs", default: "60000", description: "Interval of the server's HTTP/2 keepalive pings (0: none).", parse: integer(0, 86_400_000) }),
  v({ name: "VACCINE_KEEPALIVE_TIMEOUT_MS", key: "keepaliveTimeoutMs", default: "20000", description: "A connection that does not answer a keepalive ping within this is closed.", parse: integer(1, 3_600_000) }),
  v({ name: "VACCINE_IDLE_TIMEOUT_MS", key: "idleTimeoutMs", default: "300000", description: "A connection with no call open for this long is closed (0: never).", parse: integer(0, 86_400_000) }),
  v({ name: "VACCINE_RATE_LIMIT_RPS", key: "rateLimitRps", default: "50", description: "Calls per second per tenant, sustained (token bucket; 0: no limit); over it: RESOURCE_EXHAUSTED with RetryInfo. Without authentication every caller is the one tenant `default`, so this bounds the whole server: raise it (or 0) for many clients without tokens.", parse: integer(0, 1_000_000) }),
  v({ name: "VACCINE_RATE_LIMIT_BURST", key: "rateLimitBurst", default: "100", description: "Calls a tenant may make at once after a quiet spell.", parse: integer(1, 1_000_000) }),
  v({ name: "VACCINE_MAX_PROMPT_TOKENS", key: "maxPromptTokens", default: "1024", description: "Longest Generate prompt, Moderate pair or Embed text, in tokens.", parse: integer(1, 1_048_576) }),
  v({ name: "VACCINE_MAX_NEW_TOKENS", key: "maxNewTokens", default: "1024", description: "Largest max_new_tokens of Generate and the scoring calls; an unset max_new_tokens takes its default (128, or 200 for ScoreTask) or this, whichever is lower.", parse: integer(1, 1_048_576) }),
  v({ name: "VACCINE_MAX_GENERATED_TOKENS", key: "maxGeneratedTokens", default: "65536", description: "Tokens one Generate call may produce: prompts x max_new_tokens.", parse: integer(1, 1_000_000_000) }),
  v({ name: "VACCINE_MAX_EMBED_VALUES", key: "maxEmbedValues", default: "4194304", description: "Numbers one Embed response may hold: vectors (one a text, or a token with pooling NONE) x layers x hidden size; the default is 16 MiB of float32.", parse: integer(1, 1_000_000_000) }),
  v({ name: "VACCINE_MAX_STEPS", key: "maxSteps", default: "1000000", description: "Training steps of one job (max_steps, or epochs over the dataset), checked at Create: jobs accepted before a lower bound keep theirs, resumes included.", parse: integer(1, 1_000_000_000) }),
  v({ name: "VACCINE_MAX_TRAINING_TOKENS", key: "maxTrainingTokens", default: "1000000000", description: "Tokens one job may train on: steps x batch_size x max_sequence_length.", parse: integer(1, Number.MAX_SAFE_INTEGER) }),
  v({ name: "VACCINE_QUOTA_JOBS", key: "quotaJobs", default: "8", description: "With authentication: jobs one tenant may have queued or running at once (0: no limit); over it Create is RESOURCE_EXHAUSTED with QuotaFailure.", parse: integer(0, 1_000_000) }),
  v({ name: "VACCINE_QUOTA_STORED_BYTES", key: "quotaStoredBytes", default: "107374182400", description: "With authentication: bytes of datasets and checkpoints one tenant may own (0: no limit); over it uploads, imports and job Create are RESOURCE_EXHAUSTED with QuotaFailure.", parse: integer(0, Number.MAX_SAFE_INTEGER) }),
];

/** Variables that only make sense together (each message names them). */
function securityProblems(c: Partial<Config>): string[] {
  const out: string[] = [];
  if (Boolean(c.tlsCert) !== Boolean(c.tlsKey)) out.push("VACCINE_TLS_CERT and VACCINE_TLS_KEY go together: set both for TLS, or neither");
  if (c.tlsClientCa && !c.tlsCert) out.push("VACCINE_TLS_CLIENT_CA needs TLS: set VACCINE_TLS_CERT and VACCINE_TLS_KEY");
  if (c.auth === "token" && !c.authTokensFile) out.push("VACCINE_AUTH=token needs VACCINE_AUTH_TOKENS_FILE");
  if (c.auth === "jwt") {
    for (const [name, value] of [["VACCINE_AUTH_JWKS", c.authJwks], ["VACCINE_AUTH_ISSUER", c.authIssuer], ["VACCINE_AUTH_AUDIENCE", c.authAudience]] as const) {
      if (!value) out.push(`VACCINE_AUTH=jwt needs ${name}`);
    }
  }
  if (c.auth === "mtls" && !(c.tlsClientCa && c.authMtlsMap)) out.push("VACCINE_AUTH=mtls needs VACCINE_TLS_CLIENT_CA (with TLS) and VACCINE_AUTH_MTLS_MAP");
  return out;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** VACCINE_* variables the CLI reads (the address, a token, shipped refs): not the server's. */
const CLIENT_VARIABLES = /^VACCINE_(ADDRESS|TOKEN|BUILTIN_[A-Z]+)$/;

/** VACCINE_* variables that no part of the suite reads: a misspelling (VACCINE_TLS_CRT) is otherwise silently ignored. */
export function unknownVariables(env: Record<string, string | undefined> = process.env): string[] {
  const known = new Set(VARIABLES.map((v) => v.name));
  return Object.keys(env).filter((k) => k.startsWith("VACCINE_") && !known.has(k) && !CLIENT_VARIABLES.test(k)).sort();
}

/** Reads the configuration; throws one ConfigError listing every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const config: Partial<Record<keyof Config, unknown>> = {};
  const problems: string[] = [];
  for (const variable of VARIABLES) {
    const raw = env[variable.name] ?? variable.default;
    try {
      config[variable.key] = variable.parse(raw);
    } catch (err) {
      if (!(err instanceof BadValue)) throw err;
      problems.push(`${variable.name}="${raw}" is invalid: expected ${err.message}`);
    }
  }
  if (config.store === "s3" && !config.s3Bucket) problems.push("VACCINE_S3_BUCKET is required when VACCINE_STORE=s3");
  const badQueueUrl = problems.some((p) => p.startsWith("VACCINE_QUEUE_URL="));
  if (config.role !== undefined && config.role !== "all" && !config.queueUrl && !badQueueUrl) problems.push(`VACCINE_ROLE=${config.role} needs VACCINE_QUEUE_URL (api and worker processes share jobs through it)`);
  if (config.queueCluster && !config.queueUrl) problems.push("VACCINE_QUEUE_CLUSTER=true needs VACCINE_QUEUE_URL (a node of the cluster)");
  if (config.queueCluster && /\/0*[1-9]\d*$/.test(String(config.queueUrl))) problems.push(`VACCINE_QUEUE_CLUSTER=true needs database 0: a Redis Cluster has no other (VACCINE_QUEUE_URL=${config.queueUrl})`);
  if (config.healthPort !== undefined && config.healthPort !== 0 && config.healthPort === config.port) {
    problems.push(`VACCINE_HEALTH_PORT=${config.healthPort} is VACCINE_PORT too: the plaintext health port must be another`);
  }
  problems.push(...securityProblems(config as Config), ...telemetryProblems(env));
  if (problems.length > 0) throw new ConfigError(`Bad configuration:\n  ${problems.join("\n  ")}`);
  return config as Config;
}
