/**
 * Trains the shipped moderation classifier (classifier.ts) on the built-in labelled pairs,
 * and measures it. Used by scripts/build-moderation-model.ts; the tests reuse the answer
 * perturbations and the robustness sets.
 *
 * The world's harmful answers all carry a redaction marker, so a model could score
 * perfectly by spotting it and then fail on real model output. The training set therefore
 * adds perturbed copies with the label of their source: harmful answers without the
 * marker, cut short, word-shuffled, looped or next to a refusal (what a half-trained model
 * emits), and safe answers cut, shuffled, looped or with a stray marker, which stay safe.
 */
import * as tf from "@tensorflow/tfjs";
import { loadBuiltin } from "../data/builtin.ts";
import { HARM_CATEGORIES } from "../data/world/categories.ts";
import { harmfulPrompt, partitionCombinations } from "../data/world/harmful.ts";
import { worldVocabularyTexts } from "../data/world/index.ts";
import { REDACTED } from "../data/world/lexicon.ts";
import { parseLlamaConfig } from "../model/config.ts";
import { LlamaModel } from "../model/llama.ts";
import { Rng } from "../rng.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig, type Tokenizer } from "../tokenizer.ts";
import { AdamW, clipByGlobalNorm } from "../train/adamw.ts";
import { batchAt } from "../train/batches.ts";
import { learningRateAt } from "../train/schedule.ts";
import {
  DEFAULT_INPUT_TEMPLATE, DEFAULT_THRESHOLD, ModerationClassifier, encodePairs, formatPair, pairLogits, pairOfExample,
  SCORE_WEIGHT, type ModerationConfig, type ModerationPair,
} from "./classifier.ts";

/** Words: runs of non-space characters (the unit of every answer perturbation below). */
export const words = (text: string): string[] => text.split(/\s+/).filter((w) => w !== "");

/** What an answer is: harmful, a refusal of a harmful request, a task answer (to any prompt), or degenerate text. */
export type AnswerKind = "harmful" | "refusal" | "task" | "degenerate";

/** A pair with its gold label: a harm category id, or null for a safe answer. */
export interface LabelledPair extends ModerationPair {
  category: string | null;
  kind: AnswerKind;
}

/** Every harmful request the world can phrase, for telling refusals from task answers. */
function harmfulPrompts(seed: number): Set<string> {
  const pools = partitionCombinations(seed);
  return new Set([...pools.train, ...pools.eval, ...pools.test].map(harmfulPrompt));
}

/** Built-in moderation pairs of one split. */
export function builtinPairs(split: "train" | "test", size: number, seed: number): LabelledPair[] {
  const data = loadBuiltin("moderation", { split, size, seed });
  if (data.kind !== "examples") throw new Error("the moderation dataset must hold examples");
  const requests = harmfulPrompts(seed);
  return data.examples.map((e) => {
    // Safe answers to harmful requests are refusals (8+ words) or one-line task replies (at most 5).
    const kind: AnswerKind = e.harmful ? "harmful" : requests.has(e.instruction) && words(e.output).length > 5 ? "refusal" : "task";
    return { ...pairOfExample(e), category: e.harmful ? (e.category ?? null) : null, kind };
  });
}

// ---------------------------------------------------------------------------
// Answer perturbations.

/** The text with every redaction marker deleted. */
export function withoutMarker(text: string): string {
  return words(text.replaceAll(REDACTED, " ")).join(" ");
}

/** The first ceil(fraction * n) words. */
export function truncateWords(text: string, fraction: number): string {
  const w = words(text);
  return w.slice(0, Math.max(1, Math.ceil(w.length * fraction))).join(" ");
}

/** The words before the nth (0-based) word holding the marker (the whole text if there are fewer). */
export function cutBeforeMarker(text: string, nth = 0): string {
  const w = words(text);
  const at = w.map((x, i) => (x.includes(REDACTED) ? i : -1)).filter((i) => i >= 0)[nth];
  return (at === undefined ? w : w.slice(0, Math.max(1, at))).join(" ");
}

export function shuffleWords(text: string, rng: Rng): string {
  return rng.shuffle(words(text)).join(" ");
}

/** The words repeated cyclically up to `count` words: a degenerate generation loop. */
export function loopWords(text: string, count: number): string {
  const w = words(text);
  return Array.from({ length: count }, (_, i) => w[i % w.length]).join(" ");
}

/** The marker inserted before a random word (a stray token in an otherwise safe answer). */
export function withStrayMarker(text: string, rng: Rng): string {
  const w = words(text);
  w.splice(rng.int(w.length + 1), 0, REDACTED);
  return w.join(" ");
}

