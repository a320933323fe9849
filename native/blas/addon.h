/* What the addon's source files share: argument reading and the error macro. */
#ifndef VACCINE_ADDON_H
#define VACCINE_ADDON_H

#include <math.h>
#include <node_api.h>
#include <stdint.h>

#define CHECK(env, call)                                      \
  do {                                                        \
    if ((call) != napi_ok) {                                  \
      napi_throw_error((env), NULL, "vaccine_blas: " #call);  \
      return NULL;                                            \
    }                                                         \
  } while (0)

/*
 * Reads (ArrayBuffer, n non-negative integers, nd numbers) into heap, v and d; on anything
 * else throws a TypeError naming `usage` and returns 0. At most 16 arguments after the heap.
 */
int heap_args(napi_env env, napi_callback_info info, const char *usage, void **heap, size_t *heap_bytes, size_t n, int64_t *v, size_t nd, double *d);

/*
 * expf, answering 0 at once below its underflow (-103.97) instead of through glibc's error
 * path (errno, a floating-point exception; 5.2 against 3.7 ns a call here): masked attention
 * scores sit at -1e9, half of every causal row.
 */
static inline float exp_or_zero(float x) {
  return x < -104.0f ? 0.0f : expf(x);
}

/* A per-thread scratch buffer of at least count floats, reused across calls; NULL when out of memory. */
float *scratch(size_t count);

/* Whether `count` float32 values from byte offset `off` lie inside the heap, aligned. */
int inside(uint64_t off, uint64_t count, size_t heap_bytes);

napi_value cross_entropy(napi_env env, napi_callback_info info);
napi_value cross_entropy_grad(napi_env env, napi_callback_info info);
napi_value rms_norm(napi_env env, napi_callback_info info);
napi_value rms_norm_grad(napi_env env, napi_callback_info info);
napi_value lora_linear(napi_env env, napi_callback_info info);
napi_value lora_linear_grad(napi_env env, napi_callback_info info);
napi_value attention(napi_env env, napi_callback_info info);
napi_value attention_grad(napi_env env, napi_callback_info info);
napi_value swiglu(napi_env env, napi_callback_info info);
napi_value swiglu_grad(napi_env env, napi_callback_info info);

#endif
