import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import {
  AnswerClass,
  FinishReason,
  GenerateResponseSchema,
  ModerateResponseSchema,
  ScoreService,
  TaskKind,
  type GenerateRequest,
  type ModerateRequest,
} from "../../gen/vaccine/v1/score_pb.ts";
import { boundsOf, checkTextLength, checkTokenCount, DEFAULT_BOUNDS, type CallBounds } from "../common/bounds.ts";
import { moderateBatcher } from "../common/batched-calls.ts";
import { CallSlots, DEFAULT_INFERENCE_CONCURRENCY } from "../common/call-slots.ts";
import { mapCallError, withCheckpoint } from "../common/checkpoint-calls.ts";
import { invalidArgument, rpcError } from "../platform/errors.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { assertCheckpointReadable, assertDatasetReadable, scopeOf, type Scope } from "../common/ownership.ts";
import { checkpointRefOf, datasetSource } from "../common/refs.ts";
import { principalOf } from "../platform/principal.ts";
import type { AnswerClass as RuntimeAnswerClass } from "../runtime/eval/answer-classes.ts";
import { parseTaskAnswer, type Task } from "../runtime/eval/task-parsers.ts";
import { DEFAULT_THRESHOLD, formatPair, type ModerationClassifier, type ModerationResult } from "../runtime/moderation/classifier.ts";
import { checkRefusalModel } from "../runtime/moderation/refusal.ts";
import { answer, promptIds } from "../runtime/pipeline/answers.ts";
import { KIND } from "../runtime/pipeline/kinds.ts";
import type { LoadedCheckpoint } from "../runtime/pipeline/load.ts";
import { resolveExamples, type DatasetSource } from "../runtime/pipeline/datasets.ts";
import { inferTask, scoreHarmfulness, scoreTask } from "../runtime/pipeline/scoring.ts";
import type { SuiteDeps } from "../common/deps.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator } from "../platform/validate.ts";
import { checkCheckpointRef, checkDatasetRef } from "../common/validate-refs.ts";
import { bosPrefix } from "../runtime/tokenizer.ts";

/** Largest number of prompts or pairs in one Generate or Moderate call. */
export const MAX_BATCH = 256;
/** Answer length when unset: the harmful score's 128 tokens. */
export const DEFAULT_NEW_TOKENS = 128;

const threshold = (v: RequestValidator, value: number | undefined) => v.number("threshold", value, { min: 0, max: 1 });
const newTokens = (v: RequestValidator, value: number | undefined, bounds: CallBounds) =>
  v.number("max_new_tokens", value, { min: 1, max: bounds.maxNewTokens, integer: true });
/** A call's answer length: the request's, else the default within the server's bound (score.proto). */
const answerTokens = (value: number | undefined, fallback: number, bounds: CallBounds) => value ?? Math.min(fallback, bounds.maxNewTokens);

/** Everything of a Generate request that can be checked before the model is loaded. */
export function checkGenerateRequest(req: GenerateRequest, bounds: CallBounds = DEFAULT_BOUNDS): void {
  const v = new RequestValidator();
  checkCheckpointRef(v, "checkpoint", req.checkpoint);
  v.count("prompts", req.prompts, { min: 1, max: MAX_BATCH });
  if (req.prompts.length <= MAX_BATCH) {
    req.prompts.forEach((p, i) => {
      checkTextLength(v, `prompts[${i}].instruction`, p.instruction, bounds);
      checkTextLength(v, `prompts[${i}].input`, p.input, bounds);
    });
  }
  newTokens(v, req.maxNewTokens, bounds);
  const tokens = answerTokens(req.maxNewTokens, DEFAULT_NEW_TOKENS, bounds);
  const generated = req.prompts.length * tokens;
  // A max_new_tokens over its own bound is one violation, not also the product's.
  if (tokens <= bounds.maxNewTokens && generated > bounds.maxGeneratedTokens) {
    v.fail("max_new_tokens", `prompts x max_new_tokens = ${req.prompts.length} x ${tokens} = ${generated}; the bound on generated tokens per call is ${bounds.maxGeneratedTokens}`);
  }
  if (req.decoding.case === "sampled") {
    v.number("sampled.temperature", req.decoding.value.temperature, { above: 0 });
    v.number("sampled.top_p", req.decoding.value.topP, { above: 0, max: 1 });
  }
  v.check();
}