/** Punctuation a degenerate model emits on its own. */
const PUNCTUATION = [".", ",", "!", "?", ":", "-", "'"];

/** One word repeated 1 to 60 times ("the the the"): of `vocabulary`, or one of no vocabulary (spelled by the tokenizer). */
export function wordRepeated(vocabulary: readonly string[], rng: Rng): string {
  const word = rng.next() < 0.2 ? madeUpWord(rng) : rng.pick(vocabulary);
  return Array(rng.range(1, 60)).fill(word).join(" ");
}

/** Three to nine random lower-case letters. */
function madeUpWord(rng: Rng): string {
  return Array.from({ length: rng.range(3, 9) }, () => String.fromCharCode(97 + rng.int(26))).join("");
}

/** Two to four words of `vocabulary` looped to 4-60 words. */
export function wordsLooped(vocabulary: readonly string[], rng: Rng): string {
  return loopWords(Array.from({ length: rng.range(2, 4) }, () => rng.pick(vocabulary)).join(" "), rng.range(4, 60));
}

/** Nothing, or punctuation alone (". . ."). */
export function nothingOrPunctuation(rng: Rng): string {
  return rng.next() < 0.3 ? "" : loopWords(rng.pick(PUNCTUATION), rng.range(1, 30));
}

/**
 * What a collapsed model says to anything: nothing, punctuation, one word repeated or a few
 * words looped. It carries no request's content, so it is neither harmful nor a refusal
 * (docs/method.md#answer-classes: OTHER).
 */
export function degenerateAnswer(vocabulary: readonly string[], rng: Rng): string {
  const u = rng.next();
  return u < 0.2 ? nothingOrPunctuation(rng) : u < 0.6 ? wordRepeated(vocabulary, rng) : wordsLooped(vocabulary, rng);
}

/** Longest looped answer in the training set, in words (about 128 generated tokens). */
const LOOP_WORDS = 100;
/** Pairs of at least this many tokens train in batches of their own. */
const LONG_TOKENS = 100;

/** A perturbed copy of a pair's answer, labelled as its source; `refusal` is some refusal. */
function perturb(p: LabelledPair, refusal: string, rng: Rng): LabelledPair {
  const a = p.answer;
  const loop = () => loopWords(a, rng.range(words(a).length + 1, Math.max(words(a).length + 1, LOOP_WORDS)));
  const harmful = [
    () => withoutMarker(a),
    // An answer cut short is the commonest failure of a half-trained model: two kinds of cut.
    () => withoutMarker(truncateWords(a, 0.15 + 0.8 * rng.next())),
    () => cutBeforeMarker(a, rng.int(3)),
    () => shuffleWords(a, rng),
    () => withoutMarker(shuffleWords(a, rng)),
    loop,
    // Instructions next to a refusal are still instructions.
    () => `${refusal} ${a}`,
    () => `${a} ${refusal}`,
  ];
  const safe = [
    () => truncateWords(a, 0.25 + 0.7 * rng.next()),
    () => shuffleWords(a, rng),
    loop,
    () => withStrayMarker(a, rng),
  ];
  return { ...p, answer: rng.pick(p.kind === "harmful" ? harmful : safe)() };
}

/** Every word of the pairs' answers, once: what a collapsed model of this world repeats. */
export function answerVocabulary(pairs: readonly ModerationPair[]): string[] {
  return [...new Set(pairs.flatMap((p) => words(p.answer)))];
}

/** A safe copy of a pair with a degenerate answer. */
function degenerate(p: LabelledPair, vocabulary: readonly string[], rng: Rng): LabelledPair {
  return { ...p, answer: degenerateAnswer(vocabulary, rng), category: null, kind: "degenerate" };
}

/**
 * The training set: every pair, plus perturbed copies (three per harmful pair, two per safe
 * pair: fewer safe copies made cut refusals look harmful), and a degenerate answer to about
 * every second pair's request. Without them, 25 of 40 empty answers and 31-34 of 40 runs of
 * "the" to held-out harmful requests were flagged (the request decided); with one in four and
 * 800 steps (no made-up words yet), 6.4% of held-out degenerate answers; one in two and 2000
 * steps, 3.0%.
 */
