// Finish reasons of answers: a prompt near the model's position limit gets fewer new tokens
// than asked, and running out of them is "length", not "eos".
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { loadBaseModel, type LoadedModel } from "../../services/runtime/base-model.ts";
import { tokenBudget } from "../../services/runtime/model/generate.ts";
import { answer, promptIds } from "../../services/runtime/pipeline/answers.ts";

let base: LoadedModel;
beforeAll(async () => {
  await selectBackend("wasm", () => {});
  base = await loadBaseModel();
});

describe("answer finish reasons", () => {
  it("says length when the positions left in the model end the answer before max_new_tokens", () => {
    const loaded = { ...base, adapter: undefined };
    const positions = base.model.config.maxPositionEmbeddings;
    // A prompt that leaves one position: the answer gets at most 1 token of the 32 asked.
    let instruction = "tell me about the weather in the city today";
    while (promptIds(loaded, { instruction }).length < positions - 1) instruction += " today";
    const promptLength = promptIds(loaded, { instruction }).length;
    expect(promptLength).toBe(positions - 1);
    const budget = tokenBudget(base.model, promptLength, 32);
    expect(budget).toBeLessThan(32);
    const [a] = answer(loaded, [{ instruction }], { maxNewTokens: 32 });
    expect(a.tokenCount).toBeLessThanOrEqual(budget);
    expect(a.finishReason).toBe(a.tokenCount === budget ? "length" : "eos");
    expect(a.tokenCount, "the model ran out of positions here (deterministic)").toBe(budget);
  });
});
