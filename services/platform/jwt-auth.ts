/**
 * Bearer JWTs from an identity provider, verified with `jose` against its JWKS (a file,
 * reloaded on change, or an https URL, cached and refetched for unknown key ids): signature
 * with an asymmetric algorithm, issuer, audience, expiry (required, and at most a maximum
 * lifetime away) and not-before with a bounded clock skew. The tenant and roles come from
 * configured claims.
 */
import { readFileSync } from "node:fs";
import { Code } from "@connectrpc/connect";
import { createLocalJWKSet, createRemoteJWKSet, customFetch, errors, jwtVerify, type FetchImplementation, type JSONWebKeySet, type JWSAlgorithm, type JWTPayload } from "jose";
import { AuthReason, bearerToken, unauthenticated, type Authenticator } from "./authenticate.ts";
import { rpcError } from "./errors.ts";
import { watchFiles } from "./file-watch.ts";
import { TENANT_PATTERN } from "./grants-file.ts";
import type { Logger } from "./log.ts";

/** Public-key algorithms only: a JWKS is public, so a symmetric key in it would let anyone sign. */
const ALGORITHMS: JWSAlgorithm[] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"];

export interface JwtOptions {
  /** A JWKS file path, or an https:// URL. */
  jwks: string;
  issuer: string;
  audience: string;
  clockSkewSeconds: number;
  /** The longest lifetime accepted: exp at most this (plus the skew) after now, and after iat when there is one. */
  maxLifetimeSeconds: number;
  tenantClaim: string;
  rolesClaim: string;
  /** Replaces fetch for the JWKS URL (tests trust their own CA through it). */
  fetch?: FetchImplementation;
  watch?: { debounceMs?: number; pollMs?: number };
}

export function isJwksUrl(jwks: string): boolean {
  return /^https:\/\//i.test(jwks);
}

export async function jwtAuthenticator(options: JwtOptions, logger?: Logger): Promise<Authenticator> {
  let keys: ReturnType<typeof createLocalJWKSet> | ReturnType<typeof createRemoteJWKSet>;
  let close = () => {};
  if (isJwksUrl(options.jwks)) {
    keys = createRemoteJWKSet(new URL(options.jwks), {
      timeoutDuration: 5000,
      cooldownDuration: 30_000,
      cacheMaxAge: 10 * 60_000,
      ...(options.fetch ? { [customFetch]: options.fetch } : {}),
    });
  } else {
    const load = (text: string) => createLocalJWKSet(JSON.parse(text) as JSONWebKeySet);
    keys = load(readFileSync(options.jwks, "utf8"));
    const watcher = watchFiles([options.jwks], ([text]) => (keys = load(text.toString("utf8"))), { ...options.watch, logger, what: "JWKS file" });
    close = () => watcher.close();
  }
  const claimsOf = (payload: JWTPayload) => {
    const tenant = payload[options.tenantClaim];
    if (typeof tenant !== "string" || !TENANT_PATTERN.test(tenant)) {
      throw unauthenticated(AuthReason.TOKEN_INVALID, `the token's "${options.tenantClaim}" claim must name a tenant`, { claim: options.tenantClaim });
    }
    const raw = payload[options.rolesClaim];
    // A list, or a space-separated string as OAuth scopes are.
    const roles = Array.isArray(raw) ? raw.filter((r): r is string => typeof r === "string") : typeof raw === "string" ? raw.split(" ").filter(Boolean) : [];
    return { tenant, roles, principal: typeof payload.sub === "string" && payload.sub ? payload.sub : "jwt" };
  };
  return {
    mode: "jwt",
    async authenticate(credentials) {
      const token = bearerToken(credentials);
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, keys, {
          issuer: options.issuer,
          audience: options.audience,
          clockTolerance: options.clockSkewSeconds,
          requiredClaims: ["exp"],
          algorithms: ALGORITHMS,
        }));
      } catch (err) {
        throw verifyError(err);
      }
      checkLifetime(payload, options);
      return { ...claimsOf(payload), via: "jwt" };
    },
    close: () => close(),
  };
}

/** A token minted to live for years would let a leaked one be used for years: its exp is bounded. */
function checkLifetime(payload: JWTPayload, { maxLifetimeSeconds: max, clockSkewSeconds: skew }: JwtOptions) {
  // jwtVerify has required exp, and checked that it and iat (when present) are numbers.
  const exp = payload.exp as number;
  const ahead = exp - Math.floor(Date.now() / 1000);
  const refuse = (why: string) => unauthenticated(AuthReason.TOKEN_INVALID, `the token's "exp" claim is not accepted: ${why}`, { claim: "exp" });
  if (ahead > max + skew) throw refuse(`it lies ${ahead} s ahead, more than the longest lifetime accepted (${max} s) plus the clock skew (${skew} s)`);
  if (payload.iat !== undefined && exp - payload.iat > max) throw refuse(`it lies ${exp - payload.iat} s after "iat", more than the longest lifetime accepted (${max} s)`);
}

function verifyError(err: unknown) {
  if (err instanceof errors.JWTExpired) return unauthenticated(AuthReason.TOKEN_EXPIRED, "the token has expired");
  if (err instanceof errors.JWTClaimValidationFailed) {
    return unauthenticated(AuthReason.TOKEN_INVALID, `the token's "${err.claim}" claim is not accepted: ${err.message}`, { claim: err.claim });
  }
  if (err instanceof errors.JWKSTimeout || !(err instanceof errors.JOSEError)) {
    // The identity provider, not the caller, failed: retryable.
    return rpcError(Code.Unavailable, AuthReason.AUTH_UNAVAILABLE, "the identity provider's keys could not be fetched; retry later");
  }
  return unauthenticated(AuthReason.TOKEN_INVALID, `the token is not valid: ${err.message}`);
}
