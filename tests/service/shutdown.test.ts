// The process entrypoints: start, serve, and stop gracefully on SIGTERM.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import { startRedis, startRedisCluster } from "../../scripts/redis-server.ts";
import { startProcess } from "../../scripts/service-process.ts";
import { errorDetails } from "../helpers/errors.ts";

describe("SIGTERM", () => {
  it("turns health NOT_SERVING first, ends open streams, and exits 0 within 5 s", async () => {
    const proc = await startProcess("services/main.ts");
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proc.port}` }));
    expect((await health.check({ service: "" })).status).toBe(S.SERVING);

    const seen: S[] = [];
    let streamError: unknown;
    const watching = (async () => {
      try {
        for await (const r of health.watch({ service: "vaccine.v1.AlignService" })) {
          seen.push(r.status);
          if (seen.length === 1) proc.child.kill("SIGTERM");
        }
      } catch (err) {
        streamError = err;
      }
    })();
    const sentAt = Date.now();
    const { code, at } = await proc.exited;
    await watching;
    expect(code).toBe(0);
    expect(at - sentAt).toBeLessThan(5000);
    expect(seen).toEqual([S.SERVING, S.NOT_SERVING]);
    // The in-flight Watch was ended by the server with its status (clients retry elsewhere),
    // not cut when sessions were destroyed, and not OK: a health Watch does not end by itself.
    expect(errorDetails(streamError)).toMatchObject({ code: Code.Unavailable, info: { reason: "SERVER_SHUTTING_DOWN" } });
    const order = proc.log().split("\n").filter(Boolean).map((l) => JSON.parse(l).msg);
    expect(order.slice(-3)).toEqual(["signal received", "shutting down", "stopped"]);
  });

  it("a single-service entrypoint serves only its service", async () => {
    const proc = await startProcess("services/embed/main.ts");
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proc.port}` }));
    const { statuses } = await health.list({});
    expect(Object.keys(statuses).sort()).toEqual(["", "vaccine.v1.EmbedService"]);
    // Started without VACCINE_STORE_ROOT by the test, it logs where checkpoints go: the helper's
    // temporary folder, not the project's .data/ (which the suite must leave alone).
    const store = proc.log().split("\n").filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.msg === "checkpoint store");
    expect(store).toMatchObject({ store: "local" });
    expect(store.root.startsWith(join(tmpdir(), "vaccine-process-"))).toBe(true);
    // The launcher's stop (what the benches call): SIGTERM, a clean exit, its folder removed.
    await proc.stop();
    expect((await proc.exited).code).toBe(0);
    expect(existsSync(dirname(store.root))).toBe(false);
  });
});

