/**
 * A throwaway redis-server for tests and benches: a free loopback port, no persistence, a temp
 * folder, stopped by its pid; or a cluster of them. Debian's redis-server (and its redis-cli)
 * must be on PATH (.ci/run installs them).
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestRedis {
  url: string;
  port: number;
  /**
   * Shuts it down with its data saved and starts it again on the same port and folder, as a pod
   * restarted with its volume; `whileDown` runs in between. A cluster's node: until the cluster is whole again.
   */
  restart(whileDown?: () => Promise<unknown>): Promise<void>;
  stop(): Promise<void>;
}

/** True when redis-server can be run here (tests say what to install when it is not). */
export function hasRedisServer(): boolean {
  return spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** `args`: more redis-server options, e.g. ["--requirepass", "secret"]. */
export async function startRedis(args: string[] = []): Promise<TestRedis> {
  return spawnRedis(args);
}

/**
 * A throwaway Redis Cluster of `size` masters (no replicas), formed by redis-cli; `url` names
 * its first node, as a client's seed. Stopping it stops every node.
 */
export async function startRedisCluster(size = 3): Promise<TestRedis & { nodes: TestRedis[] }> {
  const servers: TestRedis[] = [];
  const stop = async () => void (await Promise.all(servers.map((s) => s.stop())));
  try {
    for (let i = 0; i < size; i++) servers.push(await spawnRedis(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]));
    const addresses = servers.map((s) => `127.0.0.1:${s.port}`);
    const formed = spawnSync("redis-cli", ["--cluster", "create", ...addresses, "--cluster-replicas", "0", "--cluster-yes"], { encoding: "utf8", timeout: 30_000 });
    if (formed.status !== 0) throw new Error(`redis-cli --cluster create failed:\n${formed.stdout}${formed.stderr}`);
    await whole(servers);
  } catch (err) {
    await stop();
    throw err;
  }
  const nodes = servers.map((s) => ({ ...s, restart: async (whileDown?: () => Promise<unknown>) => (await s.restart(whileDown), await whole(servers)) }));
  return { ...nodes[0], nodes, stop };
}

/** Until every node knows every slot's owner, as a client's first command needs. */
async function whole(servers: TestRedis[]): Promise<void> {
  for (let i = 0; !servers.every((s) => clusterInfo(s.port).includes("cluster_state:ok")); i++) {
    if (i > 400) throw new Error(`the cluster did not become whole:\n${clusterInfo(servers[0].port)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function clusterInfo(port: number): string {
  return spawnSync("redis-cli", ["-p", String(port), "cluster", "info"], { encoding: "utf8" }).stdout ?? "";
}

async function spawnRedis(args: string[]): Promise<TestRedis> {
  if (!hasRedisServer()) throw new Error("redis-server is not on PATH: apt-get install -y redis-server");
  const dir = mkdtempSync(join(tmpdir(), "vaccine-redis-"));
  const port = await freePort();
  let server = await launch(port, dir, args).catch((err) => {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  });
  return {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    restart: async (whileDown) => {
      spawnSync("redis-cli", ["-p", String(port), "shutdown", "save"]);
      await server.exited;
      await whileDown?.();
      server = await launch(port, dir, args);
    },
    stop: async () => {
      await server.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** redis-server on `port` with its files in `dir`, once it accepts connections. */
async function launch(port: number, dir: string, args: string[]): Promise<{ exited: Promise<void>; kill(): Promise<void> }> {
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid!, "SIGKILL");
      await exited;
    }
  };
  for (let i = 0; !(await accepts(port)); i++) {
    if (child.exitCode !== null || i > 200) {
      await kill();
      throw new Error(`redis-server did not start on port ${port}:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return { exited, kill };
}
