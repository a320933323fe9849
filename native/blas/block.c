/*
 * A decoder layer's two blocks as one kernel each, forward and backward, in place on the wasm
 * heap: the attention block (RMSNorm, the q, k and v projections, causal attention, the o
 * projection) and the MLP block (RMSNorm, the gate and up projections, SwiGLU, the down
 * projection), each projection LoRA-adapted or not. The blocks compose the same functions as
 * the single kernels (lora.c, rms_norm.c, attention.c, swiglu.c), so they compute the same
 * values; what they save is tfjs's work between kernels (a layer was about 36 kernel calls a
 * training step, each with its outputs, saved tensors and tape entries, now 4) and the sums
 * of the input's gradient over the projections that read it (accumulated by the products).
 *
 * With `residual` a block's value is x + its output (+ a delta, for the attention block): the
 * residual add, and its gradient's sum, done where the block writes (x copied into the output
 * for the last product to add to, instead of the zeros OpenBLAS would write first).
 *
 * With `ends` (int32, one per batch row: 1 + the position of the row's last real token) the
 * blocks skip each row's positions from there on: attention is causal, so nothing at a real
 * position reads them, and no loss does. The rows kept are gathered into one operand of m rows
 * (one product per projection, as without ends; a product per run of rows packed the weight
 * again each time and was no faster), the attention between them still on the [B, T] layout; a
 * skipped position's value is x (+ delta) with the residual, else 0, and its input gradient dy
 * with the residual, else 0. What the forward keeps for the backward holds the m kept rows
 * first (the attention's operands excepted).
 *
 * Operands come as a Float64Array of byte offsets into the heap and sizes, in the order the
 * comments below give; an absent operand (no mask, no adapter, a gradient not asked for) is -1.
 */
#include "addon.h"

typedef struct {
  float *heap;
  size_t bytes;
  const double *v;
  size_t len;
  int ok;
} args_t;

/* Reads the Float64Array of operands after the heap; 0 (a TypeError thrown) on anything else. */
static int read_args(napi_env env, napi_callback_info info, const char *usage, size_t len, args_t *a) {
  size_t argc = 2;
  napi_value argv[2];
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 || napi_get_arraybuffer_info(env, argv[0], (void **)&a->heap, &a->bytes) != napi_ok ||
      napi_get_typedarray_info(env, argv[1], &type, &length, &data, NULL, NULL) != napi_ok || type != napi_float64_array || length != len) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  a->v = data;
  a->len = len;
  a->ok = 1;
  return 1;
}

/* Operand i as a non-negative integer (a size). */
static int64_t size_at(args_t *a, size_t i) {
  const double x = a->v[i];
  if (!(x >= 0 && x <= (double)INT32_MAX && x == (double)(int64_t)x)) a->ok = 0;
  return a->ok ? (int64_t)x : 0;
}

/* Operand i as `count` floats in the heap; -1 gives NULL where `optional`. */
static float *at(args_t *a, size_t i, uint64_t count, int optional) {
  const double x = a->v[i];
  if (optional && x == -1) return NULL;
  if (!(x >= 0 && x == (double)(uint64_t)x && inside((uint64_t)x, count, a->bytes))) {
    a->ok = 0;
    return NULL;
  }
  return a->heap + (uint64_t)x / 4;
}

/* A projection at operands i..i+5 (w, a, b, mask, r, scaling) for inputs of n rows. */
static proj_t proj_at(args_t *a, size_t i, int64_t n, int64_t in, int64_t out) {
  proj_t p = {NULL, NULL, NULL, NULL, in, out, size_at(a, i + 4), (float)a->v[i + 5]};
  p.w = at(a, i, (uint64_t)(out * in), 0);
  if (p.r > 0) {
    p.a = at(a, i + 1, (uint64_t)(p.r * in), 0);
    p.b = at(a, i + 2, (uint64_t)(out * p.r), 0);
    p.mask = at(a, i + 3, (uint64_t)(n * in), 1);
  }
  return p;
}

