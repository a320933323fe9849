/*
 * sgemm on OpenBLAS for tfjs's wasm backend: the operands and the result stay where they
 * are, in the wasm heap (an ArrayBuffer passed from JS), addressed by byte offsets, so a
 * product costs no copy in or out. Row-major, batched with a broadcast batch of 1. Also exp, the
 * embedding gather and a fused AdamW update, for the same reason: slow or many small wasm
 * kernels become one call; the loss, RMSNorm, the SwiGLU product, the
 * LoRA linear and attention in files of their own.
 */
#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "addon.h"

/* OpenBLAS extensions; declared here because the generic cblas.h may not have them. */
extern void openblas_set_num_threads(int n);
extern int openblas_get_num_threads(void);
extern char *openblas_get_config(void);

/*
 * Products whose result has a side of at most 32 (a LoRA rank's: x A^T, dy B and the adapters'
 * gradients) and more than 2^18 multiply-adds go to OpenBLAS in pieces of at most that many,
 * cut along the result's long side: OpenBLAS 0.3.21 runs such pieces through its small-matrix
 * kernels, a whole one through its packed path at a third to a half of the speed (rank 8 against
 * 512 rows and 128-768 columns: 2.0-3.0x faster cut, measured alone; 2^18 was the best bound of
 * 2^17-2^20). The cut is along the result, never the inner dimension: each value is a sum of
 * the same terms, in the order of whichever kernel takes it. Pieces thinner than 16 stay whole:
 * at a 7B model's sizes (4096 wide, 2048 rows) dy B in pieces of 8 rows ran 1.4x slower (x A^T
 * 1.7x faster; the guard gives that up to be safe).
 */
#define SMALL_PRODUCT (1 << 18)
#define THINNEST_PIECE 16

void row_major_sgemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                     int64_t ldb, float beta, float *c, int64_t ldc) {
  const int64_t piece_side = m * n * k > SMALL_PRODUCT ? SMALL_PRODUCT / ((m >= n ? n : m) * k) : 0;
  if ((m > 32 && n > 32) || piece_side < THINNEST_PIECE) {
    cblas_sgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
    return;
  }
  if (m >= n) {
    const int64_t rows = piece_side;
    for (int64_t i = 0; i < m; i += rows) {
      const int64_t piece = m - i < rows ? m - i : rows;
      cblas_sgemm(CblasRowMajor, ta, tb, (int)piece, (int)n, (int)k, alpha, a + (ta == CblasNoTrans ? i * lda : i), (int)lda, b, (int)ldb, beta, c + i * ldc, (int)ldc);
    }
    return;
  }
  const int64_t cols = piece_side;
  for (int64_t j = 0; j < n; j += cols) {
    const int64_t piece = n - j < cols ? n - j : cols;
    cblas_sgemm(CblasRowMajor, ta, tb, (int)m, (int)piece, (int)k, alpha, a, (int)lda, b + (tb == CblasNoTrans ? j : j * ldb), (int)ldb, beta, c + j, (int)ldc);
  }
}

static int get_i64(napi_env env, napi_value v, int64_t *out) {
  return napi_get_value_int64(env, v, out) == napi_ok;
}

/*
 * gemm(heap, aOffset, bOffset, outOffset, batchA, batchB, m, n, k, transposeA, transposeB):
 * out[i] = op(a[i or 0]) x op(b[i or 0]) for i < max(batchA, batchB), where a batch of 1 is
 * broadcast; op(a) is [m, k], op(b) is [k, n], out[i] is [m, n].
 */
