/*
 * Softmax cross-entropy over the vocabulary in one pass a row, forward and backward, in place
 * on the wasm heap. Composed of tfjs ops the loss makes about a dozen passes over the
 * [tokens, vocab] logits (max, shift, exp, sum, log, the one-hot product and their gradients);
 * here the forward reads each row and writes its softmax (the exponentials are taken once),
 * and the backward writes softmax minus one-hot from it: no exp there, and the softmax is held
 * for the backward pass instead of the logits, the same memory. Sums are accumulated in
 * double. Rows of weight 0 (ignored labels, the last position) cost nothing and get a zero
 * gradient. For training, headLoss takes the head's product too (below).
 */
#include <cblas.h>
#include <math.h>
#include <string.h>
#include "addon.h"

/*
 * p = exp(x - max) / sum over a row of n >= 1 values, times scale (1: the softmax itself), with
 * max the row's largest value, written to *max; returns the sum.
 */
VECTOR_CLONES static double softmax_shifted(const float *x, float *max_out, float *p, int64_t n, float scale) {
  const float max = max_of(x, n);
  *max_out = max;
  for (int64_t j = 0; j < n; j++) p[j] = exp_poly(x[j] - max);
  const double sum = sum_of(p, n);
  const float inv = (float)(1 / sum);
  for (int64_t j = 0; j < n; j++) p[j] = p[j] * inv * scale;
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
    float max;
    const double sum = softmax_shifted(x, &max, p, vocab, 1.0f);
    total += weight[i] * ((double)(max - x[target[i]]) + log(sum));
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

/*
 * headLoss(heap, xOffset, wOffset, targetOffset, weightOffset, dxOffset, rows, width, vocab,
 * scale): the head's logits x W^T for x [rows, width], W [vocab, width], and their softmax
 * cross-entropy, as crossEntropy; returns its sum and writes dx [rows, width], the gradient of
 * scale times the sum with respect to x (crossEntropyGrad's, times W). The logits are taken a
 * block of rows at a time into a scratch buffer, turned into their gradient there and
 * multiplied back, so no [rows, vocab] tensor is written to the heap: for a training pass, the
 * largest tensor of a small model and four passes over it. Only weighted rows are multiplied
 * (gathered into the block first): the prompt and padding positions of a batch carry no loss,
 * and their rows of dx are zero. Returns -(i + 1) for the first weighted row i whose target is
 * outside [0, vocab).
 */
napi_value head_loss(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[8];
  double scale = 0;
  if (!heap_args(env, info, "headLoss: (ArrayBuffer, 5 offsets, rows, width, vocab, scale) expected", &heap, &heap_bytes, 8, v, 1, &scale)) return NULL;
  const int64_t rows = v[5], width = v[6], vocab = v[7];
  if (rows > INT32_MAX || width > INT32_MAX || vocab > INT32_MAX || !inside((uint64_t)v[0], (uint64_t)(rows * width), heap_bytes) ||
      !inside((uint64_t)v[1], (uint64_t)(vocab * width), heap_bytes) || !inside((uint64_t)v[2], (uint64_t)rows, heap_bytes) ||
      !inside((uint64_t)v[3], (uint64_t)rows, heap_bytes) || !inside((uint64_t)v[4], (uint64_t)(rows * width), heap_bytes)) {
    napi_throw_range_error(env, NULL, "headLoss: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  const float *x = (const float *)heap + v[0] / 4, *w = (const float *)heap + v[1] / 4, *weight = (const float *)heap + v[3] / 4;
  const int32_t *target = (const int32_t *)heap + v[2] / 4;
  float *dx = (float *)heap + v[4] / 4;
  napi_value result;
  for (int64_t i = 0; i < rows; i++) {
    if (weight[i] != 0 && (target[i] < 0 || target[i] >= vocab)) {
      CHECK(env, napi_create_double(env, (double)-(i + 1), &result));
      return result;
    }
  }
  int64_t weighted = 0;
  for (int64_t i = 0; i < rows; i++) weighted += weight[i] != 0;
  if (weighted == 0) {
    memset(dx, 0, 4u * (size_t)(rows * width));
    CHECK(env, napi_create_double(env, 0, &result));
    return result;
  }
  /* Blocks of logits of up to 4 MB: smaller ones stay in cache but cost more in the products (each packs W again).
     A weighted row has a target in [0, vocab), so vocab > 0 here. */
  int64_t block = 1048576 / vocab > 16 ? 1048576 / vocab : 16;
  if (block > weighted) block = weighted;
  /* g: a block's logits, then their gradient; xs: its weighted rows of x, then their rows of dx. */
  float *g = scratch((size_t)(block * (vocab + width)));
  if (!g) {
    napi_throw_error(env, NULL, "headLoss: out of memory");
    return NULL;
  }
  float *xs = g + block * vocab;
  double total = 0;
  for (int64_t next = 0, first = 0; next < rows; first = next) {
    int64_t n = 0;
    for (; next < rows && n < block; next++) {
      if (weight[next] == 0)
        memset(dx + next * width, 0, 4u * (size_t)width);
      else
        memcpy(xs + n++ * width, x + next * width, 4u * (size_t)width);
    }
    if (n == 0) continue;
    if (width > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)vocab, (int)width, 1.0f, xs, (int)width, w, (int)width, 0.0f, g, (int)vocab);
    else
      memset(g, 0, 4u * (size_t)(n * vocab));
    /* The block's weighted rows in order, from its first row: k-th of them is row k of g and xs. */
    for (int64_t i = first, k = 0; k < n; i++) {
      if (weight[i] == 0) continue;
      float *row = g + k++ * vocab;
      const float wi = weight[i], gi = (float)(scale * wi);
      const int32_t t = target[i];
      const float picked = row[t];
      float max;
      /* The gradient gi * softmax in the softmax's own pass; the target's probability taken again as that pass takes it. */
      const double sum = softmax_shifted(row, &max, row, vocab, gi);
      total += wi * ((double)(max - picked) + log(sum));
      row[t] = gi * (exp_poly(picked - max) * (float)(1 / sum) - 1);
    }
    if (width > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)width, (int)vocab, 1.0f, g, (int)vocab, w, (int)width, 0.0f, xs, (int)width);
    for (int64_t i = first, k = 0; k < n; i++)
      if (weight[i] != 0) memcpy(dx + i * width, xs + k++ * width, 4u * (size_t)width);
  }
  CHECK(env, napi_create_double(env, total, &result));
  return result;
}
