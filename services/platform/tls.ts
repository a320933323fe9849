/**
 * TLS on the server's one port. ALPN offers h2 and http/1.1, so gRPC, gRPC-Web and Connect
 * keep working as in plaintext. With a client CA, every client must present a certificate
 * that CA signed: the handshake refuses the others, before any HTTP/2 frame is parsed.
 * The certificate, key and CA are re-read when their files change (cert-manager renewals):
 * new connections get the new context, open ones keep theirs.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import tls from "node:tls";
import { watchFiles, type FileWatch } from "./file-watch.ts";
import type { Logger } from "./log.ts";

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** Clients must present a certificate signed by this CA (mTLS). */
  clientCaFile?: string;
  /** Checks for rotated files (tests use short ones). */
  watch?: { debounceMs?: number; pollMs?: number };
}

/** Certificates closer to their end than this are logged at warn, at start and at each reload. */
const EXPIRY_WARNING_MS = 14 * 24 * 3600 * 1000;

/**
 * The context of the files' contents. Throws (code ERR_TLS_*, or OpenSSL's) on a key that
 * does not match its certificate, or on a certificate past its end: a half-done rotation
 * keeps the old pair, and a start with either fails with one line naming the files.
 */
function contextOptions(files: TlsFiles, [cert, key, ca]: Buffer[], logger: Logger): tls.SecureContextOptions {
  const options = { cert, key, ...(files.clientCaFile ? { ca } : {}) };
  try {
    tls.createSecureContext(options);
  } catch (err) {
    throw Object.assign(new Error(`${files.keyFile} is not the key of ${files.certFile}, or either cannot be read (${(err as Error).message})`), { code: (err as NodeJS.ErrnoException).code });
  }
  const ends = new Date(new X509Certificate(cert).validTo);
  const left = ends.getTime() - Date.now();
  if (left <= 0) {
    throw Object.assign(new Error(`the certificate in ${files.certFile} expired on ${ends.toISOString()}: every client would refuse it`), { code: "ERR_TLS_CERT_EXPIRED" });
  }
  if (left < EXPIRY_WARNING_MS) logger.warn({ file: files.certFile, expires: ends.toISOString(), days_left: Math.floor(left / 86_400_000) }, "TLS certificate expires soon");
  return options;
}

export function createTlsServer(files: TlsFiles, handshakeTimeoutMs: number, logger: Logger, onSocket: (socket: tls.TLSSocket) => void): { server: tls.Server; watch: FileWatch } {
  const paths = [files.certFile, files.keyFile, ...(files.clientCaFile ? [files.clientCaFile] : [])];
  const initial = contextOptions(files, paths.map((p) => readFileSync(p)), logger);
  const server = tls.createServer(
    {
      ...initial,
      minVersion: "TLSv1.2",
      ALPNProtocols: ["h2", "http/1.1"],
      requestCert: Boolean(files.clientCaFile),
      rejectUnauthorized: Boolean(files.clientCaFile),
      handshakeTimeout: handshakeTimeoutMs,
    },
    onSocket,
  );
  // A refused client (no certificate, another CA, a plaintext client) is its problem, not the server's.
  server.on("tlsClientError", (err, socket) => {
    logger.info({ remote: socket.remoteAddress, error: err.message }, "TLS handshake refused");
  });
  const watch = watchFiles(paths, (contents) => server.setSecureContext(contextOptions(files, contents, logger)), { ...files.watch, logger, what: "TLS certificate" });
  return { server, watch };
}