static napi_value gemm(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 11) {
    napi_throw_type_error(env, NULL, "gemm: 11 arguments expected");
    return NULL;
  }
  void *heap = NULL;
  size_t heap_bytes = 0;
  if (napi_get_arraybuffer_info(env, argv[0], &heap, &heap_bytes) != napi_ok) {
    napi_throw_type_error(env, NULL, "gemm: the first argument must be an ArrayBuffer");
    return NULL;
  }
  int64_t v[8];
  for (int i = 0; i < 8; i++) {
    if (!get_i64(env, argv[i + 1], &v[i]) || v[i] < 0) {
      napi_throw_type_error(env, NULL, "gemm: offsets and sizes must be non-negative integers");
      return NULL;
    }
  }
  bool ta = false, tb = false;
  CHECK(env, napi_get_value_bool(env, argv[9], &ta));
  CHECK(env, napi_get_value_bool(env, argv[10], &tb));
  const int64_t a_off = v[0], b_off = v[1], o_off = v[2];
  const int64_t batch_a = v[3], batch_b = v[4], m = v[5], n = v[6], k = v[7];
  if (!(batch_a == batch_b || batch_a == 1 || batch_b == 1)) {
    napi_throw_range_error(env, NULL, "gemm: batches must be equal or one of them 1");
    return NULL;
  }
  const int64_t batch = batch_a > batch_b ? batch_a : batch_b;
  /* Every operand must lie inside the heap: a wrong offset must not write past it. */
  const uint64_t a_end = (uint64_t)a_off + 4u * (uint64_t)(batch_a * m * k);
  const uint64_t b_end = (uint64_t)b_off + 4u * (uint64_t)(batch_b * k * n);
  const uint64_t o_end = (uint64_t)o_off + 4u * (uint64_t)(batch * m * n);
  if (a_end > heap_bytes || b_end > heap_bytes || o_end > heap_bytes || (a_off | b_off | o_off) % 4) {
    napi_throw_range_error(env, NULL, "gemm: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) {
    napi_throw_range_error(env, NULL, "gemm: a dimension exceeds the BLAS integer");
    return NULL;
  }
  float *base = (float *)heap;
  const float *a = base + a_off / 4;
  const float *b = base + b_off / 4;
  float *out = base + o_off / 4;
  if (batch == 0 || m == 0 || n == 0) return NULL;
  if (k == 0) {
    memset(out, 0, 4u * (size_t)(batch * m * n));
    return NULL;
  }
  const enum CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans;
  const enum CBLAS_TRANSPOSE opb = tb ? CblasTrans : CblasNoTrans;
  const int lda = ta ? (int)m : (int)k;
  const int ldb = tb ? (int)k : (int)n;
  /* A shared right operand and an untransposed left one: the batch is one tall product. */
  if (batch_b == 1 && !ta && batch_a * m <= INT32_MAX) {
    row_major_sgemm(opa, opb, batch_a * m, n, k, 1.0f, a, lda, b, ldb, 0.0f, out, n);
    return NULL;
  }
  for (int64_t i = 0; i < batch; i++) {
    const float *ai = a + (batch_a == 1 ? 0 : i * m * k);
    const float *bi = b + (batch_b == 1 ? 0 : i * k * n);
    row_major_sgemm(opa, opb, m, n, k, 1.0f, ai, lda, bi, ldb, 0.0f, out + i * m * n, n);
  }
  return NULL;
}

/* One per thread (data-parallel workers each have theirs), grown as needed and kept: no allocation per call. */
static _Thread_local float *scratch_buf = NULL;
static _Thread_local size_t scratch_cap = 0;
/* The bytes of every thread's scratch buffer, for scratchBytes(). */
static _Atomic int64_t scratch_total = 0;

float *scratch(size_t count) {
  if (count > scratch_cap) {
    float *grown = realloc(scratch_buf, 4 * count);
    if (!grown) return NULL;
    scratch_total += 4 * (int64_t)(count - scratch_cap);
    scratch_buf = grown;
    scratch_cap = count;
  }
  return scratch_buf;
}

/*
 * Frees this thread's scratch buffer: run when the thread's Node environment ends (a
 * data-parallel worker's, at the end of its job), which would otherwise leave the buffer
 * (as large as a layer's dropout-masked input) allocated with no thread to use it.
 */
static void release_scratch(void *unused) {
  (void)unused;
  free(scratch_buf);
  scratch_total -= 4 * (int64_t)scratch_cap;
  scratch_buf = NULL;
  scratch_cap = 0;
}

/* scratchBytes(): the bytes of the scratch buffers of every thread that has one. */
static napi_value scratch_bytes(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  CHECK(env, napi_create_int64(env, scratch_total, &out));
  return out;
}

int inside(uint64_t off, uint64_t count, size_t heap_bytes) {
  /* count first: 4 * count can wrap for sizes no heap has. */
  return off % 4 == 0 && count <= heap_bytes / 4 && off <= heap_bytes - 4u * count;
}

int heap_args(napi_env env, napi_callback_info info, const char *usage, void **heap, size_t *heap_bytes, size_t n, int64_t *v, size_t nd, double *d) {
  size_t argc = 17;
  napi_value argv[17];
  if (n + nd > 16 || napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 + n + nd ||
      napi_get_arraybuffer_info(env, argv[0], heap, heap_bytes) != napi_ok) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    if (!get_i64(env, argv[i + 1], &v[i]) || v[i] < 0) {
      napi_throw_type_error(env, NULL, usage);
      return 0;
    }
  }
  for (size_t i = 0; i < nd; i++) {
    if (napi_get_value_double(env, argv[1 + n + i], &d[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, usage);
      return 0;
    }
  }
  return 1;
}

