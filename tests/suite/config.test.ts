import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, unknownVariables, VARIABLES } from "../../services/suite/config.ts";

describe("configuration", () => {
  it("has documented defaults", () => {
    expect(loadConfig({})).toEqual({
      host: "127.0.0.1",
      port: 50051,
      services: ["align", "finetune", "embed", "score", "datasets", "checkpoints"],
      backend: "auto",
      nativeKernels: "auto",
      store: "local",
      storeRoot: ".data/store",
      s3Bucket: "",
      s3Prefix: "vaccine",
      s3Endpoint: "",
      s3Region: "us-east-1",
      cacheDir: ".data/cache",
      jobsDir: ".data/jobs",
      maxRunningJobs: 1,
      trainThreads: 1,
      jobMemoryLimitMb: "auto",
      modelCacheMb: 2048,
      batchWindowMs: 2,
      batchMaxRows: 128,
      inferenceConcurrency: 2,
      maxDatasetMb: 1024,
      maxCheckpointMb: 65536,
      maxUploadFileMb: 32768,
      shutdownTimeoutMs: 10000,
      logLevel: "info",
      role: "all",
      queueUrl: "",
      queueCluster: false,
      maxWatches: 2000,
      workerConcurrency: 1,
      workerLockMs: 30000,
      jobAttempts: 3,
      tlsCert: "",
      tlsKey: "",
      tlsClientCa: "",
      healthPort: undefined,
      auth: "none",
      authTokensFile: "",
      authJwks: "",
      authIssuer: "",
      authAudience: "",
      authClockSkewS: 60,
      authMaxLifetimeS: 86400,
      authTenantClaim: "tenant",
      authRolesClaim: "roles",
      authMtlsMap: "",
      reflectionOpen: false,
      maxMessageMb: 16,
      unaryDeadlineMs: 300000,
      streamIdleMs: 120000,
      maxStreamsPerConnection: 100,
      keepaliveMs: 60000,
      keepaliveTimeoutMs: 20000,
      idleTimeoutMs: 300000,
      rateLimitRps: 50,
      rateLimitBurst: 100,
      maxPromptTokens: 1024,
      maxNewTokens: 1024,
      maxGeneratedTokens: 65536,
      maxEmbedValues: 4194304,
      maxSteps: 1000000,
      maxTrainingTokens: 1000000000,
      quotaJobs: 8,
      quotaStoredBytes: 107374182400,
    });
  });

  it("checks the security variables that go together", () => {
    const problems = (env: Record<string, string>) => {
      try {
        loadConfig(env);
        return "";
      } catch (err) {
        return (err as Error).message;
      }
    };
    expect(problems({ VACCINE_TLS_CERT: "c.pem" })).toContain("VACCINE_TLS_CERT and VACCINE_TLS_KEY go together");
    expect(problems({ VACCINE_TLS_CLIENT_CA: "ca.pem" })).toContain("VACCINE_TLS_CLIENT_CA needs TLS");
    expect(problems({ VACCINE_AUTH: "token" })).toContain("VACCINE_AUTH=token needs VACCINE_AUTH_TOKENS_FILE");
    const jwt = problems({ VACCINE_AUTH: "jwt" });
    for (const name of ["VACCINE_AUTH_JWKS", "VACCINE_AUTH_ISSUER", "VACCINE_AUTH_AUDIENCE"]) expect(jwt).toContain(`needs ${name}`);
    expect(problems({ VACCINE_AUTH: "jwt", VACCINE_AUTH_JWKS: "http://idp/jwks", VACCINE_AUTH_ISSUER: "i", VACCINE_AUTH_AUDIENCE: "a" })).toContain(
      'VACCINE_AUTH_JWKS="http://idp/jwks" is invalid: expected a file path or an https:// URL',
    );
    expect(problems({ VACCINE_AUTH: "mtls", VACCINE_TLS_CERT: "c", VACCINE_TLS_KEY: "k" })).toContain("VACCINE_AUTH=mtls needs VACCINE_TLS_CLIENT_CA");
    expect(problems({ VACCINE_REFLECTION_OPEN: "yes" })).toContain("expected true or false");
    expect(loadConfig({ VACCINE_AUTH: "jwt", VACCINE_AUTH_JWKS: "https://idp/jwks", VACCINE_AUTH_ISSUER: "i", VACCINE_AUTH_AUDIENCE: "a", VACCINE_HEALTH_PORT: "8081" })).toMatchObject({
      auth: "jwt",
      healthPort: 8081,
    });
  });

  it("parses values and rejects bad ones all at once, naming each variable", () => {
    expect(loadConfig({ VACCINE_SERVICES: "embed, score,embed", VACCINE_PORT: "0" })).toMatchObject({
      services: ["embed", "score"],
      port: 0,
    });
    let err: unknown;
    try {
      loadConfig({ VACCINE_PORT: "80a", VACCINE_BACKEND: "tpu", VACCINE_LOG_LEVEL: "loud" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toContain('VACCINE_PORT="80a"');
    expect(msg).toContain('VACCINE_BACKEND="tpu" is invalid: expected one of auto, tensorflow-gpu, tensorflow, wasm, cpu');
    expect(msg).toContain('VACCINE_LOG_LEVEL="loud"');
  });

  it("takes the longest JWT lifetime as a positive number of seconds", () => {
    expect(loadConfig({ VACCINE_AUTH_MAX_LIFETIME_S: "3600" }).authMaxLifetimeS).toBe(3600);
    for (const bad of ["0", "-60", "1.5", "1h", "", "31536001"]) {
      expect(() => loadConfig({ VACCINE_AUTH_MAX_LIFETIME_S: bad })).toThrow(`VACCINE_AUTH_MAX_LIFETIME_S="${bad}" is invalid: expected an integer from 1 to 31536000`);
    }
  });

  it("takes the job memory limit as auto or a number of MiB", () => {
    expect(loadConfig({ VACCINE_JOB_MEMORY_LIMIT_MB: "2048" }).jobMemoryLimitMb).toBe(2048);
    expect(() => loadConfig({ VACCINE_JOB_MEMORY_LIMIT_MB: "lots" })).toThrow(/VACCINE_JOB_MEMORY_LIMIT_MB="lots" is invalid: expected an integer from 64/);
  });

  it("requires a bucket for the s3 store", () => {
    expect(() => loadConfig({ VACCINE_STORE: "s3" })).toThrow(/VACCINE_S3_BUCKET is required/);
    expect(loadConfig({ VACCINE_STORE: "s3", VACCINE_S3_BUCKET: "b" }).s3Bucket).toBe("b");
  });

  it("needs a queue for the api and worker roles, and a redis:// URL", () => {
    expect(() => loadConfig({ VACCINE_ROLE: "worker" })).toThrow(/VACCINE_ROLE=worker needs VACCINE_QUEUE_URL/);
    expect(() => loadConfig({ VACCINE_ROLE: "api" })).toThrow(/VACCINE_ROLE=api needs VACCINE_QUEUE_URL/);
    expect(() => loadConfig({ VACCINE_QUEUE_URL: "http://redis:6379" })).toThrow(/VACCINE_QUEUE_URL="http:\/\/redis:6379" is invalid/);
    // A bad URL is one problem, not also a missing one.
    expect(() => loadConfig({ VACCINE_ROLE: "api", VACCINE_QUEUE_URL: "http://redis:6379" })).toThrow(/^Bad configuration:\n {2}VACCINE_QUEUE_URL="http:\/\/redis:6379" is invalid[^\n]*$/);
    expect(() => loadConfig({ VACCINE_PORT: "50051", VACCINE_HEALTH_PORT: "50051" })).toThrow("VACCINE_HEALTH_PORT=50051 is VACCINE_PORT too: the plaintext health port must be another");
    expect(loadConfig({ VACCINE_PORT: "0", VACCINE_HEALTH_PORT: "0" }).healthPort).toBe(0);
    // A misspelt variable is reported (the process logs it at start), the CLI's own are not.
    expect(unknownVariables({ VACCINE_TLS_CRT: "x", VACCINE_PORT: "1", VACCINE_ADDRESS: "a", VACCINE_TOKEN: "t", VACCINE_BUILTIN_BASE: "b", VACCINE_QUEUE: "q", PATH: "/bin" })).toEqual(["VACCINE_QUEUE", "VACCINE_TLS_CRT"]);
    expect(loadConfig({ VACCINE_ROLE: "worker", VACCINE_QUEUE_URL: "redis://redis:6379/0", VACCINE_WORKER_CONCURRENCY: "2" })).toMatchObject({
      role: "worker",
      queueUrl: "redis://redis:6379/0",
      workerConcurrency: 2,
    });
  });

  it("takes a Redis Cluster's node as the queue, with database 0 only", () => {
    expect(loadConfig({ VACCINE_QUEUE_URL: "redis://redis:6379/0" }).queueCluster).toBe(false);
    expect(loadConfig({ VACCINE_QUEUE_URL: "rediss://node-1:6379", VACCINE_QUEUE_CLUSTER: "true" })).toMatchObject({ queueCluster: true, queueUrl: "rediss://node-1:6379" });
    expect(() => loadConfig({ VACCINE_QUEUE_CLUSTER: "true" })).toThrow(/VACCINE_QUEUE_CLUSTER=true needs VACCINE_QUEUE_URL/);
    expect(() => loadConfig({ VACCINE_QUEUE_URL: "redis://node-1:6379/2", VACCINE_QUEUE_CLUSTER: "true" })).toThrow(/VACCINE_QUEUE_CLUSTER=true needs database 0/);
    expect(() => loadConfig({ VACCINE_QUEUE_URL: "redis://node-1:6379/01", VACCINE_QUEUE_CLUSTER: "true" })).toThrow(/needs database 0/);
    expect(() => loadConfig({ VACCINE_QUEUE_URL: "redis://node-1:6379/0", VACCINE_QUEUE_CLUSTER: "yes" })).toThrow(/VACCINE_QUEUE_CLUSTER="yes" is invalid: expected true or false/);
  });

  it("matches the README's configuration table", () => {
    const readme = readFileSync("README.md", "utf8");
    for (const v of VARIABLES) {
      const shown = v.default === "" ? "(empty)" : `\`${v.default}\``;
      expect(readme).toContain(`| \`${v.name}\` | ${shown} | ${v.description} |`);
    }
  });
});
