/**
 * Causal language-model loss as Hugging Face computes it: logits[:, :-1] predict
 * labels[:, 1:], positions labelled -100 are ignored, mean cross-entropy over the rest.
 */
import * as tf from "@tensorflow/tfjs";

export const IGNORE_INDEX = -100;

/** Mean next-token cross-entropy (a scalar; 0 when every label is ignored). */
export function causalLmLoss(logits: tf.Tensor3D, labels: tf.Tensor2D): tf.Scalar {
  return causalLmLossWithCount(logits, labels).loss;
}

/**
 * The same loss plus the number of predicted (non-ignored) tokens, which callers need
 * to weight losses across batches or report throughput.
 */
export function causalLmLossWithCount(logits: tf.Tensor3D, labels: tf.Tensor2D): { loss: tf.Scalar; tokens: number } {
  const [b, t, vocab] = logits.shape;
  if (labels.shape[0] !== b || labels.shape[1] !== t) {
    throw new Error(`labels shape [${labels.shape.join(", ")}] must be [${b}, ${t}]`);
  }
  // Labels are inputs, never computed, so counting them on the host costs no pipeline stall.
  const labelData = labels.dataSync();
  let tokens = 0;
  for (let i = 0; i < b; i++) for (let j = 1; j < t; j++) if (labelData[i * t + j] !== IGNORE_INDEX) tokens++;
  const loss = tf.tidy(() => {
    if (tokens === 0) return tf.scalar(0).add(logits.sum().mul(0)) as tf.Scalar; // keeps the graph connected
    const shifted = logits.slice([0, 0, 0], [b, t - 1, vocab]);
    const target = labels.slice([0, 1], [b, t - 1]).toInt();
    const keep = target.notEqual(IGNORE_INDEX);
    const safeTarget = tf.where(keep, target, tf.zerosLike(target));
    // logSoftmax is max-shifted, so large logits do not overflow; oneHot avoids gather's gradient.
    const picked = tf.logSoftmax(shifted).mul(tf.oneHot(safeTarget, vocab)).sum(-1);
    return picked.mul(keep.toFloat()).sum().neg().div(tokens) as tf.Scalar;
  });
  return { loss, tokens };
}
