/**
 * TLS on the server's one port. ALPN offers h2 and http/1.1, so gRPC, gRPC-Web and Connect
 * keep working as in plaintext. With a client CA, every client must present a certificate
 * that CA signed: the handshake refuses the others, before any HTTP/2 frame is parsed.
 * The certificate, key and CA are re-read when their files change (cert-manager renewals):
 * new connections get the new context, open ones keep theirs.
 */
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

function contextOptions(files: TlsFiles, [cert, key, ca]: Buffer[]): tls.SecureContextOptions {
  const options = { cert, key, ...(files.clientCaFile ? { ca } : {}) };
  // Fails on a key that does not match its certificate: a half-done rotation keeps the old pair.
  tls.createSecureContext(options);
  return options;
}

export function createTlsServer(files: TlsFiles, handshakeTimeoutMs: number, logger: Logger, onSocket: (socket: tls.TLSSocket) => void): { server: tls.Server; watch: FileWatch } {
  const paths = [files.certFile, files.keyFile, ...(files.clientCaFile ? [files.clientCaFile] : [])];
  const initial = contextOptions(files, paths.map((p) => readFileSync(p)));
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
  const watch = watchFiles(paths, (contents) => server.setSecureContext(contextOptions(files, contents)), { ...files.watch, logger, what: "TLS certificate" });
  return { server, watch };
}
