/**
 * A cache of loaded models (or anything costly to load), keyed by checkpoint digest:
 * least-recently-used eviction within a byte budget, one load per key at a time.
 *
 * - A value is used pinned, through use() or acquire(): pinned entries are never evicted,
 *   even if that takes the cache over budget until they are released.
 * - An entry larger than the whole budget is loaded but not kept: it is disposed when its
 *   last user releases it.
 */

export interface ModelCacheOptions<T> {
  budgetBytes: number;
  /** What a loaded value takes, in bytes (a non-negative number). */
  sizeOf: (value: T) => number;
  /** Frees an evicted value (e.g. disposes its tensors). */
  dispose?: (value: T, key: string) => void | Promise<void>;
  /** Told about dispose failures, which never fail the get that caused the eviction. */
  onDisposeError?: (error: unknown, key: string) => void;
}

/** A pinned value: not evicted until released. Release exactly once. */
export interface Lease<T> {
  readonly value: T;
  release(): void;
}

interface Entry<T> {
  key: string;
  value: T;
  bytes: number;
  pins: number;
  /** cached: in the LRU; dropped: removed while pinned; unkept: over budget. The last two are disposed on last release. */
  state: "cached" | "dropped" | "disposed" | "unkept";
}

export class ModelCache<T> {
  /** Map order is the LRU order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Entry<T>>();
  private readonly loading = new Map<string, Promise<Entry<T>>>();
  private used = 0;

  constructor(private readonly options: ModelCacheOptions<T>) {
    if (!(options.budgetBytes >= 0)) throw new RangeError(`budgetBytes must be non-negative, got ${options.budgetBytes}`);
  }

  /** The cached value, or load() it (once, however many callers ask at the same time), pinned until release(). */
  async acquire(key: string, load: () => Promise<T>): Promise<Lease<T>> {
    const entry = await this.obtain(key, load);
    let released = false;
    return {
      value: entry.value,
      release: () => {
        if (released) return;
        released = true;
        this.unpin(entry);
      },
    };
  }

  /** Runs fn with the value pinned. */
  async use<R>(key: string, load: () => Promise<T>, fn: (value: T) => R | Promise<R>): Promise<R> {
    const lease = await this.acquire(key, load);
    try {
      return await fn(lease.value);
    } finally {
      lease.release();
    }
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** Cached keys, least recently used first. */
  keys(): string[] {
    return [...this.entries.keys()];
  }

  get usedBytes(): number {
    return this.used;
  }

  /** Removes an entry; it is disposed now, or on its last release if pinned. */
  delete(key: string): boolean {
    const entry = this.entries.get(key);
    if (!entry) return false;
    this.evict(entry);
    return true;
  }

  /** Removes every entry (e.g. at shutdown). */
  clear(): void {
    for (const entry of [...this.entries.values()]) this.evict(entry);
  }

  private async obtain(key: string, load: () => Promise<T>): Promise<Entry<T>> {
    for (;;) {
      const cached = this.entries.get(key);
      if (cached) {
        this.entries.delete(key);
        this.entries.set(key, cached);
        cached.pins++;
        return cached;
      }
      let pending = this.loading.get(key);
      if (!pending) {
        pending = this.load(key, load);
        this.loading.set(key, pending);
      }
      const entry = await pending;
      // Evicted by another load, or unkept and released, before this caller resumed: load it again.
      if (entry.state === "disposed") continue;
      entry.pins++;
      return entry;
    }
  }

  private async load(key: string, load: () => Promise<T>): Promise<Entry<T>> {
    try {
      const value = await load();
      const bytes = this.options.sizeOf(value);
      if (!(Number.isFinite(bytes) && bytes >= 0)) {
        await this.options.dispose?.(value, key);
        throw new RangeError(`sizeOf must give a non-negative number of bytes, got ${bytes}`);
      }
      const entry: Entry<T> = { key, value, bytes, pins: 0, state: "unkept" };
      if (bytes <= this.options.budgetBytes) {
        entry.state = "cached";
        this.entries.set(key, entry);
        this.used += bytes;
        this.trim(entry);
      }
      return entry;
    } finally {
      this.loading.delete(key);
    }
  }

  /** Evicts unpinned entries, least recent first, until within budget; never `keep`. */
  private trim(keep?: Entry<T>): void {
    for (const entry of [...this.entries.values()]) {
      if (this.used <= this.options.budgetBytes) return;
      if (entry !== keep && entry.pins === 0) this.evict(entry);
    }
  }

  private evict(entry: Entry<T>): void {
    this.entries.delete(entry.key);
    this.used -= entry.bytes;
    entry.state = "dropped";
    if (entry.pins === 0) this.dispose(entry);
  }

  private unpin(entry: Entry<T>): void {
    entry.pins--;
    if (entry.pins > 0) return;
    if (entry.state === "dropped" || entry.state === "unkept") this.dispose(entry);
    else if (entry.state === "cached") this.trim();
  }

  private dispose(entry: Entry<T>): void {
    entry.state = "disposed";
    const report = (error: unknown) => this.options.onDisposeError?.(error, entry.key);
    try {
      void Promise.resolve(this.options.dispose?.(entry.value, entry.key)).catch(report);
    } catch (error) {
      report(error);
    }
  }
}
