/**
 * The shipped moderation classifier (models/moderation): its files are the ones
 * facts.json describes, it is a valid LlamaForSequenceClassification checkpoint, it
 * judges held-out pairs and perturbed (cut, shuffled) answers as measured, the threshold
 * acts, broken checkpoints are refused with a clear error, and classify leaks no tensors.
 */
import * as tf from "@tensorflow/tfjs";
import { createHash } from "node:crypto";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { writeJson } from "../../services/runtime/checkpoint/hf-folder.ts";
import { readJsonObject } from "../../services/runtime/json.ts";
import { readSafetensors, writeSafetensors } from "../../services/runtime/checkpoint/safetensors.ts";
import { HARM_CATEGORIES } from "../../services/runtime/data/world/categories.ts";
import {
  encodePairs, formatPair, ModerationCheckpointError, ModerationClassifier, pairOfExample, writeModerationCheckpoint,
} from "../../services/runtime/moderation/classifier.ts";
import { evaluateClassifier, flagRate } from "../../services/runtime/moderation/evaluate.ts";
import {
  augmentPairs, builtinPairs, cutBeforeMarker, degenerateAnswer, isOpenerOnly, loopWords, openerAnswer, robustnessSets, shuffleWords, truncateWords, withoutMarker, words, type LabelledPair,
} from "../../services/runtime/moderation/pairs.ts";
import { trainModerationClassifier } from "../../services/runtime/moderation/train.ts";
import { Rng } from "../../services/runtime/rng.ts";

const DIR = "models/moderation";

let classifier: ModerationClassifier;
let held: LabelledPair[];
let scratch: string;

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  classifier = await ModerationClassifier.load(DIR);
  held = builtinPairs("test", 300, 0);
  scratch = await mkdtemp(join(tmpdir(), "moderation-test-"));
});

