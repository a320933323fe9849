/**
 * What a download or an export writes under a ".part" name and renames when complete: a
 * command stopped by Ctrl-C or SIGTERM removes it before it exits, as a failed one does, so
 * no partial file is left beside the one the user asked for.
 */
import { rmSync } from "node:fs";

/** Removes `part` and exits (130 on SIGINT, 143 on SIGTERM) if the process is interrupted; call the result once `part` is renamed or removed. */
export function removedOnInterrupt(part: string): () => void {
  const onSignal = (signal: NodeJS.Signals) => {
    rmSync(part, { recursive: true, force: true });
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  return () => {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  };
}
