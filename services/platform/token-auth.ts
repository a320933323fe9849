/**
 * Bearer tokens granted by a tokens file: each key is the SHA-256 (hex) of a token, so the
 * file, the process and its logs never hold a token in clear; a leaked file grants nothing.
 * The file reloads when it changes (a new token works, a removed one stops working).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { AuthReason, bearerToken, unauthenticated, type Authenticator } from "./authenticate.ts";
import { watchFiles } from "./file-watch.ts";
import { grantsParser, parseGrants, type Grant } from "./grants-file.ts";
import type { Logger } from "./log.ts";
import type { Principal } from "./principal.ts";

export function tokenHash(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

const checkKey = (key: string) => (/^[0-9a-f]{64}$/.test(key) ? undefined : "key must be the SHA-256 of a token in lowercase hex (64 characters)");

export async function tokenAuthenticator(file: string, logger?: Logger, watch: { debounceMs?: number; pollMs?: number } = {}): Promise<Authenticator> {
  const parse = await grantsParser(file);
  const load = (text: string) => parseGrants(parse(text), file, checkKey);
  let grants: Map<string, Grant> = load(readFileSync(file, "utf8"));
  logger?.info({ file, entries: grants.size }, "tokens file loaded");
  const watcher = watchFiles([file], ([text]) => {
    grants = load(text.toString("utf8"));
    logger?.info({ file, entries: grants.size }, "tokens file reloaded");
  }, { ...watch, logger, what: "tokens file" });
  return {
    mode: "token",
    async authenticate(credentials): Promise<Principal> {
      const hash = tokenHash(bearerToken(credentials));
      const grant = grants.get(hash);
      if (!grant) throw unauthenticated(AuthReason.TOKEN_UNKNOWN, "the bearer token is not granted by this server");
      // An unnamed entry is named by a prefix of its hash: it identifies the entry in logs and reveals nothing usable.
      return { tenant: grant.tenant, principal: grant.principal ?? `token:${hash.slice(0, 12)}`, roles: grant.roles, via: "token" };
    },
    close: () => watcher.close(),
  };
}
