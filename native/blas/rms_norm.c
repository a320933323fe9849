/*
 * RMSNorm over the last axis, forward and backward, one pass a row in place on the wasm heap:
 * y = x * r * w with r = 1 / sqrt(mean(x^2) + eps). Composed of tfjs ops it is six kernels
 * forward and about a dozen backward, each a pass over the activations (a step normalises
 * twice a layer). Sums in double; r is kept per row for the backward pass.
 */
#include <math.h>
#include "addon.h"

VECTOR_CLONES void rms_norm_rows(const float *x, const float *w, float *out, float *r, int64_t rows, int64_t width, double eps) {
  for (int64_t i = 0; i < rows; i++, x += width, out += width) {
    const double sum = dot_of(x, x, NULL, width);
    const float ri = (float)(1 / sqrt(sum / (double)width + eps));
    r[i] = ri;
    for (int64_t j = 0; j < width; j++) out[j] = x[j] * ri * w[j];
  }
}

VECTOR_CLONES void rms_norm_rows_grad(const float *dy, const float *x, const float *w, const float *r, const float *plus, float *out, int64_t rows, int64_t width) {
  for (int64_t i = 0; i < rows; i++, dy += width, x += width, out += width, plus = plus ? plus + width : NULL) {
    const double dot = dot_of(w, dy, x, width);
    const double ri = r[i];
    const float c = (float)(ri * ri * ri * dot / (double)width);
    if (plus)
      for (int64_t j = 0; j < width; j++) out[j] = plus[j] + (r[i] * w[j] * dy[j] - x[j] * c);
    else
      for (int64_t j = 0; j < width; j++) out[j] = r[i] * w[j] * dy[j] - x[j] * c;
  }
}

/* rmsNorm(heap, xOffset, weightOffset, outOffset, rOffset, rows, width, eps): out = x * r * w, writing r per row. */
napi_value rms_norm(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[6];
  double eps = 0;
  if (!heap_args(env, info, "rmsNorm: (ArrayBuffer, xOffset, weightOffset, outOffset, rOffset, rows, width, eps) expected", &heap, &heap_bytes, 6, v, 1, &eps)) return NULL;
  const int64_t rows = v[4], width = v[5];
  if (!inside((uint64_t)v[0], (uint64_t)(rows * width), heap_bytes) || !inside((uint64_t)v[1], (uint64_t)width, heap_bytes) ||
      !inside((uint64_t)v[2], (uint64_t)(rows * width), heap_bytes) || !inside((uint64_t)v[3], (uint64_t)rows, heap_bytes)) {
    napi_throw_range_error(env, NULL, "rmsNorm: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  rms_norm_rows((const float *)heap + v[0] / 4, (const float *)heap + v[1] / 4, (float *)heap + v[2] / 4, (float *)heap + v[3] / 4, rows, width, eps);
  return NULL;
}

/*
 * rmsNormGrad(heap, dyOffset, xOffset, weightOffset, rOffset, outOffset, rows, width): the
 * gradient with respect to x, dx = r * w * dy - x * r^3 / width * sum_k(w_k dy_k x_k).
 */
napi_value rms_norm_grad(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[7];
  if (!heap_args(env, info, "rmsNormGrad: (ArrayBuffer, dyOffset, xOffset, weightOffset, rOffset, outOffset, rows, width) expected", &heap, &heap_bytes, 7, v, 0, NULL)) return NULL;
  const int64_t rows = v[5], width = v[6];
  const uint64_t size = (uint64_t)(rows * width);
  if (!inside((uint64_t)v[0], size, heap_bytes) || !inside((uint64_t)v[1], size, heap_bytes) || !inside((uint64_t)v[2], (uint64_t)width, heap_bytes) ||
      !inside((uint64_t)v[3], (uint64_t)rows, heap_bytes) || !inside((uint64_t)v[4], size, heap_bytes)) {
    napi_throw_range_error(env, NULL, "rmsNormGrad: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  const float *f = (const float *)heap;
  rms_norm_rows_grad(f + v[0] / 4, f + v[1] / 4, f + v[2] / 4, f + v[3] / 4, NULL, (float *)heap + v[4] / 4, rows, width);
  return NULL;
}
