import { describe, expect, it } from "vitest";
import { ModelCache } from "../../services/runtime/model-cache.ts";

interface Model {
  name: string;
  bytes?: number;
}

/** What the cache counts a model as: the size its load gave it. */
const sizeOf = (m: Model) => m.bytes ?? 0;
/** `load`, its model taking `bytes`. */
const sized = (load: () => Promise<Model>, bytes: number) => async () => ({ ...(await load()), bytes });
/** The value, used for a moment: loaded or found, pinned, released. */
const take = (cache: ModelCache<Model>, key: string, bytes: number, load: () => Promise<Model>) => cache.use(key, sized(load, bytes), (v) => v);

/** A cache whose loads and disposals are recorded. */
function harness(budgetBytes: number) {
  const loads: string[] = [];
  const disposed: string[] = [];
  const cache = new ModelCache<Model>({ budgetBytes, sizeOf, dispose: (m) => void disposed.push(m.name) });
  const loader = (name: string) => async () => {
    loads.push(name);
    return { name };
  };
  const get = (name: string, bytes: number) => take(cache, name, bytes, loader(name));
  return { cache, loads, disposed, loader, get };
}

describe("ModelCache", () => {
  it("evicts the least recently used entry when over budget", async () => {
    const { cache, disposed, get } = harness(30);
    await get("a", 10);
    await get("b", 10);
    await get("c", 10);
    await get("a", 10); // a is now the most recent
    expect(cache.keys()).toEqual(["b", "c", "a"]);
    await get("d", 10);
    expect(disposed).toEqual(["b"]);
    expect(cache.keys()).toEqual(["c", "a", "d"]);
    expect(cache.usedBytes).toBe(30);
  });

  it("evicts as many entries as the budget needs", async () => {
    const { cache, disposed, get } = harness(30);
    await get("a", 10);
    await get("b", 10);
    await get("c", 6);
    await get("big", 25);
    expect(disposed).toEqual(["a", "b", "c"]);
    expect(cache.keys()).toEqual(["big"]);
    expect(cache.usedBytes).toBe(25);
  });

  it("serves hits without loading again", async () => {
    const { loads, get } = harness(100);
    const first = await get("a", 10);
    expect(await get("a", 10)).toBe(first);
    expect(loads).toEqual(["a"]);
  });

  it("loads but does not keep an entry larger than the budget, and disposes it after its last use", async () => {
    const { cache, loads, disposed, loader, get } = harness(30);
    await get("a", 10);
    const lease = await cache.acquire("huge", sized(loader("huge"), 31));
    const second = await cache.acquire("huge", sized(loader("huge"), 31));
    expect(cache.has("huge")).toBe(false);
    expect(cache.keys()).toEqual(["a"]); // nothing evicted for it
    expect(second.value).not.toBe(lease.value); // loaded again: nothing keeps it
    lease.release();
    expect(disposed).toEqual(["huge"]);
    second.release();
    expect(disposed).toEqual(["huge", "huge"]);
    expect((await get("huge", 31)).name).toBe("huge");
    expect(disposed).toEqual(["huge", "huge", "huge"]);
    expect(loads).toEqual(["a", "huge", "huge", "huge"]);
  });

  it("shares one unkept load between concurrent users and disposes it once", async () => {
    const { cache, loads, disposed, loader } = harness(30);
    const [one, two] = await Promise.all([cache.acquire("huge", sized(loader("huge"), 31)), cache.acquire("huge", sized(loader("huge"), 31))]);
    expect(one.value).toBe(two.value);
    one.release();
    expect(disposed).toEqual([]);
    two.release();
    expect(disposed).toEqual(["huge"]);
    expect(loads).toEqual(["huge"]);
  });

  it("loads once for concurrent gets of the same key", async () => {
    const cache = new ModelCache<Model>({ budgetBytes: 100, sizeOf });
    let calls = 0;
    let finish!: () => void;
    const gate = new Promise<void>((resolve) => (finish = resolve));
    const load = async () => {
      calls++;
      await gate;
      return { name: "a" };
    };
    const pending = [take(cache, "a", 10, load), take(cache, "a", 10, load), take(cache, "a", 10, load)];
    finish();
    const values = await Promise.all(pending);
    expect(calls).toBe(1);
    expect(new Set(values).size).toBe(1);
  });

  it("shares a load failure with every waiter and retries afterwards", async () => {
    const cache = new ModelCache<Model>({ budgetBytes: 100, sizeOf });
    let calls = 0;
    const failing = async (): Promise<Model> => {
      calls++;
      throw new Error("corrupt checkpoint");
    };
    const results = await Promise.allSettled([take(cache, "a", 10, failing), take(cache, "a", 10, failing)]);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect(calls).toBe(1);
    expect(cache.has("a")).toBe(false);
    expect((await take(cache, "a", 10, async () => ({ name: "ok" }))).name).toBe("ok");
  });

  it("disposes on delete and clear", async () => {
    const { cache, disposed, get } = harness(100);
    await get("a", 10);
    await get("b", 10);
    expect(cache.delete("a")).toBe(true);
    expect(cache.delete("a")).toBe(false);
    cache.clear();
    expect(disposed).toEqual(["a", "b"]);
    expect(cache.usedBytes).toBe(0);
  });

  it("never evicts a pinned entry and trims once it is released", async () => {
    const { cache, disposed, loader, get } = harness(20);
    const lease = await cache.acquire("a", sized(loader("a"), 10));
    await get("b", 10);
    await get("c", 10); // evicts b: a is pinned
    expect(disposed).toEqual(["b"]);
    await get("d", 10); // evicts c; a still pinned, so over budget
    expect(cache.keys()).toEqual(["a", "d"]);
    await get("e", 10);
    expect(disposed).toEqual(["b", "c", "d"]);
    expect(cache.usedBytes).toBe(20);
    lease.release();
    lease.release(); // a second release is harmless
    expect(cache.keys()).toEqual(["a", "e"]);

    const seen = await cache.use("f", sized(loader("f"), 15), async (m) => {
      await get("g", 10); // over budget while f is pinned: g goes when its use ends
      expect(disposed).not.toContain("f");
      return m.name;
    });
    expect(seen).toBe("f");
    expect(disposed.slice(-1)).toEqual(["g"]);
    expect(cache.keys()).toEqual(["f"]);
    expect(cache.usedBytes).toBe(15);
  });

  it("disposes an entry deleted while pinned only on release", async () => {
    const { cache, disposed, loader } = harness(100);
    const lease = await cache.acquire("a", sized(loader("a"), 10));
    cache.delete("a");
    expect(disposed).toEqual([]);
    lease.release();
    expect(disposed).toEqual(["a"]);
  });

  it("reports dispose failures without failing the get", async () => {
    const errors: string[] = [];
    const cache = new ModelCache<Model>({
      budgetBytes: 10,
      sizeOf,
      dispose: () => {
        throw new Error("dispose failed");
      },
      onDisposeError: (err, key) => errors.push(`${key}: ${(err as Error).message}`),
    });
    await take(cache, "a", 10, async () => ({ name: "a" }));
    await take(cache, "b", 10, async () => ({ name: "b" }));
    expect(errors).toEqual(["a: dispose failed"]);
    expect(cache.keys()).toEqual(["b"]);
  });

  it("refuses invalid sizes", async () => {
    const cache = new ModelCache<Model>({ budgetBytes: 10, sizeOf });
    await expect(take(cache, "a", -1, async () => ({ name: "a" }))).rejects.toThrow(RangeError);
    expect(() => new ModelCache<Model>({ budgetBytes: NaN, sizeOf })).toThrow(RangeError);
  });
});
