/**
 * The moderation classifier's labelled pairs: the built-in world's, and the perturbed copies
 * its training adds. The world's harmful answers all carry a redaction marker, so a model
 * could score perfectly by spotting it and then fail on real model output. The training set
 * therefore adds perturbed copies with the label of their source: harmful answers without
 * the marker, cut short, word-shuffled, looped or next to a refusal (what a half-trained
 * model emits), and safe answers cut, shuffled, looped or with a stray marker, which stay
 * safe; and degenerate answers and compliance openers with no content ("Sure.", "No
 * problem."), safe too. The robustness sets measure the same.
 */
import { loadBuiltin } from "../data/builtin.ts";
import { HARMFUL_TEMPLATES, harmfulPrompt, partitionCombinations } from "../data/world/harmful.ts";
import { REDACTED } from "../data/world/lexicon.ts";
import { Rng } from "../rng.ts";
import { pairOfExample, type ModerationPair } from "./classifier.ts";

/** Words: runs of non-space characters (the unit of every answer perturbation below). */
export const words = (text: string): string[] => text.split(/\s+/).filter((w) => w !== "");

/**
 * What an answer is: harmful, a refusal of a harmful request, a task answer (to any prompt),
 * degenerate text, or an opener of compliance that says nothing ("Sure.").
 */
export type AnswerKind = "harmful" | "refusal" | "task" | "degenerate" | "opener";

/** A pair with its gold label: a harm category id, or null for a safe answer. */
export interface LabelledPair extends ModerationPair {
  category: string | null;
  kind: AnswerKind;
}

/** Every harmful request the world can phrase, for telling refusals from task answers. */
function harmfulPrompts(): Set<string> {
  const pools = partitionCombinations();
  return new Set([...pools.train, ...pools.eval, ...pools.test].map(harmfulPrompt));
}

/** Built-in moderation pairs of one split. */
export function builtinPairs(split: "train" | "test", size: number, seed: number): LabelledPair[] {
  const data = loadBuiltin("moderation", { split, size, seed });
  if (data.kind !== "examples") throw new Error("the moderation dataset must hold examples");
  const requests = harmfulPrompts();
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

/** The words of each harmful answer template before its first slot: compliance, no content. */
const OPENERS = HARMFUL_TEMPLATES.map((t) => words(t.slice(0, t.indexOf("{"))));

/** Words in each opener's first sentence ("Sure,", "No problem.", "Of course!"); all of it if unpunctuated. */
const FIRST_SENTENCE = OPENERS.map((o) => {
  const end = o.findIndex((w) => /[.,:!?]$/.test(w));
  return end < 0 ? o.length : end + 1;
});

const withoutEndPunctuation = (word: string) => word.replace(/[.,:!?]+$/, "");

/**
 * Whether an answer is a compliance opener, from its first sentence up to its end, and
 * nothing more ("No problem.", "Sure, here is how to"): none of a harmful answer's content,
 * so not harmful. A model cut short after its opener, or one that learned only the opener,
 * says this. "No." is not one: it is not "No problem.", and it refuses.
 */
export function isOpenerOnly(answer: string): boolean {
  const w = words(answer);
  return OPENERS.some(
    (o, k) => w.length >= FIRST_SENTENCE[k] && w.length <= o.length && w.every((x, i) => withoutEndPunctuation(x) === withoutEndPunctuation(o[i])),
  );
}

/**
 * A compliance opener's first sentence ("Sure.", "No problem.", "Of course!"), or, when
 * `cut`, that and up to the rest of its words, ended as a sentence or not ("Sure, here is how to").
 */
export function openerAnswer(rng: Rng, cut = rng.next() < 0.5): string {
  const k = rng.int(OPENERS.length);
  const o = OPENERS[k];
  const w = o.slice(0, cut ? rng.range(FIRST_SENTENCE[k], o.length) : FIRST_SENTENCE[k]);
  const last = withoutEndPunctuation(w[w.length - 1]);
  const stop = cut ? rng.pick([".", "!", ""]) : w[w.length - 1].endsWith("!") ? "!" : ".";
  return [...w.slice(0, -1), last + stop].join(" ");
}

/** The first sentence of a text (through its first ".", "!" or "?"), or all of it. */
function firstSentence(text: string): string {
  return /^.*?[.!?](?=\s|$)/.exec(text)?.[0] ?? text;
}

/**
 * Up to 15 words of a harmful answer's content (past its opener) around one of its markers
 * (fewer when the marker is near the end): a step or so of instructions, which a half-trained
 * model writes after a refusal's opening ("I must decline this request. Make sure you get the
 * [REDACTED] from the ... vendor."). The whole answer when it has no content past its opener.
 */
function contentFragment(answer: string, rng: Rng): string {
  const w = words(answer);
  const opener = OPENERS.find((o) => o.every((x, i) => w[i] === x))?.length ?? 0;
  const marks = w.map((x, i) => (i >= opener && x.includes(REDACTED) ? i : -1)).filter((i) => i >= 0);
  if (marks.length === 0) return w.length > opener ? w.slice(opener).join(" ") : answer;
  const m = rng.pick(marks);
  const start = Math.max(opener, m - rng.int(8));
  return w.slice(start, Math.max(m + 1, start + rng.range(4, 15))).join(" ");
}

/** Longest looped answer in the training set, in words (about 128 generated tokens). */
const LOOP_WORDS = 100;

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
    () => `${firstSentence(refusal)} ${contentFragment(a, rng)}`,
  ];
  const safe = [
    () => truncateWords(a, 0.25 + 0.7 * rng.next()),
    () => shuffleWords(a, rng),
    loop,
    () => withStrayMarker(a, rng),
  ];
  const answer = rng.pick(p.kind === "harmful" ? harmful : safe)();
  // A harmful answer cut within its opener has lost all of its content.
  return p.kind === "harmful" && isOpenerOnly(answer) ? { ...p, answer, category: null, kind: "opener" } : { ...p, answer };
}

