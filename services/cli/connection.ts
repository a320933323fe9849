/**
 * How a client command reaches the server: the address, TLS (the CA to verify the server
 * with, a client certificate for mTLS, the name to expect) and the bearer token. The token
 * comes from a file or $VACCINE_TOKEN, never from a flag: a command line is visible to every
 * user of the machine (ps, /proc) and stays in shell history.
 */
import { readFileSync } from "node:fs";
import { Code, type ConnectError } from "@connectrpc/connect";
import type { ClientOptions } from "../client/clients.ts";
import { UsageError } from "./errors.ts";
import { text, type Flag, type FlagValues } from "./flags.ts";
import type { Env, Output } from "./output.ts";

export const TLS_CA = text("tls-ca", "<file>", "PEM CA bundle to verify the server with; turns TLS on (an https:// address alone uses the system's CAs).");
export const TLS_CERT = text("tls-cert", "<file>", "PEM client certificate, for a server that requires mTLS (with --tls-key).");
export const TLS_KEY = text("tls-key", "<file>", "PEM private key of --tls-cert.");
export const SERVER_NAME = text("server-name", "<name>", "Name the server's certificate must carry (and the SNI), instead of the address's host.");
export const TOKEN_FILE = text("token-file", "<file>", "File holding the bearer token (default $VACCINE_TOKEN; no --token: command lines show in ps).");

/** TLS and credentials: every client command takes them after --address. */
export const CONNECTION_FLAGS: Flag<unknown>[] = [TLS_CA, TLS_CERT, TLS_KEY, SERVER_NAME, TOKEN_FILE];
const TLS_FLAGS = [TLS_CA, TLS_CERT, TLS_KEY, SERVER_NAME];

const DEFAULT_ADDRESS = "127.0.0.1:50051";
// What the server accepts after "Bearer " (services/platform/authenticate.ts).
const TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

export interface Connection {
  url: string;
  options: ClientOptions;
}

/**
 * The server's URL and client options. `address` is the --address flag (else $VACCINE_ADDRESS,
 * else 127.0.0.1:50051); "host:port" means https:// when a TLS flag is given, http:// otherwise.
 */
export function resolveConnection(address: string | undefined, flags: FlagValues, env: Env, stderr: Output): Connection {
  const tlsFlags = TLS_FLAGS.filter((f) => flags.has(f));
  const given = address ?? env.VACCINE_ADDRESS ?? DEFAULT_ADDRESS;
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(given)?.[0].toLowerCase();
  const url = scheme === "http://" || scheme === "https://" ? given : `${tlsFlags.length ? "https" : "http"}://${given}`;
  const https = url.toLowerCase().startsWith("https://");
  if (tlsFlags.length && !https) {
    throw new UsageError(`${tlsFlags.map((f) => `--${f.name}`).join(", ")}: not with a cleartext address ("${given}"); use https:// or host:port`);
  }
  if (flags.has(TLS_CERT) !== flags.has(TLS_KEY)) throw new UsageError("--tls-cert and --tls-key go together (a client certificate and its key)");
  const options: ClientOptions = {};
  if (https) {
    options.tls = {
      ca: readFlagFile(flags, TLS_CA),
      cert: readFlagFile(flags, TLS_CERT),
      key: readFlagFile(flags, TLS_KEY),
      serverName: flags.get(SERVER_NAME) || undefined,
    };
  }
  const token = bearerToken(flags, env);
  if (token !== undefined) {
    options.token = token;
    const host = new URL(url).hostname;
    if (!https && !/^(localhost|127\.[\d.]+|\[::1\])$/.test(host)) {
      stderr.write(`warning: sending a bearer token in cleartext to ${host}: use an https:// address\n`);
    }
  }
  return { url, options };
}

function readFlagFile(flags: FlagValues, flag: Flag<string>): Buffer | undefined {
  const path = flags.get(flag);
  if (path === undefined) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`--${flag.name}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** The token of --token-file, else $VACCINE_TOKEN; the messages never quote it. */
function bearerToken(flags: FlagValues, env: Env): string | undefined {
  const fromFile = flags.has(TOKEN_FILE);
  const raw = fromFile ? readFlagFile(flags, TOKEN_FILE)!.toString("utf8") : env.VACCINE_TOKEN;
  if (raw === undefined) return undefined;
  const token = raw.trim();
  const source = fromFile ? `--token-file ${flags.get(TOKEN_FILE)}` : "$VACCINE_TOKEN";
  if (token === "") {
    // An empty variable is "no token"; an empty file is a mistake.
    if (fromFile) throw new UsageError(`${source}: the file is empty`);
    return undefined;
  }
  if (!TOKEN.test(token)) throw new UsageError(`${source}: not a bearer token (one line of base64 or base64url characters)`);
  return token;
}

// Node's codes for a server certificate that does not chain to a trusted CA, or is out of date.
const UNTRUSTED = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
]);

/**
 * A line saying which option to look at when a call failed in the TLS handshake (the error
 * itself is OpenSSL's wording), or "".
 */
export function connectionHint(err: ConnectError, flags: FlagValues): string {
  const code = String((err.cause as NodeJS.ErrnoException | undefined)?.code ?? "");
  if (code === "CERT_HAS_EXPIRED") return "  hint: the server's certificate has expired: the server must renew it\n";
  if (UNTRUSTED.has(code)) {
    return `  hint: the server's certificate did not verify against ${flags.has(TLS_CA) ? `--tls-ca ${flags.get(TLS_CA)}` : "the system's CAs"}: pass the CA that signed it with --tls-ca\n`;
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    return flags.has(SERVER_NAME)
      ? `  hint: the server's certificate does not name --server-name ${flags.get(SERVER_NAME)}: pass a name it carries\n`
      : "  hint: the server's certificate does not name the host of --address: pass a name it carries with --server-name\n";
  }
  if (code === "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED") return "  hint: the server requires a client certificate (mTLS): pass --tls-cert and --tls-key\n";
  // With TLS 1.3 a client learns that the server refused its certificate only after the
  // handshake: the HTTP/2 stream is closed without a status.
  if (/^ERR_SSL_.*ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN)/.test(code) || (err.code === Code.Canceled && !err.cause && flags.has(TLS_CERT))) {
    return "  hint: the server may not trust the client certificate of --tls-cert (it needs one signed by the CA it verifies clients with)\n";
  }
  return "";
}
