/**
 * Keepalive and idle timeout of HTTP/2 connections. Node's own session timeout counts any
 * frame as activity and would cut a quiet Watch stream, so "idle" here means what gRPC
 * means: no call open. Keepalive PINGs find peers that vanished without closing (a pod
 * rescheduled, a NAT entry dropped), whose sessions would otherwise stay open.
 */
import type { Http2Session } from "node:http2";
import type { Limits } from "./limits.ts";
import type { Logger } from "./log.ts";

export function superviseSession(session: Http2Session, limits: Limits, logger: Logger): void {
  let open = 0;
  let idle: NodeJS.Timeout | undefined;
  let pingTimeout: NodeJS.Timeout | undefined;
  const armIdle = () => {
    if (limits.idleTimeoutMs <= 0) return;
    idle = setTimeout(() => {
      logger.debug({ idleMs: limits.idleTimeoutMs }, "closing idle connection");
      session.close();
    }, limits.idleTimeoutMs);
    idle.unref();
  };
  session.on("stream", (stream) => {
    open++;
    clearTimeout(idle);
    stream.once("close", () => {
      if (--open === 0 && !session.closed) armIdle();
    });
  });
  armIdle();

  const keepalive =
    limits.keepaliveIntervalMs > 0
      ? setInterval(() => {
          if (session.destroyed || session.closed || pingTimeout) return;
          pingTimeout = setTimeout(() => {
            logger.info({ timeoutMs: limits.keepaliveTimeoutMs }, "closing connection: keepalive ping not answered");
            session.destroy();
          }, limits.keepaliveTimeoutMs);
          pingTimeout.unref();
          const sent = session.ping((err) => {
            clearTimeout(pingTimeout);
            pingTimeout = undefined;
            if (err && !session.destroyed && !session.closed) session.destroy();
          });
          if (!sent) {
            clearTimeout(pingTimeout);
            pingTimeout = undefined;
          }
        }, limits.keepaliveIntervalMs)
      : undefined;
  keepalive?.unref();

  session.once("close", () => {
    clearTimeout(idle);
    clearTimeout(pingTimeout);
    clearInterval(keepalive);
  });
}
