// The CLI against a real server over TLS with a bearer token, and over mTLS with a client
// certificate (a PKI made at test time): what works, and how each missing or wrong piece
// fails (exit 1 with the server's or the TLS layer's reason, exit 2 for a bad command line),
// never printing the token.
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectionHint } from "../../services/cli/connection.ts";
import type { FlagValues } from "../../services/cli/flags.ts";
import { mtlsAuthenticator } from "../../services/platform/mtls-auth.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { startAccessServer, type AccessServer } from "../helpers/access-server.ts";
import { TestPki } from "../helpers/certs.ts";
import { cli } from "./harness.ts";

const pki = new TestPki();
const ca = pki.ca("ca");
const otherCa = pki.ca("other-ca");
// Named for a DNS name only: clients dialling 127.0.0.1 must say which name to expect.
const serverCert = pki.leaf("server", ca, { cn: "vaccine.test", sans: ["DNS:vaccine.test"], usage: "serverAuth" });
const client = pki.leaf("client", ca, { cn: "batch-runner", usage: "clientAuth" });
const stranger = pki.leaf("stranger", otherCa, { cn: "batch-runner", usage: "clientAuth" });

const token = randomBytes(32).toString("base64url");
const tokenFile = join(pki.dir, "token");
writeFileSync(tokenFile, `${token}\n`);
const tokens = join(pki.dir, "tokens.json");
writeFileSync(tokens, JSON.stringify({ [tokenHash(token)]: { tenant: "team-a", roles: ["reader"], principal: "ci" } }));
const map = join(pki.dir, "mtls.json");
writeFileSync(map, JSON.stringify({ "CN=batch-runner": { tenant: "team-b", roles: ["reader"], principal: "batch-runner" } }));

let tls: AccessServer;
let mtls: AccessServer;
beforeAll(async () => {
  tls = await startAccessServer({ tls: { certFile: serverCert.cert, keyFile: serverCert.key }, authenticator: (logger) => tokenAuthenticator(tokens, logger) });
  mtls = await startAccessServer({
    tls: { certFile: serverCert.cert, keyFile: serverCert.key, clientCaFile: ca.cert },
    authenticator: (logger) => mtlsAuthenticator(map, logger),
  });
});
afterAll(async () => {
  await tls?.server.shutdown();
  await mtls?.server.shutdown();
  pki.close();
});

// host:port: the TLS flags make it https://.
const at = (s: AccessServer) => ["--address", `127.0.0.1:${s.server.port}`];
const LIST = ["jobs", "list", "--kind", "align", "--json"];
const TRUST = ["--tls-ca", ca.cert, "--server-name", "vaccine.test"];

