/**
 * Training is batch work: a training thread runs at a lower priority (nice TRAINING_NICENESS)
 * than the serving thread, so a request gets a core first when a job and requests compete.
 * Linux applies setpriority to the one thread whose id it is given; elsewhere priorities stay
 * equal.
 */
import { readlinkSync } from "node:fs";
import os from "node:os";

/** Niceness of a training thread (0 is the serving thread's, 19 the lowest). */
export const TRAINING_NICENESS = 5;

/** Lowers the calling worker thread's priority (never the process's main thread). */
export function lowerThreadPriority(): void {
  try {
    const tid = Number(readlinkSync("/proc/thread-self").split("/").pop());
    if (Number.isInteger(tid) && tid !== process.pid) os.setPriority(tid, TRAINING_NICENESS);
  } catch {
    // No /proc/thread-self (not Linux) or not permitted: equal priority.
  }
}
