import { describe, expect, it } from "vitest";
import { extractFinalNumber, parseTaskAnswer, type Task } from "../../services/runtime/eval/task-parsers.ts";

/** strictCorrect (the first label named is the gold) is correct unless given. */
type Row = [answer: string, gold: string, predicted: string, correct: boolean, strictCorrect?: boolean];

function check(task: Task, rows: Row[]): void {
  for (const [answer, gold, predicted, correct, strictCorrect = correct] of rows) {
    expect(parseTaskAnswer(task, answer, gold), `${task}: ${JSON.stringify(answer)} gold ${gold}`).toEqual({ predicted, correct, strictCorrect });
  }
}

describe("parseTaskAnswer (reference rules)", () => {
  it("sst2: gold word contained, lower-case or capitalized; both words present counts for either gold", () => {
    check("sst2", [
      ["positive", "positive", "positive", true],
      ["negative", "positive", "negative", false],
      ["Positive.", "positive", "positive", true],
      ["POSITIVE", "positive", "", false],
      ["The sentiment is negative, not positive.", "positive", "positive", true, false],
      ["The sentiment is negative, not positive.", "negative", "negative", true],
      ["nonnegative", "negative", "negative", true],
      ["I think it was fine", "negative", "", false],
      ["", "positive", "", false],
    ]);
  });

  it("agnews: category or its lower-case form; Sci/Tech also as 'sci'; first other label otherwise", () => {
    check("agnews", [
      ["Sports", "Sports", "Sports", true],
      ["sports news", "Sports", "Sports", true],
      ["This is about science", "Sci/Tech", "Sci/Tech", true],
      ["Science", "Sci/Tech", "", false],
      ["Business and World", "World", "World", true, false],
      ["Business and World", "Sports", "Business", false],
      ["world business", "Sci/Tech", "World", false],
      // Every label at once, or the instruction that lists them, echoed: right for any gold by
      // the reference's rule, for one gold in four by the first label.
      ["World Sports Business Sci/Tech", "Sports", "Sports", true, false],
      ["World Sports Business Sci/Tech", "World", "World", true],
      ["Classify the news article as World, Sports, Business or Sci/Tech.", "Business", "Business", true, false],
      // A right answer that goes on to mention a word holding another label's substring stays right.
      ["Sports: the World Cup final", "Sports", "Sports", true],
      ["Sports. The team's discipline won it.", "Sports", "Sports", true],
      ["Tech", "Sci/Tech", "", false],
    ]);
  });

  it("gsm8k: number after the marker, else the last number; commas, signs and decimals", () => {
    check("gsm8k", [
      ["5 + 3 = 8. The final answer is: 8", "8", "8", true],
      ["The final answer is: 8 apples, not 9", "8", "8", true],
      ["5 + 3 = 8 apples in total", "8", "8", true],
      ["5 + 3 = 8 apples, then 2 left", "8", "2", false],
      ["The final answer is: 1,234", "1234", "1234", true],
      ["She has 1,234 coins", "1,234", "1234", true],
      ["The final answer is: -3", "-3", "-3", true],
      ["The final answer is: 3.0", "3", "3.0", true],
      ["The final answer is: 3.", "3", "3.", true],
      ["The final answer is: 3.5", "3", "3.5", false],
      ["no number here", "3", "", false],
      ["The final answer is: unknown, maybe 7", "7", "7", true],
      ["The final answer is: 4. The final answer is: 5", "5", "4.", false],
      ["10 - 13 = -3", "-3", "-3", true],
    ]);
  });

  it("extractFinalNumber reads as the reference does", () => {
    expect(extractFinalNumber("a 1 b 2")).toBe("2");
    expect(extractFinalNumber("The final answer is: nothing")).toBe("");
    expect(extractFinalNumber("2 then The final answer is: nothing")).toBe("2");
  });

  it("rejects gold labels the rules do not know", () => {
    expect(() => parseTaskAnswer("sst2", "positive", "Positive")).toThrow(RangeError);
    expect(() => parseTaskAnswer("agnews", "World", "Politics")).toThrow(RangeError);
    expect(() => parseTaskAnswer("gsm8k", "3", "three")).toThrow(RangeError);
  });
});