describe("TLS with a bearer token", () => {
  it("lists over TLS with the token from --token-file, or from $VACCINE_TOKEN", async () => {
    tls.seen.length = 0;
    const fromFile = await cli([...LIST, ...at(tls), ...TRUST, "--token-file", tokenFile]);
    expect(fromFile).toEqual({ code: 0, stdout: '{"jobs":[]}\n', stderr: "" });
    const fromEnv = await cli([...LIST, "--address", `https://127.0.0.1:${tls.server.port}`, ...TRUST], { VACCINE_TOKEN: token });
    expect(fromEnv.code, fromEnv.stderr).toBe(0);
    expect(tls.seen).toEqual([
      { tenant: "team-a", principal: "ci", roles: ["reader"], via: "token" },
      { tenant: "team-a", principal: "ci", roles: ["reader"], via: "token" },
    ]);
  });

  it("fails with exit 1 and the server's reason without a token", async () => {
    const run = await cli([...LIST, ...at(tls), ...TRUST]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^error: UNAUTHENTICATED: .*\n {2}reason: CREDENTIALS_MISSING/);
  });

  it("fails with exit 1 and says which option to check when the server's certificate does not verify", async () => {
    const wrongCa = await cli([...LIST, ...at(tls), "--tls-ca", otherCa.cert, "--server-name", "vaccine.test", "--token-file", tokenFile]);
    expect(wrongCa.code).toBe(1);
    // OpenSSL's words ("unable to verify the first certificate", "self-signed certificate in chain").
    expect(wrongCa.stderr).toMatch(/^error: INTERNAL: .*certificate.*\n/);
    expect(wrongCa.stderr).toContain(`hint: the server's certificate did not verify against --tls-ca ${otherCa.cert}`);
    // The certificate names vaccine.test, not the address dialled.
    const wrongName = await cli([...LIST, ...at(tls), "--tls-ca", ca.cert, "--token-file", tokenFile]);
    expect(wrongName.code).toBe(1);
    expect(wrongName.stderr).toMatch(/^error: INTERNAL: Hostname\/IP does not match certificate's altnames: IP: 127\.0\.0\.1/);
    expect(wrongName.stderr).toContain("pass a name it carries with --server-name");
    // A --server-name given, but not one the certificate carries: that is the flag to fix.
    const otherName = await cli([...LIST, ...at(tls), "--tls-ca", ca.cert, "--server-name", "elsewhere.test", "--token-file", tokenFile]);
    expect(otherName.stderr).toContain("hint: the server's certificate does not name --server-name elsewhere.test: pass a name it carries\n");
    for (const run of [wrongCa, wrongName, otherName]) expect(run.stdout + run.stderr).not.toContain(token);
  });

  it("refuses contradictory or unusable options with exit 2, naming the flag and never the token", async () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["--address", `http://127.0.0.1:${tls.server.port}`, "--tls-ca", ca.cert], {}, /--tls-ca: not with a cleartext address .*; use https:\/\/ or host:port/],
      [[...at(tls), "--tls-cert", client.cert], {}, /--tls-cert and --tls-key go together/],
      [[...at(tls), ...TRUST, "--token-file", join(pki.dir, "missing")], {}, /--token-file: cannot read .*missing: ENOENT/],
      [[...at(tls), ...TRUST], { VACCINE_TOKEN: `${token}\nX-Evil: 1` }, /\$VACCINE_TOKEN: not a bearer token/],
    ];
    for (const [args, env, message] of cases) {
      const run = await cli([...LIST, ...args], env);
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr).toMatch(message);
      expect(run.stderr).not.toContain(token);
    }
  });
});

describe("mTLS", () => {
  it("lists with a client certificate, as the tenant the mapping names", async () => {
    mtls.seen.length = 0;
    const run = await cli([...LIST, ...at(mtls), ...TRUST, "--tls-cert", client.cert, "--tls-key", client.key]);
    expect(run).toEqual({ code: 0, stdout: '{"jobs":[]}\n', stderr: "" });
    expect(mtls.seen).toEqual([{ tenant: "team-b", principal: "batch-runner", roles: ["reader"], via: "mtls" }]);
  });

  it("fails with exit 1 without a client certificate, or with one from another CA, pointing at the certificate", async () => {
    mtls.seen.length = 0;
    const none = await cli([...LIST, ...at(mtls), ...TRUST]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^error: INTERNAL: .*certificate required/);
    expect(none.stderr).toContain("hint: the server requires a client certificate (mTLS): pass --tls-cert and --tls-key");
    // TLS 1.3: the refusal reaches the client after its handshake, as a closed stream.
    const foreign = await cli([...LIST, ...at(mtls), ...TRUST, "--tls-cert", stranger.cert, "--tls-key", stranger.key]);
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toMatch(/^error: (CANCELLED|INTERNAL|UNAVAILABLE): /);
    expect(foreign.stderr).toContain("hint: the server may not trust the client certificate of --tls-cert");
    expect(mtls.seen).toEqual([]);
  });
});

describe("connectionHint", () => {
  it("says an expired server certificate is the server's to renew, not a CA to pass", () => {
    const expired = new ConnectError("certificate has expired", Code.Internal, undefined, undefined, Object.assign(new Error("certificate has expired"), { code: "CERT_HAS_EXPIRED" }));
    const givenCa = { has: () => true, get: () => "ca.pem" } as unknown as FlagValues;
    expect(connectionHint(expired, givenCa)).toBe("  hint: the server's certificate has expired: the server must renew it\n");
  });
});
