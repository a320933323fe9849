// The server's limits: message size (refused from the length prefix, unread), the default
// deadline of unary calls, concurrent streams per connection, idle connections, keepalive
// pings nobody answers, and connections that never say anything.
import http2 from "node:http2";
import net from "node:net";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { MAX_TIMER_MS, streamIdleTimeout, withDeadlineInRange } from "../../services/platform/deadline.ts";
import { startServer, type RunningServer, type ServiceModule } from "../../services/platform/server.ts";
import { createClients } from "../../services/client/clients.ts";
import { createLogger } from "../../services/platform/log.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { oversizedConnect, oversizedGrpc } from "../helpers/oversized.ts";

/** ListAlignJobs sleeps `page_size` ms (or until its signal aborts) and reports whether it was aborted. */
const aborted: boolean[] = [];
const slowAlign: ServiceModule = {
  desc: AlignService,
  register(router) {
    router.service(AlignService, {
      async listAlignJobs(req, ctx) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, req.pageSize);
          ctx.signal.addEventListener("abort", () => {
            clearTimeout(t);
            aborted.push(true);
            resolve();
          });
        });
        return { nextPageToken: ctx.signal.aborted ? "aborted" : "done" };
      },
      async *watchAlignJob(req, ctx) {
        await new Promise((r) => setTimeout(r, Number(req.jobId)));
        yield { event: { event: { case: undefined } } } as never;
        void ctx;
      },
    });
  },
};

/**
 * UploadDataset counts the messages it reads and records why its request stream broke; after a
 * metadata message named "slow" it takes 500 ms over each message.
 */
const uploadBreaks: (string | undefined)[] = [];
const countingUploads: ServiceModule = {
  desc: DatasetService,
  register(router) {
    router.service(DatasetService, {
      async uploadDataset(requests) {
        let n = 0;
        let slow = false;
        try {
          for await (const m of requests) {
            n++;
            slow ||= m.content.case === "metadata" && m.content.value.displayName === "slow";
            if (slow) await new Promise((r) => setTimeout(r, 500));
          }
        } catch (err) {
          uploadBreaks.push(ConnectError.from(err).findDetails(ErrorInfoSchema)[0]?.reason);
          throw err;
        }
        return { dataset: { rowCount: BigInt(n) } };
      },
    });
  },
};

let server: RunningServer;
beforeAll(async () => {
  server = await startServer({
    services: [slowAlign, countingUploads],
    shutdownTimeoutMs: 1000,
    limits: { maxMessageBytes: 1 << 20, unaryDeadlineMs: 300, streamIdleMs: 300, maxConcurrentStreams: 7, idleTimeoutMs: 400, keepaliveIntervalMs: 100, keepaliveTimeoutMs: 200, handshakeTimeoutMs: 300 },
  });
});
afterAll(() => server?.shutdown());

const align = () => createClient(AlignService, createGrpcTransport({ baseUrl: server.url }));

describe("message size", () => {
  it("refuses a gRPC message over the limit from its length prefix, without reading it", async () => {
    const r = await oversizedGrpc(server.url, "/vaccine.v1.AlignService/ListAlignJobs", 64 << 20);
    expect(r.status).toBe(Code.ResourceExhausted);
    expect(r.message).toBe(`the request message is ${64 << 20} bytes, more than the 1048576 bytes this server reads; send less per message (uploads stream chunks)`);
    expect(r.sent).toBeLessThan(8 << 20);
  });

  it("refuses a Connect request by its Content-Length before reading the body", async () => {
    const r = await oversizedConnect(server.port, "/vaccine.v1.AlignService/ListAlignJobs", 300 << 20);
    expect(r.status).toBe(429);
    expect(r.message).toMatch(/^resource_exhausted: the request message is \d+ bytes, more than the 1048576 bytes this server reads/);
  });

  it("answers the suite's own clients MESSAGE_TOO_LARGE past Node's 10 MB session memory, and the connection stays usable", async () => {
    // A connect-node transport with Node's defaults fails such a call itself, ENHANCE_YOUR_CALM,
    // and every later call on its connection.
    const { align: client } = createClients(server.url);
    const e = await rpcFailure(() => client.listAlignJobs({ pageSize: 1, pageToken: "x".repeat(17 << 20) }));
    expect(e.code).toBe(Code.ResourceExhausted);
    expect(e.info?.reason).toBe("MESSAGE_TOO_LARGE");
    expect((await client.listAlignJobs({ pageSize: 1 })).nextPageToken).toBe("done");
  });

  it("refuses an over-limit message from a connect client, and the next call works", async () => {
    const e = await rpcFailure(() => align().listAlignJobs({ pageSize: 1, pageToken: "x".repeat(2 << 20) }));
    expect(e.code).toBe(Code.ResourceExhausted);
    expect(e.info).toMatchObject({ reason: "MESSAGE_TOO_LARGE", metadata: { max_bytes: "1048576" } });
    expect((await align().listAlignJobs({ pageSize: 1 })).nextPageToken).toBe("done");
  });
});

