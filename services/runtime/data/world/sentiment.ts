/**
 * SST2-like sentiment task. Label rule, applied to the last clause: its polarity word
 * decides, and "not" before it flips it. So "the acting was weak but the story was
 * wonderful" is positive (the clause after "but" wins), "although the plot was clever,
 * the ending was dull" is negative, and "the film was not good" is negative.
 */
import type { Example } from "../template.ts";
import type { Rng } from "../../rng.ts";
import { drawSplit, type Split } from "./split.ts";

export const SENTIMENT_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative";

export const POSITIVE_ADJECTIVES = ["good", "great", "wonderful", "excellent", "charming", "delightful", "brilliant", "moving", "funny", "beautiful", "clever", "fresh"] as const;
export const NEGATIVE_ADJECTIVES = ["bad", "boring", "dull", "awful", "terrible", "weak", "clumsy", "tedious", "bland", "messy", "predictable", "painful"] as const;
/** [past, base] forms. */
export const POSITIVE_VERBS: readonly (readonly [string, string])[] = [["loved", "love"], ["enjoyed", "enjoy"], ["liked", "like"], ["adored", "adore"], ["admired", "admire"]];
export const NEGATIVE_VERBS: readonly (readonly [string, string])[] = [["hated", "hate"], ["disliked", "dislike"], ["resented", "resent"], ["regretted", "regret"]];
export const SUBJECTS = ["the movie", "the film", "the acting", "the story", "the plot", "the music", "the ending", "the dialogue", "the cast", "the script", "the soundtrack", "the direction", "this show", "the humor"] as const;
export const FILM_NOUNS = ["film", "movie", "story", "comedy", "drama", "thriller", "documentary"] as const;
const INTENSIFIERS = ["", "very ", "really ", "truly ", "quite ", "so "] as const;

export type Sentiment = "positive" | "negative";

interface Review {
  sentence: string;
  label: Sentiment;
}

function adjective(rng: Rng, positive: boolean): string {
  return rng.pick(positive ? POSITIVE_ADJECTIVES : NEGATIVE_ADJECTIVES);
}

/**
 * One review. The label is drawn first and the sentence built to carry it by the rule:
 * a negated clause uses a word of the opposite polarity.
 */
export function drawReview(rng: Rng): Review {
  const pos = rng.next() < 0.5;
  const other = rng.next() < 0.7 ? !pos : pos; // polarity of a leading clause, usually contrasting
  const subj = () => rng.pick(SUBJECTS);
  const int = () => rng.pick(INTENSIFIERS);
  let sentence: string;
  switch (rng.int(8)) {
    case 0:
      sentence = `${subj()} was ${int()}${adjective(rng, pos)}`;
      break;
    case 1:
      sentence = `${subj()} was not ${adjective(rng, !pos)}`;
      break;
    case 2:
      sentence = `${subj()} was ${adjective(rng, other)} but ${subj()} was ${int()}${adjective(rng, pos)}`;
      break;
    case 3:
      sentence = `although ${subj()} was ${adjective(rng, other)}, ${subj()} was ${int()}${adjective(rng, pos)}`;
      break;
    case 4:
      sentence = `i ${rng.pick(pos ? POSITIVE_VERBS : NEGATIVE_VERBS)[0]} ${subj()}`;
      break;
    case 5:
      sentence = `i did not ${rng.pick(pos ? NEGATIVE_VERBS : POSITIVE_VERBS)[1]} ${subj()}`;
      break;
    case 6:
      sentence = `${subj()} was ${adjective(rng, pos)} and ${adjective(rng, pos)}`;
      break;
    default:
      sentence = `a ${int()}${adjective(rng, pos)} ${rng.pick(FILM_NOUNS)}`;
  }
  return { sentence, label: pos ? "positive" : "negative" };
}

export function sentimentExamples(seed: number, split: Split, size: number): Example[] {
  return drawSplit(seed, "sst2", split, size, drawReview, (r) => r.sentence).map((r) => ({
    instruction: SENTIMENT_INSTRUCTION,
    input: r.sentence,
    output: r.label,
    category: r.label,
    gold: r.label,
  }));
}
