// The experiment's cell scheduler (runner.ts runCells): cells run N at a time in plan order,
// each only after the cells it reads; a failure lets the running cells finish and starts no other.
import { describe, expect, it } from "vitest";
import { runCells, type Cell } from "../../services/experiment/runner.ts";

const tick = () => new Promise((r) => setTimeout(r, 5));

/** Cells that record when they start and end; `fail` names one that throws. */
function tracked(plan: [id: string, after: string[]][], fail?: string) {
  const events: string[] = [];
  let running = 0;
  let peak = 0;
  const cells: Cell[] = plan.map(([id, after]) => ({ id, after, run: async () => ({ kind: "norm", attentionNorm: 0, batchSize: 0 }) }));
  const run = async (cell: Cell) => {
    events.push(`start ${cell.id}`);
    peak = Math.max(peak, ++running);
    await tick();
    running--;
    events.push(`end ${cell.id}`);
    if (cell.id === fail) throw new Error(`${cell.id} failed`);
  };
  return { cells, run, events, peak: () => peak };
}

const PLAN: [string, string[]][] = [
  ["align/a", []],
  ["align/b", []],
  ["ft/a1", ["align/a"]],
  ["ft/b1", ["align/b"]],
  ["ft/a2", ["align/a"]],
];

describe("runCells", () => {
  it("starts a cell only after the cells it reads have finished", async () => {
    const t = tracked(PLAN);
    const done = new Set<string>();
    await runCells(t.cells, done, 2, t.run);
    for (const [id, after] of PLAN) for (const dep of after) expect(t.events.indexOf(`end ${dep}`), `${id} after ${dep}`).toBeLessThan(t.events.indexOf(`start ${id}`));
    expect([...done].sort()).toEqual(PLAN.map(([id]) => id).sort());
  });

  it("runs up to `parallel` cells at once, and one at a time with 1", async () => {
    const two = tracked(PLAN);
    await runCells(two.cells, new Set(), 2, two.run);
    expect(two.peak()).toBe(2);
    expect(two.events.slice(0, 2)).toEqual(["start align/a", "start align/b"]);
    const one = tracked(PLAN);
    await runCells(one.cells, new Set(), 1, one.run);
    expect(one.peak()).toBe(1);
    expect(one.events.filter((e) => e.startsWith("start"))).toEqual(PLAN.map(([id]) => `start ${id}`));
  });

  it("skips the cells already done (a resumed run)", async () => {
    const t = tracked(PLAN);
    await runCells(t.cells, new Set(["align/a", "ft/a1"]), 2, t.run);
    expect(t.events.filter((e) => e.startsWith("start")).sort()).toEqual(["start align/b", "start ft/a2", "start ft/b1"]);
  });

  it("after a failure lets the running cell finish, starts nothing else and throws", async () => {
    const t = tracked(PLAN, "align/a");
    const done = new Set<string>();
    await expect(runCells(t.cells, done, 2, t.run)).rejects.toThrow("align/a failed");
    expect(t.events).toContain("end align/b");
    expect(done).toEqual(new Set(["align/b"]));
    expect(t.events.some((e) => e.startsWith("start ft/"))).toBe(false);
  });

  it("refuses a cell that waits for a cell not in the plan", async () => {
    const t = tracked([["ft/x", ["align/missing"]]]);
    await expect(runCells(t.cells, new Set(), 2, t.run)).rejects.toThrow("ft/x after align/missing");
  });
});