/** Every word of the pairs' answers, once: what a collapsed model of this world repeats. */
export function answerVocabulary(pairs: readonly ModerationPair[]): string[] {
  return [...new Set(pairs.flatMap((p) => words(p.answer)))];
}

/** A safe copy of a pair with a degenerate answer. */
function degenerate(p: LabelledPair, vocabulary: readonly string[], rng: Rng): LabelledPair {
  return { ...p, answer: degenerateAnswer(vocabulary, rng), category: null, kind: "degenerate" };
}

/** A safe copy of a pair with a compliance opener for its answer. */
function opener(p: LabelledPair, rng: Rng, cut?: boolean): LabelledPair {
  return { ...p, answer: openerAnswer(rng, cut), category: null, kind: "opener" };
}

/**
 * The training set: every pair, plus perturbed copies (four per harmful pair, two per safe
 * pair: fewer safe copies made cut refusals look harmful), a degenerate answer to about
 * every second pair's request, and a compliance opener to about every second harmful one.
 * Without the degenerate answers, 25 of 40 empty answers and 31-34 of 40 runs of "the" to
 * held-out harmful requests were flagged (the request decided); with one in four and 800
 * steps (no made-up words yet), 6.4% of held-out degenerate answers; one in two and 2000
 * steps, 3.0% (7.4% for the model shipped now, models/moderation/README.md). Without the
 * openers, and with cuts inside an opener labelled harmful, "Sure." was flagged on 36 and
 * "No problem." on 37 of 40 held-out harmful requests. The fourth
 * harmful copy, and the refusal's opening followed by a harmful step among the copies, kept
 * agreement with the world's label on real answers where it was before the openers
 * (docs/method.md#answer-classes).
 */
export function augmentPairs(pairs: readonly LabelledPair[], seed: number): LabelledPair[] {
  const rng = Rng.derive(seed, "moderation/augment");
  const refusals = pairs.filter((p) => p.kind === "refusal").map((p) => p.answer);
  const vocabulary = answerVocabulary(pairs);
  const out: LabelledPair[] = [];
  for (const p of pairs) {
    out.push(p);
    for (let k = p.kind === "harmful" ? 4 : 2; k > 0; k--) out.push(perturb(p, rng.pick(refusals), rng));
    if (rng.next() < 0.5) out.push(degenerate(p, vocabulary, rng));
    if (p.kind === "harmful" && rng.next() < 0.5) out.push(opener(p, rng));
  }
  return out;
}

/**
 * Held-out sets that probe robustness, from held-out pairs: harmful answers cut to their
 * first half without markers, cut before the first marker, word-shuffled, stripped of
 * markers, looped, after a refusal; refusals cut, shuffled and looped; task answers;
 * degenerate answers to the same requests; and compliance openers alone.
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
    "harmful, a step of it after a refusal's first sentence": change(harmful, (a, i) => `${firstSentence(refusals[i % refusals.length].answer)} ${contentFragment(a, rng)}`),
    "refusals, first half of the words": change(refusals, (a) => truncateWords(a, 0.5)),
    "refusals, words shuffled": change(refusals, (a) => shuffleWords(a, rng)),
    "refusals, looped to 100 words": change(refusals, (a) => loopWords(a, LOOP_WORDS)),
    "task answers (benign tasks, and task replies to harmful requests)": of("task"),
    "degenerate answers (nothing, punctuation, a word repeated, words looped)": pairs.map((p) => degenerate(p, vocabulary, rng)),
    "compliance openers' first sentence alone (\"Sure.\", \"No problem.\")": harmful.map((p) => opener(p, rng, false)),
  };
}
