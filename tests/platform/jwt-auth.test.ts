// Bearer JWTs verified with jose against a JWKS file (reloaded on change) or an https URL:
// expiry with clock skew, lifetime bound, issuer, audience, signature, algorithm, tenant and roles claims.
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type FetchImplementation, type JWTPayload } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { StatusSchema } from "../../gen/google/rpc/status_pb.ts";
import { jwtAuthenticator, type JwtOptions } from "../../services/platform/jwt-auth.ts";
import { bearer, startAccessServer, type AccessServer } from "../helpers/access-server.ts";
import { TestPki } from "../helpers/certs.ts";
import { rpcFailure } from "../helpers/errors.ts";

const ISSUER = "https://idp.test/";
const AUDIENCE = "vaccine";
const dir = mkdtempSync(join(tmpdir(), "vaccine-jwks-"));
const jwksFile = join(dir, "jwks.json");

type Key = { kid: string; privateKey: CryptoKey; publicKey: CryptoKey };
async function key(kid: string): Promise<Key> {
  return { kid, ...(await generateKeyPair("ES256", { extractable: true })) };
}
async function writeJwks(keys: Key[]) {
  const jwks = { keys: await Promise.all(keys.map(async (k) => ({ ...(await exportJWK(k.publicKey)), kid: k.kid, alg: "ES256", use: "sig" }))) };
  writeFileSync(join(dir, "next.json"), JSON.stringify(jwks));
  renameSync(join(dir, "next.json"), jwksFile);
  return jwks;
}

const now = () => Math.floor(Date.now() / 1000);
function sign(k: Key, claims: JWTPayload = {}, options: { exp?: number | null; iat?: number | null; iss?: string; aud?: string; sub?: string } = {}) {
  const jwt = new SignJWT({ tenant: "team-a", roles: ["trainer"], ...claims })
    .setProtectedHeader({ alg: "ES256", kid: k.kid })
    .setIssuer(options.iss ?? ISSUER)
    .setAudience(options.aud ?? AUDIENCE)
    .setSubject(options.sub ?? "alice");
  if (options.iat !== null) jwt.setIssuedAt(options.iat ?? now());
  if (options.exp !== null) jwt.setExpirationTime(options.exp ?? now() + 300);
  return jwt.sign(k.privateKey);
}

