/**
 * The learning-rate schedule of the reference (Hugging Face's cosine schedule with
 * warm-up): linear from 0 over the warm-up steps, then a half cosine down to 0.
 * `step` is the 0-based index of the optimizer step about to run, as in the HF
 * scheduler, so the very first step of a run with warm-up uses lr 0.
 */
export function learningRateAt(step: number, totalSteps: number, peak: number, warmupRatio: number): number {
  const warmup = Math.ceil(totalSteps * warmupRatio);
  if (step < warmup) return (peak * step) / Math.max(1, warmup);
  const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
  return peak * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}