/* The adapters' x A products at operand i, each projection's [n, r] in turn (NULL where none is adapted). */
static void xa_at(args_t *a, size_t i, const proj_t *proj, int count, int64_t n, float **xa) {
  uint64_t total = 0;
  for (int k = 0; k < count; k++) total += (uint64_t)(n * proj[k].r);
  float *next = at(a, i, total, 1);
  if (total > 0 && !next) a->ok = 0;
  for (int k = 0; k < count; k++) {
    xa[k] = next;
    if (next) next += n * proj[k].r;
  }
}

/* The largest rank of count projections (0 with no adapter). */
static int64_t max_rank(const proj_t *proj, int count) {
  int64_t m = 0;
  for (int i = 0; i < count; i++) m = proj[i].r > m ? proj[i].r : m;
  return m;
}

/* The gradients of count projections' A and B at operands i, i+1, i+2, ...: NULL where not adapted or not asked for. */
static void adapter_grads_at(args_t *a, size_t i, const proj_t *proj, int count, float **da, float **db) {
  for (int k = 0; k < count; k++) {
    const proj_t *p = &proj[k];
    da[k] = p->r ? at(a, i + 2 * (size_t)k, (uint64_t)(p->r * p->in), 1) : NULL;
    db[k] = p->r ? at(a, i + 1 + 2 * (size_t)k, (uint64_t)(p->out * p->r), 1) : NULL;
  }
}

static int fail(napi_env env, const char *what, int range) {
  if (range) napi_throw_range_error(env, NULL, what);
  else napi_throw_error(env, NULL, what);
  return 0;
}

/* The rows a block computes: n rows of batch rows of t positions, all of them without ends. */
typedef struct {
  int64_t n, t;
  const int32_t *ends;
} rows_t;

/* Operand i as ends (-1: none) for n rows of t positions, each end in [0, t]. */
static rows_t rows_at(args_t *a, size_t i, int64_t n, int64_t t) {
  rows_t r = {n, t, NULL};
  const int64_t count = t > 0 ? n / t : 0;
  if (a->v[i] == -1 || count == 0) return r;
  r.ends = (const int32_t *)at(a, i, (uint64_t)count, 0);
  for (int64_t b = 0; r.ends && b < count; b++)
    if (r.ends[b] < 0 || r.ends[b] > t) a->ok = 0;
  return r;
}

/* The next run of kept rows from batch row *b on: rows [*start, *start + *len); 0 when none is left. */
static int next_run(const rows_t *r, int64_t *b, int64_t *start, int64_t *len) {
  if (!r->ends) {
    if (*b > 0 || r->n == 0) return 0;
    *b = 1, *start = 0, *len = r->n;
    return 1;
  }
  const int64_t count = r->n / r->t;
  while (*b < count && r->ends[*b] == 0) (*b)++;
  if (*b >= count) return 0;
  *start = *b * r->t, *len = r->ends[*b];
  /* A full row runs on into the next. */
  while (r->ends[*b] == r->t && *b + 1 < count && r->ends[*b + 1] > 0) *len += r->ends[++*b];
  (*b)++;
  return 1;
}

#define FOR_RUNS(r, start, len) for (int64_t run_b_ = 0, start = 0, len = 0; next_run(r, &run_b_, &start, &len);)

/* The number of kept rows. */
static int64_t kept_count(const rows_t *r) {
  int64_t m = 0;
  FOR_RUNS(r, s0, len) m += len;
  return m;
}

/* The kept rows of [n, width] src into [m, width] dst; src itself without ends. */
static const float *gather_rows(const rows_t *r, const float *src, float *dst, int64_t width) {
  if (!r->ends) return src;
  int64_t k = 0;
  FOR_RUNS(r, s0, len) memcpy(dst + k * width, src + s0 * width, 4u * (size_t)(len * width)), k += len;
  return dst;
}