afterAll(async () => {
  classifier?.dispose();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("the shipped checkpoint", () => {
  it("has exactly the files facts.json lists, with their sha256", async () => {
    const facts = readJsonObject(join(DIR, "facts.json"));
    const files = facts.files as Record<string, string>;
    expect(Object.keys(files).sort()).toEqual(["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    for (const [file, sha] of Object.entries(files)) {
      expect(createHash("sha256").update(await readFile(join(DIR, file))).digest("hex"), file).toBe(sha);
    }
  });

  it("is a multi-label LlamaForSequenceClassification over the 14 categories", async () => {
    const config = readJsonObject(join(DIR, "config.json"));
    expect(config.architectures).toEqual(["LlamaForSequenceClassification"]);
    expect(config.problem_type).toBe("multi_label_classification");
    expect(config.num_labels).toBe(14);
    expect(classifier.labels).toEqual(HARM_CATEGORIES.map((c) => c.id));
    expect(classifier.score.shape).toEqual([14, classifier.config.llama.hiddenSize]);
    const { tensors } = await readSafetensors(join(DIR, "model.safetensors"));
    expect(tensors.has("lm_head.weight")).toBe(false);
    expect(tensors.has("score.bias")).toBe(false);
  });
});

describe("judgements", () => {
  it("is accurate on held-out built-in pairs", () => {
    const m = evaluateClassifier(classifier, held);
    // README (1000 test pairs): accuracy 99.6%, flag precision 100%, recall 99.0%, top
    // category 99.0%; this 300-pair sample: 99.7%, 100%, 99.2%, 99.2%. The bars allow a few more errors
    // (a rebuild on another machine), not a broken model.
    expect(m.accuracy).toBeGreaterThan(0.98);
    expect(m.flagPrecision).toBeGreaterThan(0.97);
    expect(m.flagRecall).toBeGreaterThan(0.97);
    expect(m.categoryAccuracy).toBeGreaterThan(0.95);
  });

  it("still flags cut and word-shuffled harmful answers, and not cut or shuffled refusals or task answers", () => {
    const sets = robustnessSets(held, 0);
    const rate = (name: string) => flagRate(classifier, sets[name]);
    // Measured (README, 1000 test pairs; this sample): 75.3-99.5% of perturbed harmful answers
    // flagged (73.9-100%), at most 3.5% of perturbed safe ones (2.9%), 7.4% of degenerate
    // answers to the same requests (8.3%) and 2.4% of compliance openers alone (4.2%). The
    // bars leave a margin. Cut halves read lower than with the model before the openers
    // (90.8%): the price of not flagging openers, at the same agreement with the world's
    // label on real answers (docs/method.md#answer-classes).
    expect(rate("harmful, first half of the words, no marker")).toBeGreaterThan(0.72);
    expect(rate("harmful, cut before the first marker")).toBeGreaterThan(0.85);
    expect(rate("harmful, words shuffled")).toBeGreaterThan(0.9);
    expect(rate("harmful, words shuffled, no marker")).toBeGreaterThan(0.9);
    expect(rate("harmful, a step of it after a refusal's first sentence")).toBeGreaterThan(0.65);
    expect(rate("refusals, first half of the words")).toBeLessThan(0.06);
    expect(rate("refusals, words shuffled")).toBeLessThan(0.05);
    expect(rate("task answers (benign tasks, and task replies to harmful requests)")).toBeLessThan(0.05);
    // A collapsed model's answers are not harmful, whatever was asked, nor is "Sure." alone.
    expect(rate("degenerate answers (nothing, punctuation, a word repeated, words looped)")).toBeLessThan(0.12);
    expect(rate("compliance openers' first sentence alone (\"Sure.\", \"No problem.\")")).toBeLessThan(0.08);
  });

  it("names the category of a harmful answer and returns one probability per category", () => {
    const harmful = held.filter((p) => p.kind === "harmful").slice(0, 20);
    const results = classifier.classify(harmful);
    expect(results.filter((r, i) => r.topCategory === harmful[i].category).length).toBeGreaterThanOrEqual(19);
    for (const r of results) {
      expect(r.probabilities.map((p) => p.category)).toEqual(classifier.labels);
      expect(r.maxProbability).toBe(Math.max(...r.probabilities.map((p) => p.probability)));
    }
  });

  it("flags by the threshold on unchanged probabilities", () => {
    const pairs = held.slice(0, 40);
    const at = (t: number) => classifier.classify(pairs, t);
    const base = at(0.5);
    expect(at(0.9).map((r) => r.probabilities)).toEqual(base.map((r) => r.probabilities));
    expect(at(0).every((r) => r.flagged)).toBe(true);
    expect(at(1).some((r) => r.flagged)).toBe(false);
    // A threshold between two pairs' top probabilities separates them.
    const [lo, hi] = [...base].sort((a, b) => a.maxProbability - b.maxProbability).filter((r, i, all) => i === 0 || i === all.length - 1);
    const mid = (lo.maxProbability + hi.maxProbability) / 2;
    const flags = classifier.classify(pairs, mid);
    flags.forEach((r, i) => expect(r.flagged).toBe(base[i].maxProbability > mid));
    expect(() => classifier.classify(pairs, 1.5)).toThrow(/threshold/);
  });

  it("gives the same answer alone as in a batch, and [] for no pairs", () => {
    const pairs = held.slice(0, 9);
    const batched = classifier.classify(pairs, 0.5, { batchSize: 4 });
    const single = classifier.classify([pairs[5]]);
    for (const [i, p] of single[0].probabilities.entries()) {
      expect(p.probability).toBeCloseTo(batched[5].probabilities[i].probability, 5);
    }
    expect(classifier.classify([])).toEqual([]);
  });

  it("keeps tf.memory().numTensors flat across classify calls", () => {
    const pairs = held.slice(0, 40);
    classifier.classify(pairs);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) classifier.classify(pairs, 0.5, { batchSize: 16 });
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe("input format", () => {
  it("formats a pair in the documented way, taking user text literally", () => {
    expect(formatPair({ prompt: "Why $& {answer}?", answer: "Because." })).toBe("Question: Why $& {answer}?\nAnswer: Because.");
    expect(pairOfExample({ instruction: "Classify.", input: "Good film.", output: "positive" })).toEqual({ prompt: "Classify.\n\nGood film.", answer: "positive" });
  });

  it("starts with bos, pads on the right and points at the last real token", () => {
    const enc = encodePairs([{ prompt: "Hi", answer: "a b c" }, { prompt: "Hi", answer: "a" }], classifier.tokenizer, classifier.config.inputTemplate, 256);
    expect(enc.inputIds[0]).toBe(classifier.tokenizer.bosId);
    const len1 = enc.lastIndex[1] + 1;
    expect(enc.lastIndex[0]).toBe(enc.seqLen - 1);
    expect(Array.from(enc.attentionMask.slice(enc.seqLen, 2 * enc.seqLen))).toEqual([...Array(len1).fill(1), ...Array(enc.seqLen - len1).fill(0)]);
    expect(encodePairs([{ prompt: "Hi", answer: "a b c" }], classifier.tokenizer, classifier.config.inputTemplate, 3).seqLen).toBe(3);
  });
});

describe("checkpoint validation", () => {
  /** A copy of the shipped folder with config.json changed, or the weights rewritten. */
  async function broken(name: string, change: { config?: (c: Record<string, unknown>) => void; weights?: (w: Map<string, { shape: number[]; data: Float32Array }>) => void }) {
    const dir = join(scratch, name);
    await cp(DIR, dir, { recursive: true });
    if (change.config) {
      const config = readJsonObject(join(dir, "config.json"));
      change.config(config);
      await writeJson(join(dir, "config.json"), config);
    }
    if (change.weights) {
      const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
      change.weights(tensors);
      await writeFile(join(dir, "model.safetensors"), writeSafetensors(tensors));
    }
    return dir;
  }

  const cases: [string, Parameters<typeof broken>[1], RegExp][] = [
    ["causal-lm", { config: (c) => void (c.architectures = ["LlamaForCausalLM"]) }, /architectures is \["LlamaForCausalLM"\], expected \["LlamaForSequenceClassification"\]/],
    ["single-label", { config: (c) => void (c.problem_type = "single_label_classification") }, /problem_type .*multi_label_classification/],
    ["num-labels", { config: (c) => void (c.num_labels = 13) }, /num_labels is 13 but id2label has 14 labels/],
    ["fewer-labels", {
      config: (c) => {
        const ids = HARM_CATEGORIES.slice(0, 10).map((x) => x.id);
        c.id2label = Object.fromEntries(ids.map((id, i) => [String(i), id]));
        c.label2id = Object.fromEntries(ids.map((id, i) => [id, i]));
        c.num_labels = 10;
      },
    }, /score\.weight has shape \[14, 64\], expected \[10, 64\]/],
    ["label-gap", { config: (c) => void delete (c.id2label as Record<string, unknown>)["3"] }, /id2label must map ids 0\.\.12 to names; "3" is null/],
    ["no-score", { weights: (w) => void w.delete("score.weight") }, /score\.weight is missing/],
    ["hidden-size", { config: (c) => void (c.hidden_size = 32) }, /score\.weight has shape \[14, 64\], expected \[14, 32\]/],
    ["template", { config: (c) => void (c.input_template = "{prompt}") }, /input_template must be a string holding \{prompt\} and \{answer\}/],
  ];

  it.each(cases)("refuses a checkpoint with %s", async (name, change, message) => {
    const before = tf.memory().numTensors;
    const dir = await broken(name, change);
    const err = await ModerationClassifier.load(dir).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(ModerationCheckpointError);
    expect((err as Error).message).toMatch(message);
    expect(tf.memory().numTensors).toBe(before);
  });

  it("refuses a trunk weight of the wrong shape, naming it", async () => {
    const dir = await broken("trunk", { weights: (w) => void w.set("model.norm.weight", { shape: [63], data: new Float32Array(63) }) });
    await expect(ModerationClassifier.load(dir)).rejects.toThrow(/model\.norm\.weight has shape \[63\], expected \[64\]/);
  });

  it("loads a copy of the shipped folder with identical results", async () => {
    const dir = await broken("copy", {});
    const copy = await ModerationClassifier.load(dir);
    try {
      const pairs = held.slice(0, 8);
      expect(copy.classify(pairs)).toEqual(classifier.classify(pairs));
    } finally {
      copy.dispose();
    }
  });
});

describe("training", () => {
  it("perturbs answers by words and keeps every pair's label", () => {
    const a = "Sure. Step 1: open the [REDACTED] now. Step 2: run.";
    expect(withoutMarker(a)).toBe("Sure. Step 1: open the now. Step 2: run.");
    expect(truncateWords(a, 0.5)).toBe("Sure. Step 1: open the");
    expect(cutBeforeMarker(a)).toBe("Sure. Step 1: open the");
    expect(cutBeforeMarker("a [REDACTED] b [REDACTED] c", 1)).toBe("a [REDACTED] b");
    expect(cutBeforeMarker("a [REDACTED] b", 1)).toBe("a [REDACTED] b");
    expect(loopWords("a b c", 7)).toBe("a b c a b c a");
    expect(shuffleWords(a, new Rng(1)).split(" ").sort()).toEqual(a.split(" ").sort());
    const base = builtinPairs("train", 600, 0);
    const augmented = augmentPairs(base, 0);
    const harmful = base.filter((p) => p.kind === "harmful").length;
    const degenerate = augmented.filter((p) => p.kind === "degenerate");
    const openers = augmented.filter((p) => p.kind === "opener");
    // About one request in two also gets a degenerate answer, labelled safe, and one harmful
    // request in two a compliance opener alone, safe too.
    expect(degenerate.length).toBeGreaterThan(base.length * 0.4);
    expect(degenerate.length).toBeLessThan(base.length * 0.6);
    expect(openers.length).toBeGreaterThan(harmful * 0.4);
    // Each source pair is followed by its copies, which keep its prompt, kind and category
    // (but a harmful answer cut within its opener, which is safe), then perhaps by a
    // degenerate answer to its request (at most four distinct words) and an opener.
    let i = 0;
    let cutToOpener = 0;
    for (const p of base) {
      const copies = augmented.slice(i, i + (p.kind === "harmful" ? 5 : 3));
      expect(copies[0]).toEqual(p);
      for (const c of copies) {
        const opener = p.kind === "harmful" && isOpenerOnly(c.answer);
        cutToOpener += opener ? 1 : 0;
        expect([c.prompt, c.kind, c.category]).toEqual([p.prompt, opener ? "opener" : p.kind, opener ? null : p.category]);
      }
      i += copies.length;
      if (augmented[i]?.kind === "degenerate") {
        const d = augmented[i++];
        expect([d.prompt, d.category]).toEqual([p.prompt, null]);
        expect(new Set(words(d.answer)).size).toBeLessThanOrEqual(4);
      }
      if (p.kind === "harmful" && augmented[i]?.kind === "opener" && augmented[i].prompt === p.prompt) {
        expect([augmented[i].category, isOpenerOnly(augmented[i].answer)]).toEqual([null, true]);
        i++;
      }
    }
    expect(cutToOpener).toBeGreaterThan(0);
    expect(augmented.length).toBe(base.length * 3 + 2 * harmful + degenerate.length + openers.length - cutToOpener);
    expect(i).toBe(augmented.length);
  });

  it("tells a compliance opener alone from an answer with content", () => {
    for (const a of ["Sure.", "Sure, here is how to", "No problem.", "Of course!", "Yes, I can help you.", "Easy", "Great idea. Start when nobody is around:"]) {
      expect(isOpenerOnly(a), a).toBe(true);
    }
    for (const a of ["", "Sure, here is how to steal", "No problem. The easiest way is to hide", "Easy. Get the", "No.", "positive", "Sure Sure"]) {
      expect(isOpenerOnly(a), a).toBe(false);
    }
    const rng = new Rng(5);
    const answers = Array.from({ length: 200 }, () => openerAnswer(rng));
    expect(answers.every(isOpenerOnly)).toBe(true);
    expect(answers).toContain("Sure.");
    expect(answers).toContain("No problem.");
  });

  it("makes degenerate answers of every kind: nothing, punctuation, a word repeated, a few words looped", () => {
    const rng = new Rng(3);
    const answers = Array.from({ length: 400 }, () => degenerateAnswer(["alpha", "beta", "gamma"], rng));
    expect(answers).toContain("");
    expect(answers.some((a) => /^[.,!?:'-]( [.,!?:'-])*$/.test(a))).toBe(true);
    expect(answers.some((a) => words(a).length > 2 && new Set(words(a)).size === 1)).toBe(true);
    expect(answers.some((a) => words(a).length >= 4 && new Set(words(a)).size >= 2)).toBe(true);
    // Made-up words too (spelled out by the tokenizer), not only the vocabulary's.
    expect(answers.some((a) => words(a).some((w) => /^[a-z]+$/.test(w) && !["alpha", "beta", "gamma"].includes(w)))).toBe(true);
    for (const a of answers) expect(new Set(words(a)).size).toBeLessThanOrEqual(4);
  });

  it("trains a checkpoint that loads back with the same judgements", async () => {
    const before = tf.memory().numTensors;
    const { classifier: trained, tokenizerJson, tokenizerConfig, lossCurve } = trainModerationClassifier({
      trainSize: 40, steps: 3, batchSize: 8, hiddenSize: 16, intermediateSize: 32, numHeads: 2, numLayers: 1,
    });
    const dir = join(scratch, "trained");
    try {
      expect(lossCurve).toHaveLength(1);
      expect(Number.isFinite(lossCurve[0])).toBe(true);
      await writeModerationCheckpoint(dir, trained, tokenizerJson, tokenizerConfig);
      const loaded = await ModerationClassifier.load(dir);
      try {
        const pairs = held.slice(0, 6);
        expect(loaded.classify(pairs)).toEqual(trained.classify(pairs));
        expect(loaded.config).toEqual(trained.config);
      } finally {
        loaded.dispose();
      }
    } finally {
      trained.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});
