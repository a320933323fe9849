// TLS and mTLS on the one port, with certificates made by openssl at run time: grpc-js and
// connect clients in all three protocols (ALPN h2 and http/1.1), refused clients, and a
// certificate rotated the way cert-manager does it (a Secret volume's `..data` symlink
// swapped) picked up without a restart.
import { mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { X509Certificate } from "node:crypto";
import tls from "node:tls";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { TestPki, type KeyPair } from "../helpers/certs.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

const definition = protoLoader.loadSync(["vaccine/v1/align.proto", "grpc/health/v1/health.proto"], { includeDirs: ["proto", "vendor"], keepCase: true, defaults: true, enums: String });
const pkg = grpc.loadPackageDefinition(definition) as any;

const pki = new TestPki();
const ca = pki.ca("ca");
const otherCa = pki.ca("other-ca");
const server1 = pki.leaf("server1", ca, { cn: "localhost", sans: ["DNS:localhost", "IP:127.0.0.1"], usage: "serverAuth" });
const server2 = pki.leaf("server2", ca, { cn: "localhost", sans: ["DNS:localhost", "IP:127.0.0.1"], usage: "serverAuth" });
const client = pki.leaf("client", ca, { cn: "alice", sans: ["URI:spiffe://test/team-a/alice"], usage: "clientAuth" });
const stranger = pki.leaf("stranger", otherCa, { cn: "mallory", usage: "clientAuth" });
const expired = pki.leaf("expired", ca, { cn: "localhost", sans: ["DNS:localhost"], usage: "serverAuth", expired: true });

// The layout of a Kubernetes Secret volume: tls.crt -> ..data/tls.crt, ..data -> a timestamped folder.
const secret = join(pki.dir, "secret");
function projectSecret(pair: KeyPair, generation: number) {
  const dir = join(secret, `..${generation}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "tls.crt"), pair.certPem);
  writeFileSync(join(dir, "tls.key"), pair.keyPem);
  // Atomic swap, as the kubelet does it.
  symlinkSync(`..${generation}`, join(secret, "..data_tmp"));
  renameSync(join(secret, "..data_tmp"), join(secret, "..data"));
}
projectSecret(server1, 1);
symlinkSync("..data/tls.crt", join(secret, "tls.crt"));
symlinkSync("..data/tls.key", join(secret, "tls.key"));

const logged: string[] = [];
const logger = pino({ level: "info" }, { write: (line: string) => void logged.push(line) });
const lines = (msg: string) => logged.map((l) => JSON.parse(l)).filter((l) => l.msg === msg);

let plain: TestSuite;
let mutual: TestSuite;
const channels: grpc.Client[] = [];
beforeAll(async () => {
  plain = await startSuite({ server: { tls: { certFile: join(secret, "tls.crt"), keyFile: join(secret, "tls.key"), watch: { debounceMs: 50, pollMs: 250 } }, healthPort: 0, logger } });
  mutual = await startSuite({ server: { tls: { certFile: server1.cert, keyFile: server1.key, clientCaFile: ca.cert }, logger } });
});
afterAll(async () => {
  for (const c of channels) c.close();
  await plain?.close();
  await mutual?.close();
  pki.close();
});

function grpcJs(port: number, creds: grpc.ChannelCredentials) {
  // The name the server certificate is checked against (an IP is not a TLS server name).
  const options = { "grpc.ssl_target_name_override": "localhost", "grpc.default_authority": "localhost" };
  const health = new pkg.grpc.health.v1.Health(`127.0.0.1:${port}`, creds, options);
  const align = new pkg.vaccine.v1.AlignService(`127.0.0.1:${port}`, creds, options);
  channels.push(health, align);
  return {
    check: () => new Promise<string>((resolve, reject) => health.Check({ service: "" }, (err: grpc.ServiceError | null, r: { status: string }) => (err ? reject(err) : resolve(r.status)))),
    listBad: () => new Promise<grpc.ServiceError>((resolve) => align.ListAlignJobs({ page_size: -5 }, (err: grpc.ServiceError) => resolve(err))),
  };
}

const failure = (p: Promise<unknown>) => p.then(() => { throw new Error("expected the call to fail"); }, (err: grpc.ServiceError) => err);

/** The server certificate a new connection is shown. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, ca: ca.certPem, servername: "localhost", ALPNProtocols: ["h2"] }, () => {
      resolve(s.getPeerCertificate().fingerprint256);
      s.end();
    });
    s.on("error", reject);
  });
}

describe("TLS", () => {
  it("grpc-js calls over TLS: health and a validation error", async () => {
    const c = grpcJs(plain.server.port, grpc.credentials.createSsl(ca.certPem));
    expect(await c.check()).toBe("SERVING");
    const err = await c.listBad();
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(plain.server.url).toMatch(/^https:\/\//);
  });

  it.each([
    ["grpc (ALPN h2)", () => createGrpcTransport({ baseUrl: plain.server.url, nodeOptions: { ca: ca.certPem, servername: "localhost" } })],
    ["grpc-web (ALPN h2)", () => createGrpcWebTransport({ baseUrl: plain.server.url, httpVersion: "2", nodeOptions: { ca: ca.certPem, servername: "localhost" } })],
    ["connect (ALPN http/1.1)", () => createConnectTransport({ baseUrl: plain.server.url, httpVersion: "1.1", nodeOptions: { ca: ca.certPem, servername: "localhost" } })],
  ])("%s keeps working over TLS", async (_, transport) => {
    const t = transport();
    expect((await createClient(Health, t).check({ service: "" })).status).toBe(S.SERVING);
    const e = await rpcFailure(() => createClient(AlignService, t).listAlignJobs({ pageSize: -5 }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.info?.reason).toBe("FIELD_INVALID");
  });

  it("refuses a plaintext client and a client that does not trust the server's CA", async () => {
    const cleartext = grpcJs(plain.server.port, grpc.credentials.createInsecure());
    expect((await failure(cleartext.check())).code).toBe(grpc.status.UNAVAILABLE);
    const distrustful = grpcJs(plain.server.port, grpc.credentials.createSsl(otherCa.certPem));
    expect((await failure(distrustful.check())).code).toBe(grpc.status.UNAVAILABLE);
  });

  it("picks up a rotated certificate without a restart; open connections keep working", async () => {
    const open = grpcJs(plain.server.port, grpc.credentials.createSsl(ca.certPem));
    expect(await open.check()).toBe("SERVING");
    const before = await servedFingerprint(plain.server.port);
    expect(before).toBe(new X509Certificate(server1.certPem).fingerprint256);
    projectSecret(server2, 2);
    const rotated = new X509Certificate(server2.certPem).fingerprint256;
    const deadline = Date.now() + 10_000;
    let now = before;
    while (now !== rotated && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      now = await servedFingerprint(plain.server.port);
    }
    expect(now).toBe(rotated);
    expect(lines("reloaded").map((l) => l.what)).toContain("TLS certificate");
    expect(await open.check()).toBe("SERVING");
    const fresh = grpcJs(plain.server.port, grpc.credentials.createSsl(ca.certPem));
    expect(await fresh.check()).toBe("SERVING");
  });

  it("keeps the current certificate when a rotation is half-written (key not matching)", async () => {
    const current = await servedFingerprint(plain.server.port);
    const dir = join(secret, "..3");
    mkdirSync(dir);
    writeFileSync(join(dir, "tls.crt"), server1.certPem);
    writeFileSync(join(dir, "tls.key"), readFileSync(server2.key)); // another certificate's key
    symlinkSync("..3", join(secret, "..data_tmp"));
    renameSync(join(secret, "..data_tmp"), join(secret, "..data"));
    const deadline = Date.now() + 10_000;
    while (lines("could not load changed credentials; keeping the current ones").length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(lines("could not load changed credentials; keeping the current ones")[0]).toMatchObject({ what: "TLS certificate", level: 40 });
    expect(await servedFingerprint(plain.server.port)).toBe(current);
    // The broken content is reported once, not at every poll.
    await new Promise((r) => setTimeout(r, 600));
    expect(lines("could not load changed credentials; keeping the current ones")).toHaveLength(1);
  });

  it("refuses an expired certificate, at start and in a rotation, and warns of one about to end", async () => {
    // The suite's certificates last a day: the start warned of each.
    expect(lines("TLS certificate expires soon")[0]).toMatchObject({ level: 40, days_left: 0, file: join(secret, "tls.crt") });
    await expect(startSuite({ server: { tls: { certFile: expired.cert, keyFile: expired.key }, logger } })).rejects.toMatchObject({
      code: "ERR_TLS_CERT_EXPIRED",
      message: `the certificate in ${expired.cert} expired on 2020-01-02T00:00:00.000Z: every client would refuse it`,
    });
    const current = await servedFingerprint(plain.server.port);
    projectSecret(expired, 4);
    const deadline = Date.now() + 10_000;
    const refused = () => lines("could not load changed credentials; keeping the current ones").filter((l) => String(l.error).includes("expired on"));
    while (refused().length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(refused()).toHaveLength(1);
    expect(await servedFingerprint(plain.server.port)).toBe(current);
    projectSecret(server1, 5);
  });
});

describe("plaintext health port", () => {
  it("answers grpc.health.v1 in plaintext for probes, and nothing else", async () => {
    const t = createGrpcTransport({ baseUrl: `http://127.0.0.1:${plain.server.healthPort}` });
    expect((await createClient(Health, t).check({ service: "vaccine.v1.AlignService" })).status).toBe(S.SERVING);
    const e = await rpcFailure(() => createClient(AlignService, t).listAlignJobs({}));
    expect(e.code).toBe(Code.Unimplemented);
  });
});