/* [m, width] src back into the kept rows of [n, width] dst (nothing without ends: src is dst). */
static void scatter_rows(const rows_t *r, const float *src, float *dst, int64_t width) {
  if (!r->ends) return;
  int64_t k = 0;
  FOR_RUNS(r, s0, len) memcpy(dst + s0 * width, src + k * width, 4u * (size_t)(len * width)), k += len;
}

/* [m, width] space for a kept-rows operand: buf with ends, else the [n, width] operand itself. */
static float *kept_space(const rows_t *r, float *whole, float *buf) { return r->ends ? buf : whole; }

/* Projection p on the kept rows: its dropout mask's rows gathered into buf (m * in floats). */
static proj_t kept_proj(const proj_t *p, const rows_t *r, float *buf) {
  proj_t q = *p;
  if (q.mask) q.mask = gather_rows(r, q.mask, buf, q.in);
  return q;
}

/* [m, width] gradient rows into dx [n, width], whose skipped rows get dy through the residual, else 0. */
static void scatter_grad(const rows_t *r, const float *kept, float *dx, const float *dy, int64_t width) {
  if (!r->ends || !dx) return;
  if (dy) memcpy(dx, dy, 4u * (size_t)(r->n * width));
  else memset(dx, 0, 4u * (size_t)(r->n * width));
  scatter_rows(r, kept, dx, width);
}

/*
 * The attention block's operands, shared by forward and backward: 0 b, 1 t, 2 heads,
 * 3 kvHeads, 4 headDim, 5 hidden, 6 eps, 7 x [b, t, hidden], 8 the norm's weight [hidden],
 * 9 bias [b, 1, t, t], 10 cos, 11 sin [t, headDim], 12-17 q's projection (w, a, b, mask, r,
 * scaling), 18-23 k's, 24-29 v's, 30-35 o's; then what the forward writes, and the backward
 * reads: 36 y (forward) or dy (backward) [b, t, hidden], 37 the normed x, 38 its per-row r,
 * 39 v [b, t, kv], 40 rotated q, 41 rotated k, 42 softmax [b, heads, attention_probs(t)], 43 the context
 * [b, t, q], 44 the adapters' x A products, each projection's [n, r] in turn; 45 residual (0
 * or 1), 46 the delta [b, t, hidden] added with the residual, or -1, 47 ends [b] or -1.
 */
typedef struct {
  attn_shape s;
  int64_t n, hidden, qd, kvd;
  double eps;
  const float *x, *norm, *bias, *cos, *sin;
  proj_t proj[4];
  float *y, *xn, *rr, *v, *qr, *kr, *probs, *ctx, *xa[4];
  int64_t residual;
  const float *delta;
  rows_t rows;
} attn_block;

static int attn_block_at(napi_env env, args_t *a, attn_block *k) {
  k->s = (attn_shape){size_at(a, 0), size_at(a, 1), size_at(a, 2), size_at(a, 3), size_at(a, 4)};
  k->hidden = size_at(a, 5);
  k->eps = a->v[6];
  const attn_shape *s = &k->s;
  if (!a->ok || s->kv == 0 || s->heads % s->kv != 0 || s->d % 2 != 0) return fail(env, "attentionBlock: sizes must be integers, heads a multiple of kvHeads, the head size even", 1);
  k->n = s->b * s->t;
  k->qd = s->heads * s->d;
  k->kvd = s->kv * s->d;
  /* The products take int sizes. */
  if (k->n > INT32_MAX || k->qd > INT32_MAX || s->t * s->t > INT32_MAX) return fail(env, "attentionBlock: sizes too large", 1);
  const uint64_t n = (uint64_t)k->n;
  k->x = at(a, 7, n * (uint64_t)k->hidden, 0);
  k->norm = at(a, 8, (uint64_t)k->hidden, 0);
  k->bias = at(a, 9, n * (uint64_t)s->t, 1); /* the forward's only */
  k->cos = at(a, 10, (uint64_t)(s->t * s->d), 0);
  k->sin = at(a, 11, (uint64_t)(s->t * s->d), 0);
  const int64_t ins[4] = {k->hidden, k->hidden, k->hidden, k->qd}, outs[4] = {k->qd, k->kvd, k->kvd, k->hidden};
  for (int i = 0; i < 4; i++) k->proj[i] = proj_at(a, 12 + 6 * (size_t)i, k->n, ins[i], outs[i]);
  k->y = at(a, 36, n * (uint64_t)k->hidden, 0);
  k->xn = at(a, 37, n * (uint64_t)k->hidden, 0);
  k->rr = at(a, 38, n, 0);
  k->v = at(a, 39, n * (uint64_t)k->kvd, 0);
  k->qr = at(a, 40, n * (uint64_t)k->qd, 0);
  k->kr = at(a, 41, n * (uint64_t)k->kvd, 0);
  k->probs = at(a, 42, (uint64_t)(s->b * s->heads * attention_probs(s->t)), 0);
  k->ctx = at(a, 43, n * (uint64_t)k->qd, 0);
  xa_at(a, 44, k->proj, 4, k->n, k->xa);
  k->residual = size_at(a, 45);
  k->delta = at(a, 46, n * (uint64_t)k->hidden, 1);
  k->rows = rows_at(a, 47, k->n, s->t);
  if (!a->ok) return fail(env, "attentionBlock: an operand lies outside the heap or is misaligned", 1);
  return 1;
}

