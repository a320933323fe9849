// Tenants from client certificates: the TLS layer verifies the chain, a mapping file names
// which identity (URI/DNS SAN or subject CN) acts for which tenant with which roles.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mtlsAuthenticator } from "../../services/platform/mtls-auth.ts";
import { subjectAltNames } from "../../services/platform/peer.ts";
import { startAccessServer, type AccessServer } from "../helpers/access-server.ts";
import { TestPki, type KeyPair } from "../helpers/certs.ts";
import { errorDetails, rpcFailure } from "../helpers/errors.ts";
import { rawGrpc } from "../helpers/raw-grpc.ts";

const pki = new TestPki();
const ca = pki.ca("ca");
const serverCert = pki.leaf("server", ca, { cn: "localhost", sans: ["DNS:localhost", "IP:127.0.0.1"], usage: "serverAuth" });
const alice = pki.leaf("alice", ca, { cn: "alice", sans: ["URI:spiffe://cluster/ns/team-a/sa/trainer"], usage: "clientAuth" });
const bob = pki.leaf("bob", ca, { cn: "bob", usage: "clientAuth" });
const carol = pki.leaf("carol", ca, { cn: "carol", sans: ["DNS:carol.example"], usage: "clientAuth" });
const map = join(pki.dir, "mtls.json");
writeFileSync(map, JSON.stringify({
  "URI:spiffe://cluster/ns/team-a/sa/trainer": { tenant: "team-a", roles: ["trainer"] },
  "CN=bob": { tenant: "team-b", roles: ["reader"], principal: "bob@team-b" },
}));

let s: AccessServer;
beforeAll(async () => {
  s = await startAccessServer({
    tls: { certFile: serverCert.cert, keyFile: serverCert.key, clientCaFile: ca.cert },
    authenticator: (logger) => mtlsAuthenticator(map, logger),
  });
});
afterAll(async () => {
  await s?.server.shutdown();
  pki.close();
});

const as = (who: KeyPair) => s.align(createGrpcTransport({ baseUrl: s.server.url, nodeOptions: { ca: ca.certPem, cert: who.certPem, key: who.keyPem, servername: "localhost" } }));

describe("mTLS authentication", () => {
  it("maps a SPIFFE URI and a subject CN to their tenants", async () => {
    s.seen.length = 0;
    await as(alice).createAlignJob({});
    await as(bob).listAlignJobs({});
    expect(s.seen).toEqual([
      { tenant: "team-a", principal: "URI:spiffe://cluster/ns/team-a/sa/trainer", roles: ["trainer"], via: "mtls" },
      { tenant: "team-b", principal: "bob@team-b", roles: ["reader"], via: "mtls" },
    ]);
  });

  it("refuses a mapped reader a trainer's method, and an unmapped certificate", async () => {
    expect((await rpcFailure(() => as(bob).createAlignJob({}))).code).toBe(Code.PermissionDenied);
    const e = await rpcFailure(() => as(carol).listAlignJobs({}));
    expect(e.code).toBe(Code.Unauthenticated);
    expect(e.info?.reason).toBe("CERTIFICATE_UNMAPPED");
    expect(e.info?.metadata.identities).toBe("DNS:carol.example,CN=carol");
  });
});

describe("requests refused before any interceptor", () => {
  /** A ListAlignJobs whose message does not decode (field 1, its length varint cut short), over gRPC from `who`'s certificate. */
  const undecodable = async (who: KeyPair) =>
    errorDetails(
      (await rawGrpc(s.server.url, "/vaccine.v1.AlignService/ListAlignJobs", new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), {}, { ca: ca.certPem, cert: who.certPem, key: who.keyPem, servername: "localhost" })).error,
    );

  it("authenticate the certificate first: a mapped one gets the decode error, an unmapped one CERTIFICATE_UNMAPPED", async () => {
    expect(await undecodable(bob)).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE" } });
    expect(await undecodable(carol)).toMatchObject({ code: Code.Unauthenticated, info: { reason: "CERTIFICATE_UNMAPPED" } });
  });
});

describe("subject alternative names", () => {
  it("splits Node's list, unquoting values that hold a comma (as Node prints them)", () => {
    expect(subjectAltNames('DNS:a.example, URI:spiffe://x/y, email:"a\\u002c b@example.com", IP Address:127.0.0.1')).toEqual([
      "DNS:a.example",
      "URI:spiffe://x/y",
      "email:a, b@example.com",
      "IP Address:127.0.0.1",
    ]);
    expect(subjectAltNames("")).toEqual([]);
  });
});
