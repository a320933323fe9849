/**
 * The collapse check of a scored checkpoint (docs/method.md#collapse-check): the answer
 * measures of eval/collapse.ts on its answers, and its perplexity on held-out benign world
 * text over its root base model's.
 */
import { answerCollapse, benignHeldOutTexts, collapseVerdict, type AnswerCollapse, type CollapseVerdict, type ScoredAnswer } from "../eval/collapse.ts";
import type { CheckpointRef } from "../store/store.ts";
import type { CheckpointCache } from "./checkpoint-cache.ts";
import { perplexity, type Perplexity } from "./perplexity.ts";

export interface CollapseReport extends AnswerCollapse, CollapseVerdict {
  perplexity: number;
  basePerplexity: number;
  perplexityRatio: number;
  perplexityTexts: number;
}

/**
 * The root's perplexity by digest: a checkpoint and the texts never change, and every score
 * of a fine-tuning's checkpoints (steps-to-break scores many) would measure the same base again.
 */
const basePerplexity = new Map<string, Perplexity>();

export async function collapseCheck(
  checkpoints: CheckpointCache,
  model: CheckpointRef,
  answers: readonly ScoredAnswer[],
  signal: AbortSignal,
): Promise<CollapseReport> {
  const texts = benignHeldOutTexts();
  const own = await checkpoints.use(model, (loaded) => {
    signal.throwIfAborted();
    return { ...perplexity(loaded, texts), root: loaded.lineage[0] };
  });
  const base =
    own.root.digest === model.digest
      ? own
      : (basePerplexity.get(own.root.digest) ??
        (await checkpoints.use(own.root, (loaded) => {
          signal.throwIfAborted();
          const measured = perplexity(loaded, texts);
          basePerplexity.set(own.root.digest, measured);
          return measured;
        })));
  const measures = answerCollapse(answers);
  const perplexityRatio = own.perplexity / base.perplexity;
  return {
    ...measures,
    ...collapseVerdict(measures, perplexityRatio),
    perplexity: own.perplexity,
    basePerplexity: base.perplexity,
    perplexityRatio,
    perplexityTexts: texts.length,
  };
}