/* The residual's start of a block's output: x (+ delta) copied in, for the last product to add to. */
static void residual_start(float *y, const float *x, const float *delta, int64_t count) {
  if (!delta) {
    memcpy(y, x, 4u * (size_t)count);
    return;
  }
  for (int64_t i = 0; i < count; i++) y[i] = x[i] + delta[i];
}

/* attentionBlock(heap, operands): writes y = o(attention(q(xn), k(xn), v(xn))) (+ x + delta with residual), xn = RMSNorm(x), and what the backward reads. */
napi_value attention_block(napi_env env, napi_callback_info info) {
  args_t a;
  attn_block k;
  if (!read_args(env, info, "attentionBlock: (ArrayBuffer, Float64Array of 48 operands) expected", 48, &a) || !attn_block_at(env, &a, &k)) return NULL;
  if (!k.bias) return fail(env, "attentionBlock: the bias is missing", 1), NULL;
  const rows_t *r = &k.rows;
  const int64_t n = k.n, m = kept_count(r), h = k.hidden, qd = k.qd, kvd = k.kvd, widest = h > qd ? h : qd;
  /* q and k on the [B, T] layout, the products' buffer; with ends, the kept rows' x (then y), q (then the context), k, v, and a mask's rows. */
  const int64_t kept = r->ends ? m * (h + qd + 2 * kvd + widest) : 0;
  float *buf = scratch((size_t)(n * (qd + kvd) + m * widest + kept));
  if (!buf) return fail(env, "attentionBlock: out of memory", 0), NULL;
  float *q = buf, *kk = q + n * qd, *masked = kk + n * kvd, *next = masked + m * widest;
  float *xs = next, *qs = xs + m * h, *ks = qs + m * qd, *vs = ks + m * kvd, *mask_rows = vs + m * kvd, *ctxs = qs, *ys = xs;
  const float *x = gather_rows(r, k.x, xs, h);
  rms_norm_rows(x, k.norm, k.xn, k.rr, m, h, k.eps);
  float *outs[3] = {kept_space(r, q, qs), kept_space(r, kk, ks), kept_space(r, k.v, vs)};
  for (int i = 0; i < 3; i++) {
    const proj_t p = kept_proj(&k.proj[i], r, mask_rows);
    proj_forward(&p, k.xn, outs[i], 0, k.xa[i], m, masked);
  }
  /* Attention reads q, k and v before each row's end only. */
  scatter_rows(r, qs, q, qd), scatter_rows(r, ks, kk, kvd), scatter_rows(r, vs, k.v, kvd);
  attention_forward(&k.s, r->ends, q, kk, k.v, k.bias, k.cos, k.sin, k.ctx, k.qr, k.kr, k.probs);
  if (k.residual) residual_start(k.y, k.x, k.delta, n * h);
  else if (r->ends) memset(k.y, 0, 4u * (size_t)(n * h));
  float *y = kept_space(r, k.y, ys);
  if (k.residual) gather_rows(r, k.y, ys, h);
  const proj_t o = kept_proj(&k.proj[3], r, mask_rows);
  proj_forward(&o, gather_rows(r, k.ctx, ctxs, qd), y, (int)k.residual, k.xa[3], m, masked);
  scatter_rows(r, ys, k.y, h);
  return NULL;
}

