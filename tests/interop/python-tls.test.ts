// Python grpcio over TLS and mTLS, with bearer tokens and JWTs: the accepted calls reach the
// handler (a validation error with its ErrorInfo), the refused ones get the right code.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jwtAuthenticator } from "../../services/platform/jwt-auth.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { TestPki } from "../helpers/certs.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { accessPolicy } from "../../services/suite/access.ts";
import { findTools, generateStubs, PYTHON_ENV, run } from "./python-tools.ts";

const tools = findTools();
const stubs = mkdtempSync(join(tmpdir(), "vaccine-py-tls-"));
const pki = new TestPki();
const ca = pki.ca("ca");
const otherCa = pki.ca("other-ca");
const serverCert = pki.leaf("server", ca, { cn: "localhost", sans: ["DNS:localhost", "IP:127.0.0.1"], usage: "serverAuth" });
const client = pki.leaf("client", ca, { cn: "python", usage: "clientAuth" });
const stranger = pki.leaf("stranger", otherCa, { cn: "python", usage: "clientAuth" });
const tokens = join(pki.dir, "tokens.json");
writeFileSync(tokens, JSON.stringify({ [tokenHash("python-reader-token")]: { tenant: "team-py", roles: ["reader"] } }));
const jwks = join(pki.dir, "jwks.json");

let mutual: TestSuite | undefined;
let withJwt: TestSuite | undefined;
let signer: Awaited<ReturnType<typeof generateKeyPair>>;
beforeAll(async () => {
  if (tools.missing) return; // the tests below fail with the message
  await generateStubs(tools, stubs, [
    "vaccine/v1/common.proto", "vaccine/v1/training.proto", "vaccine/v1/jobs.proto", "vaccine/v1/align.proto",
    "grpc/health/v1/health.proto", "google/rpc/status.proto", "google/rpc/error_details.proto",
  ]);
  signer = await generateKeyPair("ES256", { extractable: true });
  writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(signer.publicKey)), kid: "k", alg: "ES256" }] }));
  const tls = { certFile: serverCert.cert, keyFile: serverCert.key };
  mutual = await startSuite({ server: { tls: { ...tls, clientCaFile: ca.cert }, access: { authenticator: await tokenAuthenticator(tokens), policy: accessPolicy() } } });
  withJwt = await startSuite({
    server: {
      tls,
      access: {
        authenticator: await jwtAuthenticator({ jwks, issuer: "https://idp.test/", audience: "vaccine", clockSkewSeconds: 5, maxLifetimeSeconds: 86_400, tenantClaim: "tenant", rolesClaim: "roles" }),
        policy: accessPolicy(),
      },
    },
  });
});
afterAll(async () => {
  await mutual?.close();
  await withJwt?.close();
  pki.close();
  rmSync(stubs, { recursive: true, force: true });
});

async function python(suite: TestSuite, options: Record<string, string>) {
  if (tools.missing) throw new Error(tools.missing);
  const { stdout } = await run(tools.python!, ["tests/interop/python_tls_client.py", stubs, `127.0.0.1:${suite.server.port}`, JSON.stringify(options)], { env: PYTHON_ENV });
  return JSON.parse(stdout);
}

const jwt = (exp: number) =>
  new SignJWT({ tenant: "team-py", roles: ["reader"] }).setProtectedHeader({ alg: "ES256", kid: "k" }).setIssuer("https://idp.test/").setAudience("vaccine").setExpirationTime(exp).sign(signer.privateKey);
const now = () => Math.floor(Date.now() / 1000);

describe("Python grpcio over TLS", () => {
  it("mTLS with a token: health, then the call reaches the handler's validation", async () => {
    expect(await python(mutual!, { ca: ca.cert, cert: client.cert, key: client.key, token: "python-reader-token" })).toEqual({
      health: "SERVING",
      list: { code: "INVALID_ARGUMENT", reason: "FIELD_INVALID" },
    });
  });

  it("mTLS: a certificate but no token is UNAUTHENTICATED (health stays open)", async () => {
    expect(await python(mutual!, { ca: ca.cert, cert: client.cert, key: client.key })).toEqual({
      health: "SERVING",
      list: { code: "UNAUTHENTICATED", reason: "CREDENTIALS_MISSING" },
    });
  });

  it("mTLS: no client certificate, or one from another CA, is refused in the handshake (UNAVAILABLE)", async () => {
    const none = await python(mutual!, { ca: ca.cert, token: "python-reader-token" });
    expect(none.health).toBe("UNAVAILABLE");
    expect(none.list.code).toBe("UNAVAILABLE");
    const foreign = await python(mutual!, { ca: ca.cert, cert: stranger.cert, key: stranger.key, token: "python-reader-token" });
    expect(foreign.list.code).toBe("UNAVAILABLE");
  });

  it("TLS with a JWT: valid is accepted, expired is UNAUTHENTICATED with TOKEN_EXPIRED", async () => {
    expect((await python(withJwt!, { ca: ca.cert, token: await jwt(now() + 300) })).list).toEqual({ code: "INVALID_ARGUMENT", reason: "FIELD_INVALID" });
    expect((await python(withJwt!, { ca: ca.cert, token: await jwt(now() - 600) })).list).toEqual({ code: "UNAUTHENTICATED", reason: "TOKEN_EXPIRED" });
  });
});
