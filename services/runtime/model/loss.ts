/**
 * Causal language-model loss as Hugging Face computes it: logits[:, :-1] predict
 * labels[:, 1:], positions labelled -100 are ignored, mean cross-entropy over the rest.
 */
import * as tf from "@tensorflow/tfjs";
import { headLossKernel, softmaxCrossEntropy } from "../native/cross-entropy-kernel.ts";
import { nativeKernelsActive } from "../native/kernels.ts";
import { linearT } from "./matmul.ts";

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
  const { target, weight, tokens } = shiftedTargets(labels, b, t, vocab);
  const loss = tf.tidy(() => {
    if (tokens === 0) return tf.scalar(0).add(logits.sum().mul(0)) as tf.Scalar; // keeps the graph connected
    const targets = tf.tensor2d(target, [b, t], "int32");
    const weights = tf.tensor2d(weight, [b, t]);
    if (nativeKernelsActive()) return softmaxCrossEntropy(logits.reshape([b * t, vocab]), targets.reshape([b * t]), weights.reshape([b * t]), 1 / tokens);
    // logSoftmax is max-shifted, so large logits do not overflow; oneHot avoids gather's gradient.
    const picked = tf.logSoftmax(logits).mul(tf.oneHot(targets, vocab)).sum(-1);
    return picked.mul(weights).sum().neg().div(tokens) as tf.Scalar;
  });
  return { loss, tokens };
}

/**
 * causalLmLoss of the head's logits, hidden [B, T, width] times head [vocab, width]
 * transposed, for a training pass. With the native kernels and a frozen head, one kernel
 * takes the logits a block of rows at a time and computes hidden's gradient with the loss
 * (native/cross-entropy-kernel.ts): the [B, T, vocab] logits are never held.
 */
export function causalLmHeadLoss(hidden: tf.Tensor3D, head: tf.Tensor2D, labels: tf.Tensor2D): tf.Scalar {
  const [b, t, width] = hidden.shape;
  const frozen = !(head instanceof tf.Variable && head.trainable);
  if (!nativeKernelsActive() || !frozen) return tf.tidy(() => causalLmLoss(linearT(hidden.reshape([b * t, width]) as tf.Tensor2D, head).reshape([b, t, head.shape[0]]) as tf.Tensor3D, labels));
  const { target, weight, tokens } = shiftedTargets(labels, b, t, head.shape[0]);
  return tf.tidy(() => {
    if (tokens === 0) return tf.scalar(0).add(hidden.sum().mul(0)) as tf.Scalar;
    const rows = hidden.reshape([b * t, width]) as tf.Tensor2D;
    return headLossKernel(rows, head, tf.tensor1d(target, "int32"), tf.tensor1d(weight), 1 / tokens);
  });
}

/**
 * Labels are inputs, never computed, so reading them on the host costs no pipeline stall;
 * there they are shifted (position j predicts label j + 1) and masked, so the logits are
 * never sliced: the last position gets weight 0 (a [B, T, vocab] copy and its gradient saved).
 */
function shiftedTargets(labels: tf.Tensor2D, b: number, t: number, vocab: number): { target: Int32Array; weight: Float32Array; tokens: number } {
  if (labels.shape[0] !== b || labels.shape[1] !== t) throw new Error(`labels shape [${labels.shape.join(", ")}] must be [${b}, ${t}]`);
  const labelData = labels.dataSync();
  const target = new Int32Array(b * t);
  const weight = new Float32Array(b * t);
  let tokens = 0;
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < t - 1; j++) {
      const label = labelData[i * t + j + 1];
      if (label === IGNORE_INDEX) continue;
      if (!Number.isInteger(label) || label < 0 || label >= vocab) throw new Error(`label ${label} at [${i}, ${j + 1}] is outside the vocabulary [0, ${vocab})`);
      target[i * t + j] = label;
      weight[i * t + j] = 1;
      tokens++;
    }
  }
  return { target, weight, tokens };
}