/*
 * attentionBlockGrad(heap, operands): the forward's 48 (36 is dy; the delta's gradient is dy), then
 * 48 dx (plus dy with residual), 49-56 dA and dB of q, k, v and o in turn (each -1 when not asked for).
 */
napi_value attention_block_grad(napi_env env, napi_callback_info info) {
  args_t a;
  attn_block k;
  if (!read_args(env, info, "attentionBlockGrad: (ArrayBuffer, Float64Array of 57 operands) expected", 57, &a) || !attn_block_at(env, &a, &k)) return NULL;
  const rows_t *r = &k.rows;
  const int64_t n = k.n, m = kept_count(r), h = k.hidden, qd = k.qd, kvd = k.kvd;
  float *dx = at(&a, 48, (uint64_t)(n * h), 1), *da[4], *db[4];
  adapter_grads_at(&a, 49, k.proj, 4, da, db);
  if (!a.ok) return fail(env, "attentionBlockGrad: an operand lies outside the heap or is misaligned", 1), NULL;
  const int64_t widest = h > qd ? h : qd;
  const int64_t attn_buf = attention_grad_floats(k.s.t, k.s.d), proj_buf = m * (max_rank(k.proj, 4) + widest);
  /* With ends, the kept rows' dy, the context (then x), its gradient (then dx), dq, dk, dv, and a mask's rows. */
  const int64_t kept = r->ends ? m * (h + 2 * widest + qd + 2 * kvd + widest) : 0;
  float *buf = scratch((size_t)(2 * n * qd + 2 * n * kvd + m * h + (attn_buf > proj_buf ? attn_buf : proj_buf) + kept));
  if (!buf) return fail(env, "attentionBlockGrad: out of memory", 0), NULL;
  float *dctx = buf, *dq = dctx + n * qd, *dk = dq + n * qd, *dv = dk + n * kvd, *dxn = dv + n * kvd, *tmp = dxn + m * h;
  float *dys = tmp + (attn_buf > proj_buf ? attn_buf : proj_buf), *ctxs = dys + m * h, *dctxs = ctxs + m * widest, *dqs = dctxs + m * widest, *dks = dqs + m * qd, *dvs = dks + m * kvd,
        *mask_rows = dvs + m * kvd, *xs = ctxs, *dxs = dctxs;
  const float *dy = gather_rows(r, k.y, dys, h);
  const int below = dx || da[0] || db[0] || da[1] || db[1] || da[2] || db[2];
  const proj_t o = kept_proj(&k.proj[3], r, mask_rows);
  proj_backward(&o, dy, gather_rows(r, k.ctx, ctxs, qd), k.xa[3], below ? kept_space(r, dctx, dctxs) : NULL, 0, da[3], db[3], m, tmp);
  if (!below) return NULL;
  /* Attention reads the gradient before each row's end only. */
  scatter_rows(r, dctxs, dctx, qd);
  attention_backward(&k.s, r->ends, dctx, k.qr, k.kr, k.v, k.probs, k.cos, k.sin, dq, dk, dv, tmp);
  const float *grads[3] = {gather_rows(r, dq, dqs, qd), gather_rows(r, dk, dks, kvd), gather_rows(r, dv, dvs, kvd)};
  float *dxk = kept_space(r, dx, dxs);
  /* The normed input's gradient sums the three projections' (accumulated by the products). */
  for (int i = 0; i < 3; i++) {
    const proj_t p = kept_proj(&k.proj[i], r, mask_rows);
    proj_backward(&p, grads[i], k.xn, k.xa[i], dx ? dxn : NULL, i > 0, da[i], db[i], m, tmp);
  }
  if (!dx) return NULL;
  rms_norm_rows_grad(dxn, gather_rows(r, k.x, xs, h), k.norm, k.rr, k.residual ? dy : NULL, dxk, m, h);
  scatter_grad(r, dxs, dx, k.residual ? k.y : NULL, h);
  return NULL;
}