describe("bad configuration", () => {
  it("exits 2 with a message naming every bad variable", () => {
    const res = spawnSync(process.execPath, ["--import", "tsx", "services/main.ts"], {
      env: { ...process.env, VACCINE_PORT: "99999", VACCINE_SERVICES: "align,bogus" },
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(res.status).toBe(2);
    expect(res.stderr).toContain('VACCINE_PORT="99999" is invalid: expected an integer from 0 to 65535');
    expect(res.stderr).toContain('VACCINE_SERVICES="align,bogus" is invalid');
  });

  it("exits 2 when an explicitly chosen backend cannot load", () => {
    const res = spawnSync(process.execPath, ["--import", "tsx", "services/main.ts"], {
      env: { ...process.env, VACCINE_BACKEND: "tensorflow", VACCINE_PORT: "0" },
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(res.status).toBe(2);
    expect(res.stderr).toMatch(/backend "tensorflow" cannot be used: @tensorflow\/tfjs-node/);
  });

  it("exits 2 with one line naming the variable when the configured port or host cannot be listened on", async () => {
    const first = await startProcess("services/main.ts");
    try {
      const start = (env: Record<string, string>) =>
        spawnSync(process.execPath, ["--import", "tsx", "services/main.ts"], { env: { ...process.env, ...env }, encoding: "utf8", timeout: 30_000 });
      for (const [env, message] of [
        [{ VACCINE_PORT: String(first.port) }, `cannot start: cannot listen on 127.0.0.1:${first.port}: the port is in use (another process listens there: stop it, or set VACCINE_PORT)`],
        [{ VACCINE_PORT: "0", VACCINE_HEALTH_PORT: String(first.port) }, "or set VACCINE_HEALTH_PORT)"],
        [{ VACCINE_PORT: "0", VACCINE_HOST: "10.255.255.1" }, "the address is not one of this machine's (set VACCINE_HOST)"],
        [{ VACCINE_PORT: "0", VACCINE_HOST: "no-such-host.invalid" }, "cannot start: VACCINE_HOST=no-such-host.invalid does not resolve to an address of this machine"],
      ] as const) {
        const res = start(env);
        expect(res.status, res.stderr).toBe(2);
        expect(res.stderr).toContain(message);
        expect(res.stderr).not.toMatch(/\n\s+at /);
      }
    } finally {
      await first.stop();
    }
  });

  it("exits 2 naming the variable when the queue's Redis is a cluster it was not told of (or the reverse), or refuses its credentials", async () => {
    const [single, locked, cluster] = await Promise.all([startRedis(), startRedis(["--requirepass", "secret"]), startRedisCluster()]);
    try {
      const start = (env: Record<string, string>) =>
        spawnSync(process.execPath, ["dist/services/main.js"], { env: { ...process.env, VACCINE_PORT: "0", VACCINE_ROLE: "worker", ...env }, encoding: "utf8", timeout: 30_000 });
      const port = (r: { url: string }) => new URL(r.url).port;
      for (const [env, message] of [
        [{ VACCINE_QUEUE_URL: cluster.url }, "cannot start: VACCINE_QUEUE_URL names a node of a Redis Cluster: set VACCINE_QUEUE_CLUSTER=true"],
        [{ VACCINE_QUEUE_URL: single.url, VACCINE_QUEUE_CLUSTER: "true" }, "cannot start: VACCINE_QUEUE_CLUSTER=true, but the Redis at VACCINE_QUEUE_URL is not in cluster mode"],
        [{ VACCINE_QUEUE_URL: `redis://:wrong@127.0.0.1:${port(locked)}/0` }, "cannot start: the Redis at VACCINE_QUEUE_URL refuses its credentials: WRONGPASS"],
        [{ VACCINE_QUEUE_URL: locked.url }, "cannot start: the Redis at VACCINE_QUEUE_URL refuses its credentials: NOAUTH"],
      ] as const) {
        const res = start(env);
        expect(res.status, res.stderr).toBe(2);
        expect(res.stderr).toContain(message);
        expect(res.stderr).not.toContain("secret");
      }
      // Right, it starts; and a Redis it cannot reach yet does not stop the start either.
      const right = await startProcess("dist/services/main.js", { VACCINE_ROLE: "worker", VACCINE_QUEUE_URL: cluster.url, VACCINE_QUEUE_CLUSTER: "true" });
      await right.stop();
      const down = await startProcess("dist/services/main.js", { VACCINE_ROLE: "worker", VACCINE_QUEUE_URL: "redis://127.0.0.1:1/0" });
      await down.stop();
    } finally {
      await Promise.all([single.stop(), locked.stop(), cluster.stop()]);
    }
  });

  it("exits 2 with one line naming the variable when a configured file or folder cannot be used", () => {
    const dir = mkdtempSync(join(tmpdir(), "vaccine-badfiles-"));
    try {
      const tokens = join(dir, "tokens.json");
      writeFileSync(tokens, '{"not-a-hash": 1}');
      const yaml = join(dir, "tokens.yaml");
      writeFileSync(yaml, "garbage: [");
      const file = join(dir, "a-file");
      writeFileSync(file, "");
      // Each names the variable of what cannot be used.
      for (const [env, variable] of [
        [{ VACCINE_TLS_CERT: join(dir, "missing.crt"), VACCINE_TLS_KEY: join(dir, "missing.key") }, "VACCINE_TLS_CERT"],
        [{ VACCINE_AUTH: "token", VACCINE_AUTH_TOKENS_FILE: tokens }, "VACCINE_AUTH_TOKENS_FILE"],
        [{ VACCINE_AUTH: "token", VACCINE_AUTH_TOKENS_FILE: yaml }, "VACCINE_AUTH_TOKENS_FILE"],
        [{ VACCINE_JOBS_DIR: join(file, "jobs") }, "VACCINE_JOBS_DIR"],
        [{ VACCINE_STORE_ROOT: join(file, "store") }, "VACCINE_STORE_ROOT"],
        // Node's recursive mkdir never returns there.
        [{ VACCINE_STORE_ROOT: "/proc/no-such-folder" }, "VACCINE_STORE_ROOT"],
      ] as const) {
        const res = spawnSync(process.execPath, ["--import", "tsx", "services/main.ts"], {
          env: { ...process.env, VACCINE_PORT: "0", VACCINE_STORE_ROOT: join(dir, "store"), VACCINE_JOBS_DIR: join(dir, "jobs"), ...env },
          encoding: "utf8",
          timeout: 30_000,
        });
        expect(res.status, res.stderr).toBe(2);
        expect(res.stderr).toMatch(new RegExp(`^cannot start: ${variable}=`, "m"));
        expect(res.stderr).not.toMatch(/\n\s+at /);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