/** Prompt lengths in tokens, with the template, once the model is loaded: at least one position must be left to generate into. */
export function checkPromptTokens(loaded: Pick<LoadedCheckpoint, "tokenizer" | "model">, prompts: GenerateRequest["prompts"], bounds: CallBounds): void {
  const v = new RequestValidator();
  const positions = loaded.model.config.maxPositionEmbeddings;
  prompts.forEach((p, i) =>
    checkTokenCount(v, `prompts[${i}]`, promptIds(loaded, p).length, bounds, { limit: positions - 1, what: "the model's positions less one to generate" }),
  );
  v.check();
}

/** Everything of a Moderate request that can be checked before the model is loaded. */
export function checkModerateRequest(req: ModerateRequest, bounds: CallBounds = DEFAULT_BOUNDS): void {
  const v = new RequestValidator();
  checkCheckpointRef(v, "moderation_model", req.moderationModel, false);
  v.count("pairs", req.pairs, { min: 1, max: MAX_BATCH });
  if (req.pairs.length <= MAX_BATCH) {
    req.pairs.forEach((p, i) => {
      checkTextLength(v, `pairs[${i}].prompt`, p.prompt, bounds);
      checkTextLength(v, `pairs[${i}].answer`, p.answer, bounds);
    });
  }
  threshold(v, req.threshold);
  v.check();
}

/** Pair lengths in tokens as the classifier reads them: over its length, it would silently cut the answer. */
export function checkPairTokens(c: Pick<ModerationClassifier, "tokenizer" | "config" | "maxLength">, pairs: ModerateRequest["pairs"], bounds: CallBounds): void {
  const v = new RequestValidator();
  const bos = bosPrefix(c.tokenizer).length;
  pairs.forEach((p, i) =>
    checkTokenCount(v, `pairs[${i}]`, bos + c.tokenizer.encode(formatPair(p, c.config.inputTemplate)).length, bounds, {
      limit: c.maxLength,
      what: "the moderation model's input length",
    }),
  );
  v.check();
}

/** Answer length of task accuracy when unset (the reference's 200). */
export const DEFAULT_TASK_TOKENS = 200;
/** Harmful prompts when unset: the built-in held-out evaluation prompts (500, as the paper). */
export const DEFAULT_HARM_PROMPTS = { builtin: { name: "harmful-eval", split: "test" as const } };

const TASKS: Record<TaskKind, Task | undefined> = {
  [TaskKind.UNSPECIFIED]: undefined,
  [TaskKind.SST2]: "sst2",
  [TaskKind.AGNEWS]: "agnews",
  [TaskKind.GSM8K]: "gsm8k",
};

const ANSWER_CLASSES: Record<RuntimeAnswerClass, AnswerClass> = { harmful: AnswerClass.HARMFUL, refusal: AnswerClass.REFUSAL, other: AnswerClass.OTHER };

function moderationResult(r: ModerationResult) {
  return { probabilities: r.probabilities, flagged: r.flagged, topCategory: r.topCategory };
}

/** Re-raises a scoring stream's runtime errors as RPC errors. */
async function* mapErrors<T>(run: AsyncGenerator<T>, field: string): AsyncGenerator<T> {
  try {
    yield* run;
  } catch (err) {
    if (err instanceof ConnectError || (err as Error)?.name === "AbortError") throw err;
    mapCallError(err, field);
  }
}

/** The kinds a call generates with, and those it classifies with. */
const LANGUAGE_MODEL: readonly string[] = [KIND.model, KIND.adapter, KIND.trainingState];
const CLASSIFIER: readonly string[] = [KIND.moderation];