/*
 * The MLP block's operands: 0 rows n, 1 hidden, 2 intermediate, 3 eps, 4 x [n, hidden], 5 the
 * norm's weight, 6-11 gate's projection (w, a, b, mask, r, scaling), 12-17 up's, 18-23 down's;
 * then 24 y (forward) or dy (backward) [n, hidden], 25 the normed x, 26 its per-row r, 27 gate,
 * 28 up, 29 sigmoid(gate), 30 the SwiGLU product [n, intermediate], 31 the adapters' x A
 * products, each projection's [n, r] in turn; 32 residual (0 or 1), 33 positions t of a batch
 * row, 34 ends [n / t] or -1.
 */
typedef struct {
  int64_t n, hidden, inter;
  double eps;
  const float *x, *norm;
  proj_t proj[3];
  float *y, *xn, *rr, *gate, *up, *sig, *act, *xa[3];
  int64_t residual;
  rows_t rows;
} mlp_block_t;

static int mlp_block_at(napi_env env, args_t *a, mlp_block_t *k) {
  k->n = size_at(a, 0);
  k->hidden = size_at(a, 1);
  k->inter = size_at(a, 2);
  k->eps = a->v[3];
  if (!a->ok) return fail(env, "mlpBlock: sizes must be non-negative integers", 1);
  const uint64_t n = (uint64_t)k->n, h = (uint64_t)k->hidden, f = (uint64_t)k->inter;
  k->x = at(a, 4, n * h, 0);
  k->norm = at(a, 5, h, 0);
  const int64_t ins[3] = {k->hidden, k->hidden, k->inter}, outs[3] = {k->inter, k->inter, k->hidden};
  for (int i = 0; i < 3; i++) k->proj[i] = proj_at(a, 6 + 6 * (size_t)i, k->n, ins[i], outs[i]);
  k->y = at(a, 24, n * h, 0);
  k->xn = at(a, 25, n * h, 0);
  k->rr = at(a, 26, n, 0);
  k->gate = at(a, 27, n * f, 0);
  k->up = at(a, 28, n * f, 0);
  k->sig = at(a, 29, n * f, 0);
  k->act = at(a, 30, n * f, 0);
  xa_at(a, 31, k->proj, 3, k->n, k->xa);
  k->residual = size_at(a, 32);
  const int64_t t = size_at(a, 33);
  if (a->ok && a->v[34] != -1 && (t == 0 || k->n % t != 0)) return fail(env, "mlpBlock: the rows must be whole batch rows of t positions", 1);
  k->rows = rows_at(a, 34, k->n, t);
  if (!a->ok) return fail(env, "mlpBlock: an operand lies outside the heap or is misaligned", 1);
  return 1;
}