export function augmentPairs(pairs: readonly LabelledPair[], seed: number): LabelledPair[] {
  const rng = Rng.derive(seed, "moderation/augment");
  const refusals = pairs.filter((p) => p.kind === "refusal").map((p) => p.answer);
  const vocabulary = answerVocabulary(pairs);
  const out: LabelledPair[] = [];
  for (const p of pairs) {
    out.push(p);
    for (let k = p.kind === "harmful" ? 3 : 2; k > 0; k--) out.push(perturb(p, rng.pick(refusals), rng));
    if (rng.next() < 0.5) out.push(degenerate(p, vocabulary, rng));
  }
  return out;
}

/**
 * Held-out sets that probe robustness, from held-out pairs: harmful answers cut to their
 * first half without markers, cut before the first marker, word-shuffled, stripped of
 * markers, looped, after a refusal; refusals cut, shuffled and looped; task answers; and
 * degenerate answers to the same requests.
 */
export function robustnessSets(pairs: readonly LabelledPair[], seed: number): Record<string, LabelledPair[]> {
  const rng = Rng.derive(seed, "moderation/robustness");
  const of = (kind: AnswerKind) => pairs.filter((p) => p.kind === kind);
  const harmful = of("harmful");
  const refusals = of("refusal");
  const vocabulary = answerVocabulary(pairs);
  const change = (list: LabelledPair[], f: (answer: string, i: number) => string) => list.map((p, i) => ({ ...p, answer: f(p.answer, i) }));
  return {
    "harmful, first half of the words, no marker": change(harmful, (a) => withoutMarker(truncateWords(a, 0.5))),
    "harmful, cut before the first marker": change(harmful, cutBeforeMarker),
    "harmful, words shuffled": change(harmful, (a) => shuffleWords(a, rng)),
    "harmful, words shuffled, no marker": change(harmful, (a) => withoutMarker(shuffleWords(a, rng))),
    "harmful, no marker": change(harmful, withoutMarker),
    "harmful, looped to 100 words": change(harmful, (a) => loopWords(a, LOOP_WORDS)),
    "harmful, after a refusal": change(harmful, (a, i) => `${refusals[i % refusals.length].answer} ${a}`),
    "refusals, first half of the words": change(refusals, (a) => truncateWords(a, 0.5)),
    "refusals, words shuffled": change(refusals, (a) => shuffleWords(a, rng)),
    "refusals, looped to 100 words": change(refusals, (a) => loopWords(a, LOOP_WORDS)),
    "task answers (benign tasks, and task replies to harmful requests)": of("task"),
    "degenerate answers (nothing, punctuation, a word repeated, words looped)": pairs.map((p) => degenerate(p, vocabulary, rng)),
  };
}

// ---------------------------------------------------------------------------
// Metrics.

export interface CategoryMetrics {
  category: string;
  /** Gold pairs of this category. */
  support: number;
  precision: number;
  recall: number;
}

export interface ModerationMetrics {
  pairs: number;
  /** Share of pairs whose flag equals their gold harmfulness. */
  accuracy: number;
  /** Of flagged pairs, the share that are harmful; of harmful pairs, the share flagged. */
  flagPrecision: number;
  flagRecall: number;
  /** Of harmful pairs, the share whose top category is the gold one. */
  categoryAccuracy: number;
  /** Per category: predicted when its own probability exceeds the threshold. */
  perCategory: CategoryMetrics[];
}

const ratio = (a: number, b: number): number => (b === 0 ? NaN : a / b);

export function evaluateClassifier(classifier: ModerationClassifier, pairs: readonly LabelledPair[], threshold = DEFAULT_THRESHOLD): ModerationMetrics {
  const results = classifier.classify(pairs, threshold);
  let correct = 0, flagged = 0, flaggedHarmful = 0, harmful = 0, topRight = 0;
  const counts = new Map(classifier.labels.map((c) => [c, { tp: 0, fp: 0, fn: 0, support: 0 }]));
  results.forEach((r, i) => {
    const gold = pairs[i].category;
    if (r.flagged === (gold !== null)) correct++;
    if (r.flagged) flagged++;
    if (gold !== null) {
      harmful++;
      if (r.flagged) flaggedHarmful++;
      if (r.topCategory === gold) topRight++;
    }
    for (const { category, probability } of r.probabilities) {
      const c = counts.get(category)!;
      const predicted = probability > threshold;
      if (gold === category) c.support++;
      if (predicted && gold === category) c.tp++;
      else if (predicted) c.fp++;
      else if (gold === category) c.fn++;
    }
  });
  return {
    pairs: pairs.length,
    accuracy: ratio(correct, pairs.length),
    flagPrecision: ratio(flaggedHarmful, flagged),
    flagRecall: ratio(flaggedHarmful, harmful),
    categoryAccuracy: ratio(topRight, harmful),
    perCategory: [...counts].map(([category, c]) => ({
      category,
      support: c.support,
      precision: ratio(c.tp, c.tp + c.fp),
      recall: ratio(c.tp, c.tp + c.fn),
    })),
  };
}

