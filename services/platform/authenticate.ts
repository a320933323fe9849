/**
 * What authenticators share: the credentials of a call, the contract of an authenticator,
 * the bearer token of the Authorization header, and the UNAUTHENTICATED errors with their
 * ErrorInfo reasons.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import { rpcError } from "./errors.ts";
import type { PeerIdentity } from "./peer.ts";
import type { AuthMode, Principal } from "./principal.ts";

/** ErrorInfo reasons of authentication and authorization. */
export const AuthReason = {
  /** No Authorization header (token, jwt) or no client certificate (mtls). */
  CREDENTIALS_MISSING: "CREDENTIALS_MISSING",
  /** Not "Bearer <token>", or more than one. */
  CREDENTIALS_MALFORMED: "CREDENTIALS_MALFORMED",
  /** A token that no tokens-file entry grants. */
  TOKEN_UNKNOWN: "TOKEN_UNKNOWN",
  /** A JWT past its expiry (beyond the allowed clock skew). */
  TOKEN_EXPIRED: "TOKEN_EXPIRED",
  /** A JWT with a bad signature, issuer, audience, not-before or claims. */
  TOKEN_INVALID: "TOKEN_INVALID",
  /** A verified certificate that the mTLS mapping does not name. */
  CERTIFICATE_UNMAPPED: "CERTIFICATE_UNMAPPED",
  /** The identity provider could not be asked (JWKS endpoint down): UNAVAILABLE, retryable. */
  AUTH_UNAVAILABLE: "AUTH_UNAVAILABLE",
  /** Authenticated, but none of the caller's roles allows the method: PERMISSION_DENIED. */
  ROLE_REQUIRED: "ROLE_REQUIRED",
} as const;

export interface CallCredentials {
  header: Headers;
  peer?: PeerIdentity;
  /** Authorization fields the request carried (peer.ts); the Headers keep only the first. */
  authorizationFields?: number;
}

/**
 * For calls refused before any interceptor (wire-errors.ts, not-served.ts): the error of a
 * caller whose credentials do not hold for `service`, else undefined (access.ts makes it).
 */
export type AuthenticateFirst = (service: string, credentials: CallCredentials) => Promise<ConnectError | undefined>;

export interface Authenticator {
  readonly mode: Exclude<AuthMode, "none">;
  /** The caller, or an UNAUTHENTICATED (or UNAVAILABLE) ConnectError. */
  authenticate(credentials: CallCredentials): Promise<Principal>;
  /** Stops reloading files. */
  close(): void;
}

export function unauthenticated(reason: string, message: string, metadata: Record<string, string> = {}): ConnectError {
  return rpcError(Code.Unauthenticated, reason, message, metadata);
}

/** The token of "Authorization: Bearer <token>"; the token itself never goes into an error. */
export function bearerToken({ header, authorizationFields = 1 }: CallCredentials): string {
  if (authorizationFields > 1) throw unauthenticated(AuthReason.CREDENTIALS_MALFORMED, `the request has ${authorizationFields} authorization headers; send one "Bearer <token>"`);
  const value = header.get("authorization");
  if (value === null || value.trim() === "") {
    throw unauthenticated(AuthReason.CREDENTIALS_MISSING, 'this server needs credentials: send "authorization: Bearer <token>"');
  }
  // Two credentials are refused, not guessed between: in one field (a client that joined
  // them with ", "), or in two (counted by the server, whose Headers keep only the first).
  const m = /^Bearer +([A-Za-z0-9\-._~+/]+=*)$/i.exec(value.trim());
  if (!m) throw unauthenticated(AuthReason.CREDENTIALS_MALFORMED, 'the authorization header must be one "Bearer <token>"');
  return m[1];
}