describe("deadlines", () => {
  it("gives unary calls without a deadline the default one: DEADLINE_EXCEEDED, and the handler's signal aborts", async () => {
    aborted.length = 0;
    const started = Date.now();
    const e = await rpcFailure(() => align().listAlignJobs({ pageSize: 5000 }));
    expect(e.code).toBe(Code.DeadlineExceeded);
    expect(e.message).toMatch(/default deadline of 300 ms/);
    expect(e.info).toMatchObject({ reason: "DEFAULT_DEADLINE_EXCEEDED", metadata: { deadline_ms: "300" } });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(aborted).toEqual([true]);
  });

  it("leaves a client's own deadline alone, longer or shorter", async () => {
    expect((await align().listAlignJobs({ pageSize: 600 }, { timeoutMs: 5000 })).nextPageToken).toBe("done");
    const connect = createClient(AlignService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    expect((await connect.listAlignJobs({ pageSize: 600 }, { timeoutMs: 5000 })).nextPageToken).toBe("done");
  });

  it("keeps a client's deadline past a timer's range (30 days) instead of ending the call at once", async () => {
    const days30 = { grpc: { "grpc-timeout": "720H" }, connect: { "connect-timeout-ms": String(30 * 86_400_000) } };
    expect((await align().listAlignJobs({ pageSize: 400 }, { headers: days30.grpc })).nextPageToken).toBe("done");
    const connect = createClient(AlignService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    expect((await connect.listAlignJobs({ pageSize: 400 }, { headers: days30.connect })).nextPageToken).toBe("done");
    // A Watch is what such deadlines are given to.
    for await (const _ of align().watchAlignJob({ jobId: "400" }, { headers: days30.grpc })) void _;
  });

  it("cuts such a deadline to the longest a timer holds, and leaves the others as sent", async () => {
    const seen: (string | null)[] = [];
    const handler = withDeadlineInRange(Object.assign(async (req: { header: Headers }) => {
      seen.push(req.header.get("grpc-timeout") ?? req.header.get("connect-timeout-ms"));
      return { status: 200 };
    }, { method: AlignService.method.listAlignJobs }) as never);
    for (const header of [{ "grpc-timeout": "720H" } as Record<string, string>, { "grpc-timeout": "99999999n" }, { "grpc-timeout": "2147483S" }, { "grpc-timeout": "2147484S" }, { "grpc-timeout": "soon" }, { "connect-timeout-ms": "2592000000" }, { "connect-timeout-ms": "5000" }]) {
      await handler({ header: new Headers(header) } as never);
    }
    expect(seen).toEqual(["2147483S", "99999999n", "2147483S", "2147483S", "soon", String(MAX_TIMER_MS), "5000"]);
  });

  it("does not apply to streams", async () => {
    for await (const _ of align().watchAlignJob({ jobId: "600" })) void _;
  });
});

describe("client streams", () => {
  const uploads = () => createClient(DatasetService, createGrpcTransport({ baseUrl: server.url }));
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it("keep an upload whose messages each come within the idle limit, however long it takes in all", async () => {
    const steady = async function* () {
      for (let i = 0; i < 6; i++) {
        await sleep(150);
        yield {};
      }
    };
    // 900 ms in all, three times the limit.
    expect((await uploads().uploadDataset(steady())).dataset?.rowCount).toBe(6n);
  });

  it("count only the wait for the client, not the handler's time over a message", async () => {
    const quick = async function* () {
      yield { content: { case: "metadata" as const, value: { displayName: "slow" } } };
      yield {};
      yield {};
    };
    expect((await uploads().uploadDataset(quick())).dataset?.rowCount).toBe(3n);
  });

  it("keep no idle timer while the handler works on a message (called directly)", async () => {
    // The interceptor's timers are those of its delay (an odd one, so no other code's count).
    const IDLE_MS = 987;
    const live = new Set<unknown>();
    const realSet = globalThis.setTimeout;
    const realClear = globalThis.clearTimeout;
    const setSpy = vi.spyOn(globalThis, "setTimeout").mockImplementation(((fn: () => void, ms?: number) => {
      const t = realSet(() => (live.delete(t), fn()), ms);
      if (ms === IDLE_MS) live.add(t);
      return t;
    }) as never);
    const clearSpy = vi.spyOn(globalThis, "clearTimeout").mockImplementation(((t: NodeJS.Timeout) => (live.delete(t), realClear(t))) as never);
    try {
      const pending: number[] = [];
      const messages = (async function* () {
        yield 1;
        yield 2;
      })();
      const next = async (req: { message: AsyncIterable<number> }) => {
        // The handler's turn: the wait for the client is over, so none of its timers runs.
        for await (const _ of req.message) pending.push(live.size);
        return { stream: false };
      };
      await streamIdleTimeout(IDLE_MS)(next as never)({ stream: true, method: { methodKind: "client_streaming" }, message: messages } as never);
      expect(pending).toEqual([0, 0]);
      expect(setSpy.mock.calls.filter(([, ms]) => ms === IDLE_MS).length).toBeGreaterThanOrEqual(2);
    } finally {
      setSpy.mockRestore();
      clearSpy.mockRestore();
    }
  });

  it("end an upload whose next message does not come: DEADLINE_EXCEEDED, STREAM_IDLE, and the handler's stream breaks", async () => {
    uploadBreaks.length = 0;
    const stalled = new AbortController();
    const stall = async function* () {
      yield {};
      await new Promise((r) => stalled.signal.addEventListener("abort", r));
    };
    const started = Date.now();
    const e = await rpcFailure(() => uploads().uploadDataset(stall()));
    stalled.abort();
    expect(e).toMatchObject({ code: Code.DeadlineExceeded, info: { reason: "STREAM_IDLE", metadata: { idle_ms: "300" } } });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(uploadBreaks).toEqual(["STREAM_IDLE"]);
  });
});

describe("connections", () => {
  function connect(): Promise<http2.ClientHttp2Session> {
    return new Promise((resolve, reject) => {
      const s = http2.connect(server.url);
      s.once("remoteSettings", () => resolve(s));
      s.once("error", reject);
    });
  }

  it("announces the concurrent stream limit", async () => {
    const s = await connect();
    expect(s.remoteSettings.maxConcurrentStreams).toBe(7);
    s.destroy();
  });

  it("closes a connection with no call open once idle, but not while a call is open", async () => {
    const s = await connect();
    const goaway = new Promise<number>((resolve) => s.once("goaway", resolve));
    // A stream longer than the idle timeout keeps it open.
    const req = s.request({ ":method": "POST", ":path": "/vaccine.v1.AlignService/WatchAlignJob", "content-type": "application/grpc", te: "trailers" });
    const body = Buffer.from([0x0a, 0x03, 0x38, 0x30, 0x30]); // job_id: "800"
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(body.length, 1);
    req.end(Buffer.concat([prefix, body]));
    req.on("data", () => {});
    const openedAt = Date.now();
    await new Promise((r) => req.once("close", r));
    expect(Date.now() - openedAt).toBeGreaterThanOrEqual(700);
    expect(s.closed || s.destroyed).toBe(false);
    expect(await goaway).toBe(http2.constants.NGHTTP2_NO_ERROR);
    s.destroy();
  });

  it("drops a peer that does not answer keepalive pings", async () => {
    const socket = net.connect(server.port, "127.0.0.1");
    await new Promise((r) => socket.once("connect", r));
    // The HTTP/2 preface and an empty SETTINGS frame; then silence: what arrives is read and ignored, no PING is answered.
    socket.write(Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
    socket.resume();
    const started = Date.now();
    await new Promise((r) => socket.once("close", r));
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("drops a connection that never sends a byte", async () => {
    const socket = net.connect(server.port, "127.0.0.1");
    const started = Date.now();
    socket.resume();
    await new Promise((r) => socket.once("close", r));
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(3000);
  });
});

describe("shutdown timeout", () => {
  it("says so when background work (a running job) did not finish within it", async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (s: string) => void lines.push(JSON.parse(s)) });
    const own = await startServer({ services: [slowAlign], shutdownTimeoutMs: 100, logger });
    own.onShutdown(() => new Promise(() => {})); // never done
    await own.shutdown();
    expect(lines.find((l) => l.level === "warn" && String(l.msg).startsWith("background work"))).toMatchObject({ timeout_ms: 100 });
    expect(lines.at(-1)?.msg).toBe("stopped");
  });
});
