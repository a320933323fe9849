/**
 * Bounds on what one client can make the server hold: message size, time, streams and
 * connections. Defaults here are the platform's; a process sets its own (suite/config.ts).
 */
export interface Limits {
  /** Largest message the server reads (after decompression); larger ones get RESOURCE_EXHAUSTED before being buffered. */
  maxMessageBytes: number;
  /** Deadline of unary calls that arrive without one (0: none). */
  unaryDeadlineMs: number;
  /** Longest wait for the next message of a client stream (an upload, an import); 0: none. */
  streamIdleMs: number;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls open at once on one connection. */
  maxConcurrentStreams: number;
  /** Interval of the server's HTTP/2 PINGs, which find dead peers (0: none). */
  keepaliveIntervalMs: number;
  /** A connection whose PING is not answered within this is closed. */
  keepaliveTimeoutMs: number;
  /** A connection with no call open for this long is closed gracefully (0: never). */
  idleTimeoutMs: number;
  /** Time for a new connection to complete TLS or send its first bytes. */
  handshakeTimeoutMs: number;
}

export const MiB = 2 ** 20;

export const DEFAULT_LIMITS: Limits = {
  maxMessageBytes: 16 * MiB,
  unaryDeadlineMs: 300_000,
  streamIdleMs: 120_000,
  maxConcurrentStreams: 100,
  keepaliveIntervalMs: 60_000,
  keepaliveTimeoutMs: 20_000,
  idleTimeoutMs: 300_000,
  handshakeTimeoutMs: 10_000,
};
