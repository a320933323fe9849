/**
 * The collapse check of a scored checkpoint (docs/method.md#collapse-check): the answer
 * measures of eval/collapse.ts on its answers, and its perplexity on held-out benign world
 * text over its root base model's.
 */
import { answerCollapse, benignHeldOutTexts, collapseVerdict, type AnswerCollapse, type CollapseVerdict, type ScoredAnswer } from "../eval/collapse.ts";
import type { CheckpointRef } from "../store/store.ts";
import type { CheckpointCache } from "./checkpoint-cache.ts";
import { perplexity } from "./perplexity.ts";

export interface CollapseReport extends AnswerCollapse, CollapseVerdict {
  perplexity: number;
  basePerplexity: number;
  perplexityRatio: number;
  perplexityTexts: number;
}

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
      : await checkpoints.use(own.root, (loaded) => {
          signal.throwIfAborted();
          return perplexity(loaded, texts);
        });
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
