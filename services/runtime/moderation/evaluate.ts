/** How a moderation classifier does on labelled pairs: flag accuracy, precision and recall, per category. */
import { DEFAULT_THRESHOLD, type ModerationClassifier, type ModerationPair } from "./classifier.ts";
import type { LabelledPair } from "./pairs.ts";

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
