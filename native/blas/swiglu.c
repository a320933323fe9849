/*
 * The MLP's SwiGLU product silu(gate) * up = gate * sigmoid(gate) * up, forward and backward,
 * in place on the wasm heap: one pass instead of a sigmoid and two products forward and about
 * eight kernels backward. The forward keeps sigmoid(gate) so the backward takes no exponential.
 */
#include <math.h>
#include "addon.h"

VECTOR_CLONES void swiglu_forward(const float *g, const float *u, float *out, float *s, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    const float si = 1.0f / (1.0f + exp_poly(-g[i]));
    s[i] = si;
    out[i] = g[i] * si * u[i];
  }
}

/* swiglu(heap, gateOffset, upOffset, outOffset, sigmoidOffset, n): out = gate * s * up, s = sigmoid(gate), written too. */
napi_value swiglu(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[5];
  if (!heap_args(env, info, "swiglu: (ArrayBuffer, gateOffset, upOffset, outOffset, sigmoidOffset, n) of non-negative integers expected", &heap, &heap_bytes, 5, v, 0, NULL)) return NULL;
  const uint64_t n = (uint64_t)v[4];
  for (int i = 0; i < 4; i++) {
    if (!inside((uint64_t)v[i], n, heap_bytes)) {
      napi_throw_range_error(env, NULL, "swiglu: an operand lies outside the heap or is misaligned");
      return NULL;
    }
  }
  swiglu_forward((const float *)heap + v[0] / 4, (const float *)heap + v[1] / 4, (float *)heap + v[2] / 4, (float *)heap + v[3] / 4, n);
  return NULL;
}

/* dg = dy * up * s * (1 + gate * (1 - s)), du = dy * gate * s; either may be NULL. Both in one pass when both are asked for: the loop is bound by memory. */
VECTOR_CLONES void swiglu_backward(const float *restrict dy, const float *restrict g, const float *restrict u, const float *restrict s, float *restrict dg, float *restrict du,
                                   uint64_t n) {
  if (dg && du)
    for (uint64_t i = 0; i < n; i++) {
      dg[i] = dy[i] * u[i] * s[i] * (1.0f + g[i] * (1.0f - s[i]));
      du[i] = dy[i] * g[i] * s[i];
    }
  else if (dg)
    for (uint64_t i = 0; i < n; i++) dg[i] = dy[i] * u[i] * s[i] * (1.0f + g[i] * (1.0f - s[i]));
  else if (du)
    for (uint64_t i = 0; i < n; i++) du[i] = dy[i] * g[i] * s[i];
}

/*
 * swigluGrad(heap, dyOffset, gateOffset, upOffset, sigmoidOffset, outOffset, n, which): the
 * gradient with respect to gate (which 0), dy * up * s * (1 + gate * (1 - s)), or to up
 * (which 1), dy * gate * s.
 */
napi_value swiglu_grad(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[7];
  if (!heap_args(env, info, "swigluGrad: (ArrayBuffer, dyOffset, gateOffset, upOffset, sigmoidOffset, outOffset, n, which) of non-negative integers expected", &heap, &heap_bytes, 7, v, 0,
                 NULL))
    return NULL;
  const uint64_t n = (uint64_t)v[5];
  for (int i = 0; i < 5; i++) {
    if (!inside((uint64_t)v[i], n, heap_bytes)) {
      napi_throw_range_error(env, NULL, "swigluGrad: an operand lies outside the heap or is misaligned");
      return NULL;
    }
  }
  const float *dy = (const float *)heap + v[0] / 4, *g = (const float *)heap + v[1] / 4, *u = (const float *)heap + v[2] / 4, *s = (const float *)heap + v[3] / 4;
  float *out = (float *)heap + v[4] / 4;
  swiglu_backward(dy, g, u, s, v[6] == 0 ? out : NULL, v[6] == 0 ? NULL : out, n);
  return NULL;
}