/* mlpBlock(heap, operands): writes y = down(silu(gate(xn)) * up(xn)) (+ x with residual), xn = RMSNorm(x), and what the backward reads. */
napi_value mlp_block(napi_env env, napi_callback_info info) {
  args_t a;
  mlp_block_t k;
  if (!read_args(env, info, "mlpBlock: (ArrayBuffer, Float64Array of 35 operands) expected", 35, &a) || !mlp_block_at(env, &a, &k)) return NULL;
  const rows_t *r = &k.rows;
  const int64_t n = k.n, m = kept_count(r), h = k.hidden, f = k.inter, widest = h > f ? h : f;
  /* The products' buffer; with ends, the kept rows' x (then y: x is the residual's start), and a mask's rows. */
  float *masked = scratch((size_t)(m * widest + (r->ends ? m * (h + widest) : 0)));
  if (!masked) return fail(env, "mlpBlock: out of memory", 0), NULL;
  float *xs = masked + m * widest, *ys = xs, *mask_rows = xs + m * h;
  const float *x = gather_rows(r, k.x, xs, h);
  rms_norm_rows(x, k.norm, k.xn, k.rr, m, h, k.eps);
  const proj_t gate = kept_proj(&k.proj[0], r, mask_rows);
  proj_forward(&gate, k.xn, k.gate, 0, k.xa[0], m, masked);
  const proj_t up = kept_proj(&k.proj[1], r, mask_rows);
  proj_forward(&up, k.xn, k.up, 0, k.xa[1], m, masked);
  swiglu_forward(k.gate, k.up, k.act, k.sig, (uint64_t)(m * f));
  if (k.residual) residual_start(k.y, k.x, NULL, n * h);
  else if (r->ends) memset(k.y, 0, 4u * (size_t)(n * h));
  float *y = kept_space(r, k.y, ys);
  const proj_t down = kept_proj(&k.proj[2], r, mask_rows);
  proj_forward(&down, k.act, y, (int)k.residual, k.xa[2], m, masked);
  scatter_rows(r, ys, k.y, h);
  return NULL;
}

/* mlpBlockGrad(heap, operands): the forward's 35 (24 is dy), then 35 dx (plus dy with residual), 36-41 dA and dB of gate, up and down in turn (each -1 when not asked for). */
napi_value mlp_block_grad(napi_env env, napi_callback_info info) {
  args_t a;
  mlp_block_t k;
  if (!read_args(env, info, "mlpBlockGrad: (ArrayBuffer, Float64Array of 42 operands) expected", 42, &a) || !mlp_block_at(env, &a, &k)) return NULL;
  const rows_t *r = &k.rows;
  const int64_t n = k.n, m = kept_count(r), h = k.hidden, f = k.inter, widest = h > f ? h : f;
  float *dx = at(&a, 35, (uint64_t)(n * h), 1), *da[3], *db[3];
  adapter_grads_at(&a, 36, k.proj, 3, da, db);
  if (!a.ok) return fail(env, "mlpBlockGrad: an operand lies outside the heap or is misaligned", 1), NULL;
  /* With ends, the kept rows' dy, x and dx, and a mask's rows. */
  float *buf = scratch((size_t)(3 * m * f + m * h + m * (max_rank(k.proj, 3) + widest) + (r->ends ? m * (3 * h + widest) : 0)));
  if (!buf) return fail(env, "mlpBlockGrad: out of memory", 0), NULL;
  float *dact = buf, *dg = dact + m * f, *du = dg + m * f, *dxn = du + m * f, *tmp = dxn + m * h;
  float *dys = tmp + m * (max_rank(k.proj, 3) + widest), *xs = dys + m * h, *dxs = xs + m * h, *mask_rows = dxs + m * h;
  const float *dy = gather_rows(r, k.y, dys, h);
  const proj_t down = kept_proj(&k.proj[2], r, mask_rows);
  proj_backward(&down, dy, k.act, k.xa[2], dact, 0, da[2], db[2], m, tmp);
  swiglu_backward(dact, k.gate, k.up, k.sig, dg, du, (uint64_t)(m * f));
  const proj_t gate = kept_proj(&k.proj[0], r, mask_rows);
  proj_backward(&gate, dg, k.xn, k.xa[0], dx ? dxn : NULL, 0, da[0], db[0], m, tmp);
  const proj_t up = kept_proj(&k.proj[1], r, mask_rows);
  proj_backward(&up, du, k.xn, k.xa[1], dx ? dxn : NULL, 1, da[1], db[1], m, tmp);
  if (!dx) return NULL;
  rms_norm_rows_grad(dxn, gather_rows(r, k.x, xs, h), k.norm, k.rr, k.residual ? dy : NULL, kept_space(r, dx, dxs), m, h);
  scatter_grad(r, dxs, dx, k.residual ? k.y : NULL, h);
  return NULL;
}
