// The process's security options from its configuration: what run.ts hands the platform.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { afterAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../services/platform/log.ts";
import { tokenHash } from "../../services/platform/token-auth.ts";
import { TestPki } from "../helpers/certs.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { SUITE_CONTRACTS } from "../../services/suite/access.ts";
import { loadConfig } from "../../services/suite/config.ts";
import { callBounds, securityOptions } from "../../services/suite/security.ts";

const dir = mkdtempSync(join(tmpdir(), "vaccine-security-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("security options", () => {
  it("by default: plaintext, no authenticator, the suite's policy, the documented limits and rate", async () => {
    const o = await securityOptions(loadConfig({}), silentLogger);
    expect(o.tls).toBeUndefined();
    expect(o.healthPort).toBeUndefined();
    expect(o.access.authenticator).toBeUndefined();
    expect(o.access.policy?.roles).toEqual(["reader", "trainer", "admin"]);
    expect(o.access.reflectionOpen).toBe(false);
    expect(o.limits).toEqual({ maxMessageBytes: 16 * 2 ** 20, unaryDeadlineMs: 300_000, streamIdleMs: 120_000, maxConcurrentStreams: 100, keepaliveIntervalMs: 60_000, keepaliveTimeoutMs: 20_000, idleTimeoutMs: 300_000 });
    expect(o.rateLimit).toEqual({ perSecond: 50, burst: 100 });
    // The audit log records every call of the methods that need the trainer role.
    const mutating = SUITE_CONTRACTS.flatMap((svc) => svc.methods).filter((m) => o.audit.mutating(m)).map((m) => m.name);
    expect(mutating.sort()).toEqual(["CancelAlignJob", "CancelFineTuneJob", "CreateAlignJob", "CreateFineTuneJob", "DeleteCheckpoint", "DeleteDataset", "ImportCheckpoint", "UploadDataset"]);
    expect(callBounds(loadConfig({}))).toEqual({ maxPromptTokens: 1024, maxNewTokens: 1024, maxGeneratedTokens: 65_536, maxEmbedValues: 4_194_304, maxSteps: 1_000_000, maxTrainingTokens: 1_000_000_000 });
  });

  it("turns on TLS, mTLS and token authentication from the variables", async () => {
    const tokens = join(dir, "tokens.json");
    writeFileSync(tokens, JSON.stringify({ [tokenHash("t")]: { tenant: "a", roles: ["reader"] } }));
    const pki = new TestPki();
    try {
      const ca = pki.ca("ca");
      const server = pki.leaf("server", ca, { cn: "localhost", usage: "serverAuth" });
      const o = await securityOptions(
        loadConfig({ VACCINE_TLS_CERT: server.cert, VACCINE_TLS_KEY: server.key, VACCINE_TLS_CLIENT_CA: ca.cert, VACCINE_AUTH: "token", VACCINE_AUTH_TOKENS_FILE: tokens, VACCINE_HEALTH_PORT: "8081" }),
        silentLogger,
      );
      expect(o.tls).toEqual({ certFile: server.cert, keyFile: server.key, clientCaFile: ca.cert });
      expect(o.healthPort).toBe(8081);
      expect(o.access.authenticator?.mode).toBe("token");
      o.access.authenticator?.close();
      // A key that is not the certificate's is refused, naming both variables.
      const other = pki.leaf("other", ca, { cn: "localhost", usage: "serverAuth" });
      await expect(securityOptions(loadConfig({ VACCINE_TLS_CERT: server.cert, VACCINE_TLS_KEY: other.key }), silentLogger)).rejects.toThrow(/^VACCINE_TLS_CERT and VACCINE_TLS_KEY=/);
    } finally {
      pki.close();
    }
  });

  it("turns on JWT authentication, bounding the lifetime by VACCINE_AUTH_MAX_LIFETIME_S", async () => {
    const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
    const jwks = join(dir, "jwks.json");
    writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "k", alg: "ES256" }] }));
    const token = await new SignJWT({ tenant: "a", roles: ["reader"] }).setProtectedHeader({ alg: "ES256", kid: "k" }).setIssuer("i").setAudience("a").setExpirationTime("2h").sign(privateKey);
    const credentials = { header: new Headers({ authorization: `Bearer ${token}` }) };
    const authenticator = async (env: Record<string, string>) =>
      (await securityOptions(loadConfig({ VACCINE_AUTH: "jwt", VACCINE_AUTH_JWKS: jwks, VACCINE_AUTH_ISSUER: "i", VACCINE_AUTH_AUDIENCE: "a", ...env }), silentLogger)).access.authenticator!;
    const [byDefault, hourly] = [await authenticator({}), await authenticator({ VACCINE_AUTH_MAX_LIFETIME_S: "3600" })];
    try {
      expect((await byDefault.authenticate(credentials)).tenant).toBe("a");
      expect((await rpcFailure(() => hourly.authenticate(credentials))).info?.metadata.claim).toBe("exp");
    } finally {
      byDefault.close();
      hourly.close();
    }
  });

  it("fails the start on a missing file, naming its variable", async () => {
    const missing = join(dir, "missing.json");
    await expect(securityOptions(loadConfig({ VACCINE_AUTH: "token", VACCINE_AUTH_TOKENS_FILE: missing }), silentLogger)).rejects.toThrow(`VACCINE_AUTH_TOKENS_FILE=${missing}: does not exist`);
    await expect(securityOptions(loadConfig({ VACCINE_TLS_CERT: missing, VACCINE_TLS_KEY: missing }), silentLogger)).rejects.toThrow(`VACCINE_TLS_CERT=${missing}: does not exist`);
  });
});
