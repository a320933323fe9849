/*
 * Softmax cross-entropy over the vocabulary in one pass a row, forward and backward, in place
 * on the wasm heap. Composed of tfjs ops the loss makes about a dozen passes over the
 * [tokens, vocab] logits (max, shift, exp, sum, log, the one-hot product and their gradients);
 * here the forward reads each row and writes its softmax (the exponentials are taken once),
 * and the backward writes softmax minus one-hot from it: no exp there, and the softmax is held
 * for the backward pass instead of the logits, the same memory. Sums are accumulated in
 * double. Rows of weight 0 (ignored labels, the last position) cost nothing and get a zero
 * gradient.
 */
#include <math.h>
#include <string.h>
#include "addon.h"

/* p = exp(x - max) / sum over a row of n values; returns the sum. */
VECTOR_CLONES static double softmax_shifted(const float *x, float max, float *p, int64_t n) {
  for (int64_t j = 0; j < n; j++) p[j] = exp_poly(x[j] - max);
  const double sum = sum_of(p, n);
  const float inv = (float)(1 / sum);
  for (int64_t j = 0; j < n; j++) p[j] *= inv;
  return sum;
}

/*
 * crossEntropy(heap, logitsOffset, targetOffset, weightOffset, probsOffset, rows, vocab):
 * for [rows, vocab] float32 logits, int32 targets and float32 weights, writes each row's
 * softmax (zeros for a row of weight 0) and returns sum_i w_i (lse_i - logits[i, target_i]),
 * lse_i the row's log-sum-exp.
 * Returns -(i + 1) for the first weighted row i whose target is outside [0, vocab), writing
 * nothing further.
 */
napi_value cross_entropy(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[6];
  if (!heap_args(env, info, "crossEntropy: (ArrayBuffer, logitsOffset, targetOffset, weightOffset, probsOffset, rows, vocab) of non-negative integers expected", &heap,
                 &heap_bytes, 6, v, 0, NULL))
    return NULL;
  const int64_t rows = v[4], vocab = v[5];
  if (!inside((uint64_t)v[0], (uint64_t)(rows * vocab), heap_bytes) || !inside((uint64_t)v[1], (uint64_t)rows, heap_bytes) ||
      !inside((uint64_t)v[2], (uint64_t)rows, heap_bytes) || !inside((uint64_t)v[3], (uint64_t)(rows * vocab), heap_bytes)) {
    napi_throw_range_error(env, NULL, "crossEntropy: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  const float *logits = (const float *)heap + v[0] / 4, *weight = (const float *)heap + v[2] / 4;
  const int32_t *target = (const int32_t *)heap + v[1] / 4;
  float *probs = (float *)heap + v[3] / 4;
  double total = 0;
  napi_value result;
  for (int64_t i = 0; i < rows; i++) {
    float *p = probs + i * vocab;
    if (weight[i] == 0) {
      memset(p, 0, 4u * (size_t)vocab);
      continue;
    }
    if (target[i] < 0 || target[i] >= vocab || vocab == 0) {
      CHECK(env, napi_create_double(env, (double)-(i + 1), &result));
      return result;
    }
    const float *x = logits + i * vocab;
    const float max = max_of(x, vocab);
    total += weight[i] * ((double)(max - x[target[i]]) + log(softmax_shifted(x, max, p, vocab)));
  }
  CHECK(env, napi_create_double(env, total, &result));
  return result;
}

/*
 * crossEntropyGrad(heap, probsOffset, targetOffset, weightOffset, outOffset, rows, vocab,
 * scale): out[i, j] = scale * w_i * (probs[i, j] - [j == target_i]), the gradient of scale
 * times crossEntropy's sum with respect to the logits; targets were checked forward.
 */
napi_value cross_entropy_grad(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[6];
  double scale = 0;
  if (!heap_args(env, info, "crossEntropyGrad: (ArrayBuffer, 4 offsets, rows, vocab, scale) expected", &heap, &heap_bytes, 6, v, 1, &scale)) return NULL;
  const int64_t rows = v[4], vocab = v[5];
  if (!inside((uint64_t)v[0], (uint64_t)(rows * vocab), heap_bytes) || !inside((uint64_t)v[1], (uint64_t)rows, heap_bytes) ||
      !inside((uint64_t)v[2], (uint64_t)rows, heap_bytes) || !inside((uint64_t)v[3], (uint64_t)(rows * vocab), heap_bytes)) {
    napi_throw_range_error(env, NULL, "crossEntropyGrad: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  const float *probs = (const float *)heap + v[0] / 4, *weight = (const float *)heap + v[2] / 4;
  const int32_t *target = (const int32_t *)heap + v[1] / 4;
  float *out = (float *)heap + v[3] / 4;
  for (int64_t i = 0; i < rows; i++) {
    float *o = out + i * vocab;
    const float g = (float)(scale * weight[i]);
    if (g == 0) {
      memset(o, 0, 4u * (size_t)vocab);
      continue;
    }
    const float *p = probs + i * vocab;
    for (int64_t j = 0; j < vocab; j++) o[j] = g * p[j];
    if (target[i] >= 0 && target[i] < vocab) o[target[i]] = g * (p[target[i]] - 1);
  }
  return NULL;
}