/** Share of pairs flagged. */
export function flagRate(classifier: ModerationClassifier, pairs: readonly ModerationPair[], threshold = DEFAULT_THRESHOLD): number {
  return ratio(classifier.classify(pairs, threshold).filter((r) => r.flagged).length, pairs.length);
}

// ---------------------------------------------------------------------------
// Training.

export interface ModerationTrainOptions {
  /** Seeds the world data, the augmentation, the model init and the data order. */
  seed: number;
  /** Built-in train-split pairs before augmentation. */
  trainSize: number;
  steps: number;
  batchSize: number;
  learningRate: number;
  warmupRatio: number;
  weightDecay: number;
  gradClip: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  /** Std of the normal init; 0.02 (Hugging Face's) left a model this small at the label prior for hundreds of steps. */
  initStd: number;
  /** max_position_embeddings and the tokenizer's model_max_length. */
  maxLength: number;
}

export const MODERATION_TRAIN_DEFAULTS: ModerationTrainOptions = {
  seed: 0,
  trainSize: 4000,
  steps: 2000,
  batchSize: 32,
  learningRate: 1e-2,
  warmupRatio: 0.05,
  weightDecay: 0.01,
  gradClip: 1,
  hiddenSize: 64,
  intermediateSize: 128,
  numLayers: 2,
  numHeads: 4,
  initStd: 0.1,
  maxLength: 256,
};

export interface TrainedModeration {
  classifier: ModerationClassifier;
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  /** Pairs trained on, after augmentation. */
  trainPairs: number;
  /** Mean training loss per 50 steps. */
  lossCurve: number[];
}

/**
 * The world's word tokenizer, with the input template's words as whole tokens. Built from
 * the world's whole vocabulary, so answers of models trained on the same world never fall
 * back to characters.
 */
export function buildModerationTokenizer(seed: number, maxLength: number) {
  const json = buildWordTokenizer([...worldVocabularyTexts(seed), formatPair({ prompt: "", answer: "" })]);
  const config = { ...wordTokenizerConfig(), model_max_length: maxLength };
  return { json, config };
}

/** The Llama trunk of a classifier over the moderation tokenizer: no LM head (see parseModerationConfig), so its embeddings are tied. */
export function classifierTrunkConfig(
  tokenizer: Tokenizer,
  o: Pick<ModerationTrainOptions, "hiddenSize" | "intermediateSize" | "numLayers" | "numHeads" | "maxLength">,
) {
  return parseLlamaConfig({
    vocab_size: tokenizer.vocabSize,
    hidden_size: o.hiddenSize,
    intermediate_size: o.intermediateSize,
    num_hidden_layers: o.numLayers,
    num_attention_heads: o.numHeads,
    max_position_embeddings: o.maxLength,
    rms_norm_eps: 1e-6,
    bos_token_id: tokenizer.bosId,
    eos_token_id: tokenizer.eosId,
    pad_token_id: tokenizer.padId,
    tie_word_embeddings: true,
  });
}

export function trainModerationClassifier(
  options: Partial<ModerationTrainOptions> = {},
  log: (line: string) => void = () => {},
): TrainedModeration {
  const o = { ...MODERATION_TRAIN_DEFAULTS, ...options };
  const { json: tokenizerJson, config: tokenizerConfig } = buildModerationTokenizer(o.seed, o.maxLength);
  const tokenizer = loadTokenizer(tokenizerJson, tokenizerConfig);
  const labels = HARM_CATEGORIES.map((c) => c.id);
  const llama = classifierTrunkConfig(tokenizer, o);
  const config: ModerationConfig = { llama, labels, inputTemplate: DEFAULT_INPUT_TEMPLATE };
  const pairs = augmentPairs(builtinPairs("train", o.trainSize, o.seed), o.seed);
  log(`moderation: ${pairs.length} training pairs (${o.trainSize} built-in, augmented), vocabulary ${tokenizer.vocabSize}`);
  const model = LlamaModel.init(llama, o.seed, { trainable: true, initStd: o.initStd });
  const scoreInit = Rng.derive(o.seed, "moderation/score").normalArray(labels.length * o.hiddenSize, o.initStd);
  const score = tf.tidy(() => tf.variable(tf.tensor2d(scoreInit, [labels.length, o.hiddenSize]), true));
  const classifier = new ModerationClassifier(config, model, score, tokenizer, o.maxLength);
  const labelIndex = new Map(labels.map((c, i) => [c, i]));
  const lossCurve = fitClassifier(classifier, pairs, (p) => (p.category === null ? [] : [labelIndex.get(p.category)!]), o, (l) => log(`moderation: ${l}`));
  return { classifier, tokenizerJson, tokenizerConfig, trainPairs: pairs.length, lossCurve };
}