VECTOR_CLONES void exp_array(const float *in, float *out, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = exp_poly(in[i]);
}

/* exp(heap, inOffset, outOffset, n): out[i] = exp_poly(in[i]). */
static napi_value exp_kernel(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[3];
  if (!heap_args(env, info, "exp: (ArrayBuffer, inOffset, outOffset, n) of non-negative integers expected", &heap, &heap_bytes, 3, v, 0, NULL)) return NULL;
  if (!inside((uint64_t)v[0], (uint64_t)v[2], heap_bytes) || !inside((uint64_t)v[1], (uint64_t)v[2], heap_bytes)) {
    napi_throw_range_error(env, NULL, "exp: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  exp_array((const float *)heap + v[0] / 4, (float *)heap + v[1] / 4, v[2]);
  return NULL;
}

/* In eight double lanes (dot_of), so that the loop vectorises: one running sum is a chain of dependent adds. */
VECTOR_CLONES static double squares_of(const float *x, int64_t n) {
  return dot_of(x, x, NULL, n);
}

/* sumSquares(heap, offset, n): the sum of the squares of n float32 values, in double. */
static napi_value sum_squares(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[2];
  if (!heap_args(env, info, "sumSquares: (ArrayBuffer, offset, n) of non-negative integers expected", &heap, &heap_bytes, 2, v, 0, NULL)) return NULL;
  if (!inside((uint64_t)v[0], (uint64_t)v[1], heap_bytes)) {
    napi_throw_range_error(env, NULL, "sumSquares: the operand lies outside the heap or is misaligned");
    return NULL;
  }
  napi_value result;
  CHECK(env, napi_create_double(env, squares_of((const float *)heap + v[0] / 4, v[1]), &result));
  return result;
}

/*
 * gather(heap, tableOffset, indicesOffset, outOffset, rows, width, n): out[i] = table[indices[i]]
 * for a [rows, width] float32 table and n int32 indices: the embedding lookup, one row copy
 * per index. Returns -1, or the position of the first index outside [0, rows) (nothing is
 * written then).
 */
static napi_value gather(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[6];
  if (!heap_args(env, info, "gather: (ArrayBuffer, tableOffset, indicesOffset, outOffset, rows, width, n) of non-negative integers expected", &heap, &heap_bytes, 6, v, 0, NULL)) return NULL;
  const uint64_t rows = (uint64_t)v[3], width = (uint64_t)v[4], n = (uint64_t)v[5];
  if ((uint64_t)v[0] + 4 * rows * width > heap_bytes || (uint64_t)v[1] + 4 * n > heap_bytes || (uint64_t)v[2] + 4 * n * width > heap_bytes ||
      (v[0] | v[1] | v[2]) % 4) {
    napi_throw_range_error(env, NULL, "gather: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  const float *table = (const float *)heap + v[0] / 4;
  const int32_t *indices = (const int32_t *)heap + v[1] / 4;
  float *out = (float *)heap + v[2] / 4;
  int64_t bad = -1;
  for (uint64_t i = 0; i < n && bad < 0; i++)
    if (indices[i] < 0 || (uint64_t)indices[i] >= rows) bad = (int64_t)i;
  if (bad < 0)
    for (uint64_t i = 0; i < n; i++) memcpy(out + i * width, table + (uint64_t)indices[i] * width, 4 * width);
  napi_value result;
  CHECK(env, napi_create_int64(env, bad, &result));
  return result;
}

/*
 * adamw(heap, pOff, gOff, mOff, vOff, n, gradScale, decay, beta1, beta2, eps, sqrtBc2, stepSize):
 * one AdamW update of n float32 values in place, the same float32 operations in the same order
 * as the tfjs ops it replaces (services/runtime/train/adamw.ts), so the result is bit for bit
 * theirs (the build turns off FMA contraction): g' = g * gradScale (clipping; 1 when none),
 * m = m * beta1 + g' * (1 - beta1), v = v * beta2 + g'^2 * (1 - beta2),
 * p = p * decay - m / (sqrt(v) / sqrtBc2 + eps) * stepSize. Each constant is rounded to
 * float32 as tfjs rounds a scalar.
 */
static napi_value adamw(napi_env env, napi_callback_info info) {
  size_t argc = 13;
  napi_value argv[13];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *heap = NULL;
  size_t heap_bytes = 0;
  if (argc != 13 || napi_get_arraybuffer_info(env, argv[0], &heap, &heap_bytes) != napi_ok) {
    napi_throw_type_error(env, NULL, "adamw: (ArrayBuffer, pOffset, gOffset, mOffset, vOffset, n, 7 numbers) expected");
    return NULL;
  }
  int64_t v[5];
  for (int i = 0; i < 5; i++) {
    if (!get_i64(env, argv[i + 1], &v[i]) || v[i] < 0) {
      napi_throw_type_error(env, NULL, "adamw: offsets and size must be non-negative integers");
      return NULL;
    }
  }
  double c[7];
  for (int i = 0; i < 7; i++) {
    if (napi_get_value_double(env, argv[i + 6], &c[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "adamw: the constants must be numbers");
      return NULL;
    }
  }
  const uint64_t bytes = 4u * (uint64_t)v[4];
  for (int i = 0; i < 4; i++) {
    if ((uint64_t)v[i] + bytes > heap_bytes || v[i] % 4) {
      napi_throw_range_error(env, NULL, "adamw: an operand lies outside the heap or is misaligned");
      return NULL;
    }
  }
  float *base = (float *)heap;
  float *p = base + v[0] / 4, *m = base + v[2] / 4, *s = base + v[3] / 4;
  const float *g = base + v[1] / 4;
  const float scale = (float)c[0], decay = (float)c[1], b1 = (float)c[2], b2 = (float)c[3];
  const float one_b1 = (float)(1 - c[2]), one_b2 = (float)(1 - c[3]);
  const float eps = (float)c[4], sqrt_bc2 = (float)c[5], step = (float)c[6];
  for (int64_t i = 0; i < v[4]; i++) {
    const float gi = g[i] * scale;
    const float mi = m[i] * b1 + gi * one_b1;
    const float si = s[i] * b2 + (gi * gi) * one_b2;
    m[i] = mi;
    s[i] = si;
    p[i] = p[i] * decay - (mi / (sqrtf(si) / sqrt_bc2 + eps)) * step;
  }
  return NULL;
}

static napi_value set_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n = 0;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 1 || napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1) {
    napi_throw_type_error(env, NULL, "setThreads: a positive integer expected");
    return NULL;
  }
  openblas_set_num_threads(n);
  return NULL;
}

static napi_value threads(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  CHECK(env, napi_create_int32(env, openblas_get_num_threads(), &out));
  return out;
}

static napi_value config(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  CHECK(env, napi_create_string_utf8(env, openblas_get_config(), NAPI_AUTO_LENGTH, &out));
  return out;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"gemm", NULL, gemm, NULL, NULL, NULL, napi_enumerable, NULL},
      {"exp", NULL, exp_kernel, NULL, NULL, NULL, napi_enumerable, NULL},
      {"crossEntropy", NULL, cross_entropy, NULL, NULL, NULL, napi_enumerable, NULL},
      {"crossEntropyGrad", NULL, cross_entropy_grad, NULL, NULL, NULL, napi_enumerable, NULL},
      {"headLoss", NULL, head_loss, NULL, NULL, NULL, napi_enumerable, NULL},
      {"rmsNorm", NULL, rms_norm, NULL, NULL, NULL, napi_enumerable, NULL},
      {"rmsNormGrad", NULL, rms_norm_grad, NULL, NULL, NULL, napi_enumerable, NULL},
      {"loraLinear", NULL, lora_linear, NULL, NULL, NULL, napi_enumerable, NULL},
      {"loraLinearGrad", NULL, lora_linear_grad, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attention", NULL, attention, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attentionGrad", NULL, attention_grad, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attentionProbs", NULL, attention_probs_size, NULL, NULL, NULL, napi_enumerable, NULL},
      {"swiglu", NULL, swiglu, NULL, NULL, NULL, napi_enumerable, NULL},
      {"swigluGrad", NULL, swiglu_grad, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attentionBlock", NULL, attention_block, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attentionBlockGrad", NULL, attention_block_grad, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mlpBlock", NULL, mlp_block, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mlpBlockGrad", NULL, mlp_block_grad, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dropoutMask", NULL, dropout_mask, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gather", NULL, gather, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sumSquares", NULL, sum_squares, NULL, NULL, NULL, napi_enumerable, NULL},
      {"adamw", NULL, adamw, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setThreads", NULL, set_threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"threads", NULL, threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"config", NULL, config, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scratchBytes", NULL, scratch_bytes, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  /* Each environment (the main thread, every worker thread) loads the addon on its own thread. */
  if (napi_add_env_cleanup_hook(env, release_scratch, NULL) != napi_ok) return NULL;
  return exports;
}