const DAY = 86_400;
const base: Omit<JwtOptions, "jwks"> = { issuer: ISSUER, audience: AUDIENCE, clockSkewSeconds: 60, maxLifetimeSeconds: DAY, tenantClaim: "tenant", rolesClaim: "roles" };
let k1: Key;
let k2: Key;
let s: AccessServer;
beforeAll(async () => {
  [k1, k2] = await Promise.all([key("k1"), key("k2")]);
  await writeJwks([k1]);
  s = await startAccessServer({ authenticator: (logger) => jwtAuthenticator({ ...base, jwks: jwksFile, watch: { debounceMs: 20, pollMs: 200 } }, logger) });
});
afterAll(async () => {
  await s?.server.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

const refusal = async (token: string | Promise<string>) => rpcFailure(async () => s.align().listAlignJobs({}, bearer(await token)));

describe("JWT authentication with a JWKS file", () => {
  it("accepts a valid token: tenant and roles from their claims, principal from sub", async () => {
    s.seen.length = 0;
    await s.align().createAlignJob({}, bearer(await sign(k1)));
    expect(s.seen).toEqual([{ tenant: "team-a", principal: "alice", roles: ["trainer"], via: "jwt" }]);
  });

  it("tolerates the configured clock skew, and no more", async () => {
    await s.align().listAlignJobs({}, bearer(await sign(k1, {}, { exp: now() - 30 })));
    const e = await refusal(sign(k1, {}, { exp: now() - 120 }));
    expect(e.code).toBe(Code.Unauthenticated);
    expect(e.info?.reason).toBe("TOKEN_EXPIRED");
  });

  it("refuses an expired token from grpc-js with UNAUTHENTICATED and the ErrorInfo in grpc-status-details-bin", async () => {
    const c = new grpc.Client(`127.0.0.1:${s.server.port}`, grpc.credentials.createInsecure());
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${await sign(k1, {}, { exp: now() - 600 })}`);
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      c.makeUnaryRequest("/vaccine.v1.AlignService/ListAlignJobs", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), metadata, (e) => resolve(e!)),
    );
    c.close();
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    const status = fromBinary(StatusSchema, err.metadata.get("grpc-status-details-bin")[0] as Buffer);
    expect(anyUnpack(status.details[0], ErrorInfoSchema)?.reason).toBe("TOKEN_EXPIRED");
  });

  it.each([
    ["another audience", () => sign(k1, {}, { aud: "someone-else" }), "aud"],
    ["another issuer", () => sign(k1, {}, { iss: "https://evil.test/" }), "iss"],
    ["no expiry", () => sign(k1, {}, { exp: null }), "exp"],
    ["a not-before in the future", () => new SignJWT({ tenant: "t", roles: [] }).setProtectedHeader({ alg: "ES256", kid: "k1" }).setIssuer(ISSUER).setAudience(AUDIENCE).setExpirationTime(now() + 600).setNotBefore(now() + 300).sign(k1.privateKey), "nbf"],
  ])("refuses %s as TOKEN_INVALID naming the claim", async (_, token, claim) => {
    const e = await refusal(token());
    expect(e.code).toBe(Code.Unauthenticated);
    expect(e.info?.reason).toBe("TOKEN_INVALID");
    expect(e.info?.metadata.claim).toBe(claim);
  });

  it("bounds the lifetime: exp at most the maximum (plus the skew) ahead, and after iat", async () => {
    const tenYears = now() + 10 * 365 * DAY;
    for (const token of [
      sign(k1, {}, { exp: tenYears, iat: null }),
      sign(k1, {}, { exp: tenYears }),
      sign(k1, {}, { exp: now() + DAY + 120, iat: null }),
      // An issuer minting long-lived tokens: refused while exp is near.
      sign(k1, {}, { exp: now() + 300, iat: now() - 2 * DAY }),
    ]) {
      const e = await refusal(token);
      expect(e.code).toBe(Code.Unauthenticated);
      expect(e.info?.reason).toBe("TOKEN_INVALID");
      expect(e.info?.metadata.claim).toBe("exp");
      expect(e.message).toMatch(/"exp" claim is not accepted: .*longest lifetime accepted \(86400 s\)/);
    }
    const at = now();
    for (const token of [sign(k1, {}, { exp: at + DAY, iat: at }), sign(k1, {}, { exp: now() + DAY + 30, iat: null }), sign(k1, {}, { exp: now() + 300, iat: now() - DAY + 600 })]) {
      await s.align().listAlignJobs({}, bearer(await token));
    }
  });

  it("takes the maximum lifetime from its options", async () => {
    const short = await jwtAuthenticator({ ...base, jwks: jwksFile, maxLifetimeSeconds: 60 });
    const long = await jwtAuthenticator({ ...base, jwks: jwksFile });
    const credentials = { header: new Headers({ authorization: `Bearer ${await sign(k1, {}, { exp: now() + 300 })}` }) };
    try {
      expect((await long.authenticate(credentials)).tenant).toBe("team-a");
      const e = await rpcFailure(() => short.authenticate(credentials));
      expect(e.info?.reason).toBe("TOKEN_INVALID");
      expect(e.message).toContain("(60 s)");
    } finally {
      short.close();
      long.close();
    }
  });

  it("refuses a token signed by a key the JWKS does not hold, a symmetric one, garbage, and one without a tenant", async () => {
    const forged = { ...(await key("k1")) }; // same kid, another key
    const hs = await new SignJWT({ tenant: "team-a", roles: ["admin"] }).setProtectedHeader({ alg: "HS256" }).setIssuer(ISSUER).setAudience(AUDIENCE).setExpirationTime(now() + 60).sign(new TextEncoder().encode("x".repeat(32)));
    for (const token of [sign(forged), hs, "a.b.c", sign(k1, { tenant: undefined })]) {
      const e = await refusal(token);
      expect(e.code).toBe(Code.Unauthenticated);
      expect(e.info?.reason).toBe("TOKEN_INVALID");
    }
  });

  it("reads roles from a space-separated claim, and refuses a role the token lacks", async () => {
    s.seen.length = 0;
    await s.align().listAlignJobs({}, bearer(await sign(k1, { roles: "reader auditor" })));
    expect(s.seen[0]?.roles).toEqual(["reader", "auditor"]);
    const e = await rpcFailure(async () => s.align().createAlignJob({}, bearer(await sign(k1, { roles: "reader" }))));
    expect(e.code).toBe(Code.PermissionDenied);
  });

  it("picks up a rotated JWKS file", async () => {
    expect((await refusal(sign(k2))).info?.reason).toBe("TOKEN_INVALID");
    await writeJwks([k1, k2]);
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        await s.align().listAlignJobs({}, bearer(await sign(k2)));
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  });

  it("uses configured claim names", async () => {
    const auth = await jwtAuthenticator({ ...base, jwks: jwksFile, tenantClaim: "https://idp.test/tenant", rolesClaim: "scope" });
    const token = await sign(k1, { "https://idp.test/tenant": "team-z", scope: "reader" });
    const p = await auth.authenticate({ header: new Headers({ authorization: `Bearer ${token}` }) });
    auth.close();
    expect(p).toEqual({ tenant: "team-z", principal: "alice", roles: ["reader"], via: "jwt" });
  });
});

describe("JWT authentication with a JWKS URL", () => {
  const pki = new TestPki();
  let idp: https.Server;
  let url: string;
  // The test CA is trusted through the fetch jose is given (a process would use NODE_EXTRA_CA_CERTS).
  const ca = pki.ca("idp-ca");
  const fetchTrusting: FetchImplementation = (target, options) =>
    new Promise((resolve, reject) => {
      const req = https.get(target, { ca: ca.certPem, headers: Object.fromEntries([...new Headers(options.headers).entries()]), signal: options.signal }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve(new Response(Buffer.concat(chunks), { status: res.statusCode, headers: { "content-type": "application/json" } })));
      });
      req.on("error", reject);
    });

  beforeAll(async () => {
    const leaf = pki.leaf("idp", ca, { cn: "localhost", sans: ["DNS:localhost"], usage: "serverAuth" });
    const jwks = JSON.stringify(await writeJwks([k1, k2]));
    idp = https.createServer({ cert: leaf.certPem, key: leaf.keyPem }, (_req, res) => res.end(jwks));
    await new Promise<void>((r) => idp.listen(0, "127.0.0.1", r));
    url = `https://localhost:${(idp.address() as AddressInfo).port}/.well-known/jwks.json`;
  });
  afterAll(() => {
    idp?.close();
    pki.close();
  });

  it("verifies against the fetched keys", async () => {
    const auth = await jwtAuthenticator({ ...base, jwks: url, fetch: fetchTrusting });
    const p = await auth.authenticate({ header: new Headers({ authorization: `Bearer ${await sign(k2)}` }) });
    expect(p.tenant).toBe("team-a");
  });

  it("answers UNAVAILABLE (retryable) when the identity provider cannot be reached", async () => {
    const auth = await jwtAuthenticator({ ...base, jwks: "https://localhost:1/jwks.json", fetch: fetchTrusting });
    const token = await sign(k1);
    const e = await rpcFailure(() => auth.authenticate({ header: new Headers({ authorization: `Bearer ${token}` }) }));
    expect(e.code).toBe(Code.Unavailable);
    expect(e.info?.reason).toBe("AUTH_UNAVAILABLE");
  });
});
