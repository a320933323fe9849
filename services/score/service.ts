import { create } from "@bufbuild/protobuf";
import { FinishReason, GenerateResponseSchema, ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { withCheckpoint } from "../platform/checkpoint-calls.ts";
import { answer } from "../runtime/pipeline/answers.ts";
import { notImplemented } from "../platform/errors.ts";
import type { SuiteDeps } from "../platform/deps.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator } from "../platform/validate.ts";
import { checkCheckpointRef, checkDatasetRef } from "../platform/validate-training.ts";

/** Largest number of prompts or pairs in one Generate or Moderate call. */
export const MAX_BATCH = 256;
/** Answer length when unset: the harmful score's 128 tokens. */
export const DEFAULT_NEW_TOKENS = 128;
/** Largest max_new_tokens accepted. */
export const MAX_NEW_TOKENS = 1024;

const threshold = (v: RequestValidator, value: number | undefined) => v.number("threshold", value, { min: 0, max: 1 });
const newTokens = (v: RequestValidator, value: number | undefined) =>
  v.number("max_new_tokens", value, { min: 1, max: MAX_NEW_TOKENS, integer: true });

/** ScoreService: generation, moderation, harmful score and task accuracy. */
export function scoreService(deps: SuiteDeps): ServiceModule {
  const name = ScoreService.typeName;
  return {
    desc: ScoreService,
    register(router) {
      router.service(ScoreService, {
        async generate(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          v.count("prompts", req.prompts, { min: 1, max: MAX_BATCH });
          newTokens(v, req.maxNewTokens);
          if (req.decoding.case === "sampled") {
            v.number("sampled.temperature", req.decoding.value.temperature, { above: 0 });
            v.number("sampled.top_p", req.decoding.value.topP, { above: 0, max: 1 });
          }
          v.check();
          const sampled = req.decoding.case === "sampled" ? req.decoding.value : undefined;
          const answers = await withCheckpoint(deps, "checkpoint", req.checkpoint, (loaded) =>
            answer(loaded, req.prompts, {
              maxNewTokens: req.maxNewTokens ?? DEFAULT_NEW_TOKENS,
              temperature: sampled ? (sampled.temperature ?? 1) : 0,
              topP: sampled?.topP ?? 1,
              seed: sampled?.seed ?? 0,
            }),
          );
          return create(GenerateResponseSchema, {
            generations: answers.map((a) => ({
              text: a.text,
              tokenCount: a.tokenCount,
              finishReason: a.finishReason === "eos" ? FinishReason.EOS : FinishReason.LENGTH,
            })),
          });
        },
        moderate(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "moderation_model", req.moderationModel, false);
          v.count("pairs", req.pairs, { min: 1, max: MAX_BATCH });
          threshold(v, req.threshold);
          v.check();
          throw notImplemented(`${name}/Moderate`);
        },
        scoreHarmfulness(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          checkDatasetRef(v, "prompts", req.prompts, false);
          v.number("limit", req.limit, { min: 1, integer: true });
          newTokens(v, req.maxNewTokens);
          checkCheckpointRef(v, "moderation_model", req.moderationModel, false);
          threshold(v, req.threshold);
          v.number("sample_count", req.sampleCount, { min: 0, integer: true });
          v.check();
          throw notImplemented(`${name}/ScoreHarmfulness`);
        },
        scoreTask(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          checkDatasetRef(v, "dataset", req.dataset);
          v.number("limit", req.limit, { min: 1, integer: true });
          newTokens(v, req.maxNewTokens);
          v.number("sample_count", req.sampleCount, { min: 0, integer: true });
          v.check();
          throw notImplemented(`${name}/ScoreTask`);
        },
      });
    },
  };
}