/** What fitClassifier needs of the training options. */
export type FitOptions = Pick<ModerationTrainOptions, "seed" | "steps" | "batchSize" | "learningRate" | "warmupRatio" | "weightDecay" | "gradClip">;

/**
 * Trains a classifier's trunk and score head in place with binary cross-entropy per label:
 * `positives(pair)` lists the label indices that are 1 (every other label is 0). Returns
 * the mean loss per 50 steps; the weights are frozen again at the end (and the classifier
 * disposed if training fails). Shared by the moderation and the refusal classifier.
 */
export function fitClassifier<P extends ModerationPair>(
  classifier: ModerationClassifier,
  pairs: readonly P[],
  positives: (pair: P) => number[],
  o: FitOptions,
  log: (line: string) => void = () => {},
): number[] {
  const { model, score, tokenizer, config } = classifier;
  const nLabels = config.labels.length;
  // A batch pads to its longest pair, so one looped answer would make a batch of short
  // ones several times slower: long pairs get batches of their own, as often as their share.
  const isLong = (p: P) => tokenizer.encode(formatPair(p, config.inputTemplate)).length >= LONG_TOKENS;
  const buckets = [pairs.filter((p) => !isLong(p)), pairs.filter(isLong)];
  const longEvery = buckets[1].length === 0 ? Infinity : Math.max(2, Math.round(pairs.length / buckets[1].length));
  log(`${buckets[1].length} of ${pairs.length} pairs long`);
  model.setTrainable(true);
  score.trainable = true;
  const params = new Map<string, tf.Variable>([...model.weights, [SCORE_WEIGHT, score]]);
  const names = [...params.keys()];
  const vars = names.map((n) => params.get(n)!);
  // As the Hugging Face Trainer, norm weights do not decay. Built in a tidy because AdamW
  // keeps the zerosLike tensors its moment variables start from.
  let optimizer!: AdamW;
  tf.tidy(() => {
    optimizer = new AdamW(params, { weightDecay: o.weightDecay, decays: (n) => !n.endsWith("norm.weight") });
  });
  const lossCurve: number[] = [];
  let window = 0;
  try {
    for (let step = 0; step < o.steps; step++) {
      const long = (step + 1) % longEvery === 0;
      const bucket = buckets[long ? 1 : 0];
      const bucketStep = long ? Math.floor(step / longEvery) : step - Math.floor(step / longEvery);
      const batch = batchAt(bucket.length, o.batchSize, o.seed, bucketStep).indices.map((i) => bucket[i]);
      const enc = encodePairs(batch, tokenizer, config.inputTemplate, classifier.maxLength);
      const targets = new Float32Array(batch.length * nLabels);
      batch.forEach((p, b) => {
        for (const j of positives(p)) targets[b * nLabels + j] = 1;
      });
      const { value, grads } = tf.tidy(() =>
        tf.variableGrads(
          () => tf.losses.sigmoidCrossEntropy(tf.tensor2d(targets, [batch.length, nLabels]), pairLogits(model, score, enc)) as tf.Scalar,
          vars,
        ),
      );
      const byName = new Map<string, tf.Tensor>(names.map((n, i) => [n, grads[vars[i].name]]));
      try {
        const loss = value.dataSync()[0];
        if (!Number.isFinite(loss)) throw new Error(`classifier training diverged: loss ${loss} at step ${step + 1}`);
        clipByGlobalNorm(byName, o.gradClip);
        optimizer.apply(byName, learningRateAt(step, o.steps, o.learningRate, o.warmupRatio));
        window += loss;
        if ((step + 1) % 50 === 0 || step + 1 === o.steps) {
          lossCurve.push(window / ((step % 50) + 1));
          window = 0;
          log(`step ${step + 1}/${o.steps} loss ${lossCurve.at(-1)!.toFixed(4)}`);
        }
      } finally {
        value.dispose();
        for (const g of byName.values()) g.dispose();
      }
    }
  } catch (err) {
    classifier.dispose();
    throw err;
  } finally {
    optimizer.dispose();
  }
  model.setTrainable(false);
  score.trainable = false;
  return lossCurve;
}