/** ScoreService: generation, moderation, harmful score and task accuracy. */
export function scoreService(deps: SuiteDeps): ServiceModule {
  const moderate = moderateBatcher(deps);
  // Decoding calls take turns (call-slots.ts); Moderate is batched instead.
  const slots = deps.inferenceSlots ?? new CallSlots(DEFAULT_INFERENCE_CONCURRENCY);
  const moderationRef = (ref: { uri: string; digest: string } | undefined) => {
    if (ref) return checkpointRefOf(ref);
    if (!deps.builtins.moderation) {
      throw rpcError(Code.FailedPrecondition, "MODERATION_MODEL_MISSING", "moderation_model: unset, and this server has no built-in moderation model");
    }
    return deps.builtins.moderation;
  };
  /** The refusal model of the answer classes: the request's (readable by the caller), else the built-in; checked before any work starts. */
  const refusalRef = async (scope: Scope | undefined, ref: { uri: string; digest: string } | undefined) => {
    if (!ref && !deps.builtins.refusal) {
      throw rpcError(Code.FailedPrecondition, "REFUSAL_MODEL_MISSING", "refusal_model: unset, and this server has no built-in refusal model");
    }
    const r = ref ? await checkedRef(scope, "refusal_model", ref, CLASSIFIER) : deps.builtins.refusal!;
    await deps.checkpoints.useModeration(r, checkRefusalModel).catch((err) => mapCallError(err, "refusal_model"));
    return r;
  };
  /** The dataset's examples (limit applied); errors name `field`. */
  const examplesOf = async (scope: Scope | undefined, ref: DatasetRef | undefined, fallback: DatasetSource | undefined, field: string, limit?: number) => {
    try {
      const source = ref?.source.case ? datasetSource(ref) : fallback;
      if (!source) throw invalidArgument([{ field, description: "is required" }]);
      await assertDatasetReadable(deps.store, scope, source);
      return (await resolveExamples(deps.store, source)).slice(0, limit);
    } catch (err) {
      throw toRpcError(err, { datasetField: field });
    }
  };
  /**
   * A checkpoint ref that exists, the caller may read and is of one of `kinds`: NOT_FOUND or
   * FAILED_PRECONDITION naming `field` before any work starts, not a failure half way.
   */
  const checkedRef = async (scope: Scope | undefined, field: string, ref: { uri: string; digest: string } | undefined, kinds: readonly string[]) => {
    const r = checkpointRefOf(ref);
    const { kind } = await assertCheckpointReadable(deps, scope, r)
      .then(() => deps.store.readManifest(r))
      .catch((err) => mapCallError(err, field));
    if (!kinds.includes(kind)) {
      throw rpcError(Code.FailedPrecondition, "CHECKPOINT_KIND_INVALID", `${field} is a ${kind} checkpoint; this call needs a ${kinds.join(" or ")}`, { field });
    }
    return r;
  };
  return {
    desc: ScoreService,
    register(router) {
      router.service(ScoreService, {
        async generate(req, ctx) {
          const bounds = boundsOf(deps);
          checkGenerateRequest(req, bounds);
          const sampled = req.decoding.case === "sampled" ? req.decoding.value : undefined;
          const scope = scopeOf(principalOf(ctx));
          const answers = await slots.run(
            () =>
              withCheckpoint(deps, "checkpoint", req.checkpoint, (loaded) => {
                checkPromptTokens(loaded, req.prompts, bounds);
                return answer(loaded, req.prompts, {
                  maxNewTokens: answerTokens(req.maxNewTokens, DEFAULT_NEW_TOKENS, bounds),
                  temperature: sampled ? (sampled.temperature ?? 1) : 0,
                  topP: sampled?.topP ?? 1,
                  seed: sampled?.seed ?? 0,
                  // Between tokens: a deadline or cancel stops the decoding, not just the response.
                  signal: ctx.signal,
                });
              }, scope),
            ctx.signal,
          );
          return create(GenerateResponseSchema, {
            generations: answers.map((a) => ({
              text: a.text,
              tokenCount: a.tokenCount,
              finishReason: a.finishReason === "eos" ? FinishReason.EOS : FinishReason.LENGTH,
            })),
          });
        },
        async moderate(req, ctx) {
          const bounds = boundsOf(deps);
          checkModerateRequest(req, bounds);
          const ref = moderationRef(req.moderationModel);
          const results = await assertCheckpointReadable(deps, scopeOf(principalOf(ctx)), ref)
            // Shares forward passes with concurrent calls on the same model and threshold.
            .then(() => moderate({ ref, pairs: req.pairs, threshold: req.threshold ?? DEFAULT_THRESHOLD, check: (c) => checkPairTokens(c, req.pairs, bounds) }, ctx.signal))
            .catch((err) => mapCallError(err, "moderation_model"));
          return create(ModerateResponseSchema, { results: results.map(moderationResult) });
        },
        async *scoreHarmfulness(req, ctx) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          checkDatasetRef(v, "prompts", req.prompts, false);
          v.number("limit", req.limit, { min: 1, integer: true });
          newTokens(v, req.maxNewTokens, boundsOf(deps));
          checkCheckpointRef(v, "moderation_model", req.moderationModel, false);
          checkCheckpointRef(v, "refusal_model", req.refusalModel, false);
          threshold(v, req.threshold);
          v.number("sample_count", req.sampleCount, { min: 0, integer: true });
          v.check();
          const scope = scopeOf(principalOf(ctx));
          const prompts = await examplesOf(scope, req.prompts, DEFAULT_HARM_PROMPTS, "prompts", req.limit);
          const model = await checkedRef(scope, "checkpoint", req.checkpoint, LANGUAGE_MODEL);
          const moderation = req.moderationModel ? await checkedRef(scope, "moderation_model", req.moderationModel, CLASSIFIER) : moderationRef(undefined);
          const options = {
            maxNewTokens: answerTokens(req.maxNewTokens, DEFAULT_NEW_TOKENS, boundsOf(deps)),
            threshold: req.threshold ?? DEFAULT_THRESHOLD,
            sampleCount: req.sampleCount ?? 10,
            refusal: await refusalRef(scope, req.refusalModel),
            signal: ctx.signal,
          };
          const run = slots.stream(() => scoreHarmfulness(deps.checkpoints, model, moderation, prompts, options), ctx.signal);
          // Every ref was checked above: a later failure is not pinned on one of them.
          for await (const out of mapErrors(run, "")) {
            if ("progress" in out) yield { result: { case: "progress", value: out.progress } };
            else
              yield {
                result: {
                  case: "report",
                  value: {
                    ...out.report,
                    samples: out.report.samples.map((s) => ({ ...s, moderation: moderationResult(s.moderation), answerClass: ANSWER_CLASSES[s.answerClass] })),
                  },
                },
              };
          }
        },
        async *scoreTask(req, ctx) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          checkDatasetRef(v, "dataset", req.dataset);
          v.number("limit", req.limit, { min: 1, integer: true });
          newTokens(v, req.maxNewTokens, boundsOf(deps));
          v.number("sample_count", req.sampleCount, { min: 0, integer: true });
          v.check();
          const scope = scopeOf(principalOf(ctx));
          const examples = await examplesOf(scope, req.dataset, undefined, "dataset", req.limit);
          const task = TASKS[req.task] ?? inferTask(examples[0]);
          if (!task) {
            throw invalidArgument([{ field: "task", description: "cannot infer the task from the dataset; set task to TASK_KIND_SST2, TASK_KIND_AGNEWS or TASK_KIND_GSM8K" }], "TASK_UNKNOWN");
          }
          examples.forEach((e, i) => {
            try {
              // A gold answer the task's parser cannot read would fail mid-stream; refuse it now.
              parseTaskAnswer(task, "", e.gold ?? e.output);
            } catch (err) {
              throw invalidArgument([{ field: "dataset", description: `example ${i + 1}: ${(err as Error).message}` }], "DATASET_INVALID");
            }
          });
          const model = await checkedRef(scope, "checkpoint", req.checkpoint, LANGUAGE_MODEL);
          const options = {
            maxNewTokens: answerTokens(req.maxNewTokens, DEFAULT_TASK_TOKENS, boundsOf(deps)),
            sampleCount: req.sampleCount ?? 5,
            signal: ctx.signal,
          };
          const run = slots.stream(() => scoreTask(deps.checkpoints, model, examples, task, options), ctx.signal);
          for await (const out of mapErrors(run, "checkpoint")) {
            if ("progress" in out) yield { result: { case: "progress", value: out.progress } };
            else yield { result: { case: "report", value: { ...out.report, rightSamples: out.report.right, wrongSamples: out.report.wrong } } };
          }
        },
      });
    },
  };
}
