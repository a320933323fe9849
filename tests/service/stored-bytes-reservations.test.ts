// The byte quota's reservations (services/common/quotas.ts reserveStoredBytes) against a real
// local store: under the worst interleaving of two admissions (both reserve before either reads
// the usage) neither goes through, so together they never overshoot; a reservation counts until
// released; one left by a dead process lapses and is removed by the next admission.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { claim, usageOf } from "../../services/common/ownership.ts";
import { reserveStoredBytes, RESERVATION_TTL_MS } from "../../services/common/quotas.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import type { CheckpointStore } from "../../services/runtime/store/store.ts";

const RESERVATIONS = "store://tenants/team-a/reservations";
const roots: string[] = [];
const newStore = () => new LocalCheckpointStore(roots[roots.push(mkdtempSync(join(tmpdir(), "vaccine-reservations-"))) - 1]);
afterAll(() => roots.forEach((r) => rmSync(r, { recursive: true, force: true })));
const deps = (store: CheckpointStore, storedBytes: number) => ({ store, quotas: { jobs: 0, storedBytes } });

/** A store whose listings of the tenant's folder wait until `n` callers have asked: every admission has reserved before any reads. */
function listingsTogether(store: CheckpointStore, n: number): CheckpointStore {
  let waiting: (() => void)[] = [];
  const listObjects = async (folder: string) => {
    if (folder === "store://tenants/team-a" && n > 0) {
      await new Promise<void>((resolve) => {
        waiting.push(resolve);
        if (waiting.length === n) {
          n = 0;
          waiting.forEach((r) => r());
          waiting = [];
        }
      });
    }
    return store.listObjects(folder);
  };
  return new Proxy(store, { get: (target, key) => (key === "listObjects" ? listObjects : Reflect.get(target, key, target)) });
}

const refusal = (err: unknown) => {
  const e = ConnectError.from(err);
  expect(e.code).toBe(Code.ResourceExhausted);
  return e.rawMessage;
};

describe("stored-bytes reservations", () => {
  it("two admissions that each fit but not together, interleaved at worst: neither goes through", async () => {
    const store = newStore();
    await claim(store, "team-a", "datasets", "a".repeat(64), { bytes: 100 });
    const racing = deps(listingsTogether(store, 2), 150);
    const tries = await Promise.allSettled([reserveStoredBytes(racing, "team-a", 40), reserveStoredBytes(racing, "team-a", 30)]);
    expect(tries.map((t) => t.status)).toEqual(["rejected", "rejected"]);
    // Each saw the other's bytes as stored.
    expect(refusal((tries[0] as PromiseRejectedResult).reason)).toContain("stores 130 bytes and this adds 40");
    expect(refusal((tries[1] as PromiseRejectedResult).reason)).toContain("stores 140 bytes and this adds 30");
    expect(await store.listObjects(RESERVATIONS)).toEqual([]);
    expect(await usageOf(store, "team-a")).toBe(100);
  });

  it("a reservation counts until released; the claim then charges the bytes", async () => {
    const store = newStore();
    const first = await reserveStoredBytes(deps(store, 150), "team-a", 40);
    expect(await usageOf(store, "team-a")).toBe(40);
    // In flight, it keeps a second admission out.
    await reserveStoredBytes(deps(store, 150), "team-a", 120).then(
      () => expect.fail("admitted over the quota"),
      (err) => expect(refusal(err)).toContain("stores 40 bytes and this adds 120"),
    );
    await claim(store, "team-a", "datasets", "b".repeat(64), { bytes: 40 });
    await first.release();
    expect(await usageOf(store, "team-a")).toBe(40);
    expect(await store.listObjects(RESERVATIONS)).toEqual([]);
    // Without a byte quota nothing is reserved.
    await reserveStoredBytes(deps(store, 0), "team-a", 1e12);
    expect(await store.listObjects(RESERVATIONS)).toEqual([]);
  });

  it("a reservation its process never released lapses, and the next admission removes it", async () => {
    const store = newStore();
    await reserveStoredBytes(deps(store, 150), "team-a", 100);
    const [left] = await store.listObjects(RESERVATIONS);
    expect(await usageOf(store, "team-a")).toBe(100);
    const later = Date.now() + RESERVATION_TTL_MS + 1;
    expect(await usageOf(store, "team-a", later)).toBe(0);
    // Lapsed by its own time: rewritten as if written an hour and more ago.
    await store.putObject(left.uri, Buffer.from(JSON.stringify({ bytes: 100, expires: new Date(Date.now() - 1).toISOString() })));
    const next = await reserveStoredBytes(deps(store, 150), "team-a", 120);
    expect((await store.listObjects(RESERVATIONS)).map((o) => o.uri)).not.toContain(left.uri);
    await next.release();
    expect(await store.listObjects(RESERVATIONS)).toEqual([]);
  });
});