describe("mTLS", () => {
  it("accepts a client certificate signed by the client CA (grpc-js and connect)", async () => {
    const c = grpcJs(mutual.server.port, grpc.credentials.createSsl(ca.certPem, client.keyPem, client.certPem));
    expect(await c.check()).toBe("SERVING");
    expect((await c.listBad()).code).toBe(grpc.status.INVALID_ARGUMENT);
    const t = createGrpcTransport({ baseUrl: mutual.server.url, nodeOptions: { ca: ca.certPem, cert: client.certPem, key: client.keyPem, servername: "localhost" } });
    expect((await createClient(Health, t).check({ service: "" })).status).toBe(S.SERVING);
  });

  it("refuses a client without a certificate, and one from another CA, in the handshake", async () => {
    const none = grpcJs(mutual.server.port, grpc.credentials.createSsl(ca.certPem));
    expect((await failure(none.check())).code).toBe(grpc.status.UNAVAILABLE);
    const foreign = grpcJs(mutual.server.port, grpc.credentials.createSsl(ca.certPem, stranger.keyPem, stranger.certPem));
    expect((await failure(foreign.check())).code).toBe(grpc.status.UNAVAILABLE);
    const refused = lines("TLS handshake refused");
    expect(refused.length).toBeGreaterThanOrEqual(2);
    expect(refused.map((l) => l.error).join(" ")).toMatch(/certificate/i);
  });
});
