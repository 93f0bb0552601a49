/* edgeseq's fused Mamba kernels for ONNX Runtime's CPU provider, as custom ops (domain "edgeseq.ops").
 *
 * SelectiveStateUpdate (the step graph), float32:
 *   inputs   dt [B, Di] (dt_proj's output with its bias, before softplus), x [B, Di], A [Di, N] (negative),
 *            Bm [B, N], C [B, N], D [Di], h [B, Di, N], z [B, Di] (the gate)
 *   outputs  y [B, Di] = (C . h' + D * x) * silu(z),   h' [B, Di, N] = exp(delta * A) * h + delta * x * Bm,
 *            delta = softplus(dt) (threshold 20, as torch)
 * SelectiveScan (the prefill graph), float32: the same recurrence over L positions, delta given
 *   inputs   delta [B, L, Di] (after softplus), x [B, L, Di], A [Di, N], Bm [B, L, N], C [B, L, N], D [Di], h0 [B, Di, N],
 *            z [B, L, Di]
 *   outputs  y [B, L, Di] (gated), h_L [B, Di, N]
 * CausalConv1dStep (the step graph), float32: the depthwise causal conv of one position, then silu
 *   inputs   state [B, Di, K-1] (the last K-1 inputs), x [B, Di], w [Di, K], bias [Di]
 *   outputs  silu(w . [state, x] + bias) [B, Di], the shifted window [B, Di, K-1]
 * CausalConv1d (the prefill graph), float32: the same conv over L positions, in the layout the scan reads
 *   inputs   state [B, Di, K-1], x [B, L, Di], w [Di, K], bias [Di]
 *   outputs  silu(conv) [B, L, Di], the last K-1 inputs of [state, x] [B, Di, K-1] (the next state)
 *   Each output position sums its K products in the step op's order, so a prompt and the same tokens
 *   stepped one at a time give the conv the same bits.
 * Each replaces ~36 graph kernels per layer (the update) or the unrolled scan (~80 per layer for 32
 * positions): one pass over the state, a channel's state row kept in registers across positions.
 *
 * Arithmetic: IEEE float32 multiplies and adds in a fixed order (built with -ffp-contract=off, so no
 * fused multiply-add), exp and log of their own (below). The x86-64 build carries an AVX2 and a
 * baseline (SSE2) version of each loop, picked once when the library is registered; both do the same
 * operations on the same lanes, so every x86-64 CPU computes the same bits. The loops are compiled
 * once per ISA by including this file into itself (EDGESEQ_LOOPS_PASS below), every function of a
 * pass, the inlined vector helpers too, built for that pass's target. With N = 16 and K = 4 passed
 * as constants and whole vectors loaded inline, a 130m layer's step update takes 34 us and its conv
 * 4 us; the earlier target_clones build, N and K at run time and a memcpy call per vector, 61 and 15.
 *
 * Built against ONNX Runtime's C API without its headers: the API's function table only grows, so
 * the indices below (version 13 of the table, the one targets/ort_capi.py counts from) hold for every
 * later library, and a custom op that says version 13 is read only up to the fields that version had.
 * export/fused_ops.py builds it into each artifact that uses it (`edgeseq export --fused-ops`).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef EDGESEQ_LOOPS_PASS
#if defined(__x86_64__) && !defined(EDGESEQ_NO_CLONES)
#define EDGESEQ_AVX2_PASS 1
#endif

typedef void OrtStatus;
typedef struct { const void **(*GetApi)(uint32_t version); const char *(*GetVersionString)(void); } ApiBase;

enum { CREATE_DOMAIN = 26, DOMAIN_ADD = 27, ADD_DOMAIN = 28, TENSOR_DATA = 51, DIMS_COUNT = 61, DIMS = 62,
       TYPE_AND_SHAPE = 65, CONTEXT_INPUT = 90, CONTEXT_OUTPUT = 91, RELEASE_SHAPE = 99 };
static const void **api;
#define CALL(index, type, ...) (((type)api[index])(__VA_ARGS__))
typedef OrtStatus *(*fn_create_domain)(const char *, void **);
typedef OrtStatus *(*fn_domain_add)(void *, const void *);
typedef OrtStatus *(*fn_add_domain)(void *, void *);
typedef OrtStatus *(*fn_data)(void *, void **);
typedef OrtStatus *(*fn_dims_count)(const void *, size_t *);
typedef OrtStatus *(*fn_dims)(const void *, int64_t *, size_t);
typedef OrtStatus *(*fn_type_shape)(const void *, void **);
typedef OrtStatus *(*fn_input)(const void *, size_t, const void **);
typedef OrtStatus *(*fn_output)(void *, size_t, const int64_t *, size_t, void **);
typedef void (*fn_release)(void *);

typedef struct CustomOp {  /* struct OrtCustomOp as of API version 13 */
  uint32_t version;
  void *(*CreateKernel)(const struct CustomOp *, const void *api, const void *info);
  const char *(*GetName)(const struct CustomOp *);
  const char *(*GetExecutionProviderType)(const struct CustomOp *);
  int (*GetInputType)(const struct CustomOp *, size_t);
  size_t (*GetInputTypeCount)(const struct CustomOp *);
  int (*GetOutputType)(const struct CustomOp *, size_t);
  size_t (*GetOutputTypeCount)(const struct CustomOp *);
  void (*KernelCompute)(void *kernel, void *context);
  void (*KernelDestroy)(void *kernel);
  int (*GetInputCharacteristic)(const struct CustomOp *, size_t);
  int (*GetOutputCharacteristic)(const struct CustomOp *, size_t);
  int (*GetInputMemoryType)(const struct CustomOp *, size_t);
} CustomOp;


/* The loops, once per ISA: this file included into itself with EDGESEQ_LOOPS_PASS defined; LOOP(name)
 * names a pass's copy of each function (name_base, name_avx2) */
#define EDGESEQ_LOOPS_PASS 1
#define LOOP(name) name##_base
#include "edgeseq_ops.c"  /* this file (found beside itself), the pass below */
#undef LOOP
#ifdef EDGESEQ_AVX2_PASS
/* a target pragma over the whole pass, the vector types and inlined helpers included, rather than a
 * per-function attribute on the outer loops (target_clones, before: update 61 us; this pass with the
 * constants and inline loads below: 34 us) */
#define LOOP(name) name##_avx2
#if defined(__clang__)
#pragma clang attribute push (__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#include "edgeseq_ops.c"  /* this file (found beside itself), the pass below */
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef LOOP
#endif

/* the pass this CPU runs, chosen when the library is registered */
static __typeof__(update_base) *update_loop = update_base;
static __typeof__(scan_base) *scan_loop = scan_base;
static __typeof__(conv_step_base) *conv_step_loop = conv_step_base;
static __typeof__(conv_rows_base) *conv_rows_loop = conv_rows_base;

static const char *loops_isa = "baseline";

static void choose_loops(void) {
#ifdef EDGESEQ_AVX2_PASS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) {
    update_loop = update_avx2;
    scan_loop = scan_avx2;
    conv_step_loop = conv_step_avx2;
    conv_rows_loop = conv_rows_avx2;
    loops_isa = "avx2";
  }
#endif
}

/* which pass this CPU runs ("avx2" or "baseline"): for tests and diagnostics, not for ONNX Runtime */
const char *EdgeseqOpsLoops(void) {
  choose_loops();
  return loops_isa;
}

static int shape_of(const void *value, int64_t *dims, size_t capacity) {
  void *info;
  size_t count = 0;
  CALL(TYPE_AND_SHAPE, fn_type_shape, value, &info);
  CALL(DIMS_COUNT, fn_dims_count, info, &count);
  if (count <= capacity) CALL(DIMS, fn_dims, info, dims, count);
  CALL(RELEASE_SHAPE, fn_release, info);
  return count <= capacity ? (int)count : -1;
}

/* inputs and their shapes; 0 when the rank of each is what the op expects */
static int read_inputs(void *context, size_t count, const int *ranks, const float **p, int64_t (*dims)[4]) {
  for (size_t i = 0; i < count; i++) {
    const void *value;
    CALL(CONTEXT_INPUT, fn_input, context, i, &value);
    CALL(TENSOR_DATA, fn_data, (void *)value, (void **)&p[i]);
    if (shape_of(value, dims[i], 4) != ranks[i]) return -1;
  }
  return 0;
}

static float *output(void *context, size_t index, const int64_t *dims, size_t rank) {
  void *value;
  float *data;
  CALL(CONTEXT_OUTPUT, fn_output, context, index, dims, rank, &value);
  CALL(TENSOR_DATA, fn_data, value, (void **)&data);
  return data;
}

static void fill_nan(float *p, int64_t count) { for (int64_t i = 0; i < count; i++) p[i] = NAN; }

/* Work split over ONNX Runtime's intra-op threads (KernelContext_ParallelFor, API version 17; index 274
 * of the table, counted from the header and checked against GetBuildInfoString's 254): one task per
 * (batch row, block of channels). Below PARALLEL_MIN_WORK state elements a call runs on its own thread.
 * A 130m decode step's 1536 x 16 state is split: its update reads and writes a state the weights'
 * stream has pushed out of the caches, and two threads move it faster (2-thread 130m step 6-10%
 * faster on the Zen 3 VM, 8 and 4 bits, interleaved runs; at the old threshold of 65,536 it ran
 * on one). */
enum { PARALLEL_FOR = 274, CHANNEL_BLOCK = 128, PARALLEL_MIN_WORK = 16384 };
typedef OrtStatus *(*fn_parallel_for)(const void *, void (*)(void *, size_t), size_t, size_t, void *);
static fn_parallel_for parallel_for;

typedef struct {
  int scan;
  int64_t blocks, length, d_inner, n_state;
  const float *p[8], *b_rows, *c_rows;
  float *y, *h_out;
} Work;

static void run_block(void *data, size_t task) {
  const Work *w = data;
  const int64_t b = (int64_t)task / w->blocks, d0 = (int64_t)task % w->blocks * CHANNEL_BLOCK;
  const int64_t d1 = d0 + CHANNEL_BLOCK < w->d_inner ? d0 + CHANNEL_BLOCK : w->d_inner;
  if (w->scan) {
    const int64_t rows = w->length * ((w->n_state + 7) / 8 * 8);
    scan_loop(b, d0, d1, w->length, w->d_inner, w->n_state, w->p[0], w->p[1], w->p[2], w->b_rows + b * rows,
         w->c_rows + b * rows, w->p[5], w->p[6], w->p[7], w->y, w->h_out);
  } else {
    update_loop(b, d0, d1, w->d_inner, w->n_state, w->p[0], w->p[1], w->p[2], w->p[3], w->p[4], w->p[5], w->p[6],
           w->p[7], w->y, w->h_out);
  }
}

static void run_all(void *context, Work *w, int64_t batch, int64_t work) {
  w->blocks = (w->d_inner + CHANNEL_BLOCK - 1) / CHANNEL_BLOCK;
  const size_t tasks = (size_t)(batch * w->blocks);
  if (parallel_for && work >= PARALLEL_MIN_WORK && tasks > 1) {
    OrtStatus *status = parallel_for(context, run_block, tasks, 0, w);
    if (!status) return;  /* else (an error from the pool): run it here */
  }
  for (size_t task = 0; task < tasks; task++) run_block(w, task);
}

static void update_compute(void *kernel, void *context) {
  (void)kernel;
  static const int ranks[8] = {2, 2, 2, 2, 2, 1, 3, 2};
  const float *p[8];
  int64_t dims[8][4];
  const int bad = read_inputs(context, 8, ranks, p, dims);
  const int64_t batch = dims[6][0], d_inner = dims[6][1], n_state = dims[6][2];
  float *y = output(context, 0, dims[1], 2), *h_new = output(context, 1, dims[6], 3);
  if (bad || dims[0][0] != batch || dims[0][1] != d_inner || dims[1][0] != batch || dims[1][1] != d_inner ||
      dims[2][0] != d_inner || dims[2][1] != n_state || dims[3][0] != batch || dims[3][1] != n_state ||
      dims[4][0] != batch || dims[4][1] != n_state || dims[5][0] != d_inner || dims[7][0] != batch ||
      dims[7][1] != d_inner) {
    /* shapes that contradict each other: a graph edgeseq did not write. NaN, so that any check fails */
    if (!bad) { fill_nan(y, dims[1][0] * dims[1][1]); fill_nan(h_new, batch * d_inner * n_state); }
    return;
  }
  Work w = {0, 0, 1, d_inner, n_state, {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]}, NULL, NULL, y, h_new};
  run_all(context, &w, batch, batch * d_inner * n_state);
}

static void scan_compute(void *kernel, void *context) {
  (void)kernel;
  static const int ranks[8] = {3, 3, 2, 3, 3, 1, 3, 3};
  const float *p[8];
  int64_t dims[8][4];
  const int bad = read_inputs(context, 8, ranks, p, dims);
  const int64_t batch = dims[6][0], d_inner = dims[6][1], n_state = dims[6][2], length = dims[1][1];
  float *y = output(context, 0, dims[1], 3), *h_out = output(context, 1, dims[6], 3);
  if (bad || dims[0][0] != batch || dims[0][1] != length || dims[0][2] != d_inner || dims[1][0] != batch ||
      dims[1][2] != d_inner || dims[2][0] != d_inner || dims[2][1] != n_state || dims[3][0] != batch ||
      dims[3][1] != length || dims[3][2] != n_state || dims[4][0] != batch || dims[4][1] != length ||
      dims[4][2] != n_state || dims[5][0] != d_inner || dims[7][0] != batch || dims[7][1] != length ||
      dims[7][2] != d_inner) {
    if (!bad) { fill_nan(y, dims[1][0] * dims[1][1] * dims[1][2]); fill_nan(h_out, batch * d_inner * n_state); }
    return;
  }
  /* B and C of every position on the heap, each row padded: a long prefill chunk would not fit a stack */
  const int64_t padded = (n_state + 7) / 8 * 8;
  float *b_rows = calloc((size_t)(batch * length * padded + 8), 4), *c_rows = calloc((size_t)(batch * length * padded + 8), 4);
  if (!b_rows || !c_rows) {
    free(b_rows); free(c_rows);
    fill_nan(y, batch * length * d_inner); fill_nan(h_out, batch * d_inner * n_state);
    return;
  }
  for (int64_t r = 0; r < batch * length; r++) {
    memcpy(b_rows + r * padded, p[3] + r * n_state, n_state * 4);
    memcpy(c_rows + r * padded, p[4] + r * n_state, n_state * 4);
  }
  Work w = {1, 0, length, d_inner, n_state, {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]}, b_rows, c_rows, y, h_out};
  run_all(context, &w, batch, batch * length * d_inner * n_state);
  free(b_rows); free(c_rows);
}

static void conv_compute(void *kernel, void *context) {
  (void)kernel;
  static const int ranks[4] = {3, 2, 2, 1};
  const float *p[4];
  int64_t dims[4][4];
  const int bad = read_inputs(context, 4, ranks, p, dims);
  const int64_t batch = dims[1][0], d_inner = dims[1][1], keep = dims[0][2], width = dims[2][1];
  float *out = output(context, 0, dims[1], 2), *state_new = output(context, 1, dims[0], 3);
  if (bad || dims[0][0] != batch || dims[0][1] != d_inner || dims[2][0] != d_inner || width != keep + 1 ||
      dims[3][0] != d_inner) {
    if (!bad) { fill_nan(out, batch * d_inner); fill_nan(state_new, dims[0][0] * dims[0][1] * keep); }
    return;
  }
  conv_step_loop(batch, d_inner, width, p[0], p[1], p[2], p[3], out, state_new);
}

static void conv_seq_compute(void *kernel, void *context) {
  (void)kernel;
  static const int ranks[4] = {3, 3, 2, 1};
  const float *p[4];
  int64_t dims[4][4];
  const int bad = read_inputs(context, 4, ranks, p, dims);
  const int64_t batch = dims[1][0], length = dims[1][1], d_inner = dims[1][2], keep = dims[0][2], width = dims[2][1];
  float *out = output(context, 0, dims[1], 3), *state_new = output(context, 1, dims[0], 3);
  const int64_t out_count = batch * length * d_inner, state_count = dims[0][0] * dims[0][1] * keep;
  if (bad || dims[0][0] != batch || dims[0][1] != d_inner || dims[2][0] != d_inner || width != keep + 1 ||
      dims[3][0] != d_inner) {
    if (!bad) { fill_nan(out, out_count); fill_nan(state_new, state_count); }
    return;
  }
  /* the weights tap-major and each row's state position-major: every inner loop runs along channels */
  float *wt = malloc((size_t)(width * d_inner) * 4), *prev = malloc((size_t)((keep > 0 ? keep : 1) * d_inner) * 4);
  if (!wt || !prev) {
    free(wt); free(prev);
    fill_nan(out, out_count); fill_nan(state_new, state_count);
    return;
  }
  for (int64_t d = 0; d < d_inner; d++)
    for (int64_t j = 0; j < width; j++) wt[j * d_inner + d] = p[2][d * width + j];
  for (int64_t b = 0; b < batch; b++) {
    const float *state = p[0] + b * d_inner * keep, *x = p[1] + b * length * d_inner;
    for (int64_t d = 0; d < d_inner; d++)
      for (int64_t j = 0; j < keep; j++) prev[j * d_inner + d] = state[d * keep + j];
    conv_rows_loop(length, d_inner, width, prev, x, wt, p[3], out + b * length * d_inner);
    /* the next state: inputs L .. L+K-2 of [state, x] (some still from the old state when L < K-1) */
    for (int64_t j = 0; j < keep; j++) {
      const int64_t src = length + j;
      const float *row = src < keep ? prev + src * d_inner : x + (src - keep) * d_inner;
      for (int64_t d = 0; d < d_inner; d++) state_new[(b * d_inner + d) * keep + j] = row[d];
    }
  }
  free(wt); free(prev);
}

static void *create_kernel(const CustomOp *op, const void *api_, const void *info) { (void)op; (void)api_; (void)info; return (void *)1; }
static const char *update_name(const CustomOp *op) { (void)op; return "SelectiveStateUpdate"; }
static const char *scan_name(const CustomOp *op) { (void)op; return "SelectiveScan"; }
static const char *conv_name(const CustomOp *op) { (void)op; return "CausalConv1dStep"; }
static const char *conv_seq_name(const CustomOp *op) { (void)op; return "CausalConv1d"; }
static const char *provider(const CustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int float_type(const CustomOp *op, size_t i) { (void)op; (void)i; return 1; /* FLOAT */ }
static size_t inputs(const CustomOp *op);
static size_t outputs(const CustomOp *op) { (void)op; return 2; }
static void destroy(void *kernel) { (void)kernel; }
static int required(const CustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int default_memory(const CustomOp *op, size_t i) { (void)op; (void)i; return 0; }

static CustomOp update_op = {13, create_kernel, update_name, provider, float_type, inputs, float_type, outputs,
                             update_compute, destroy, required, required, default_memory};
static CustomOp scan_op = {13, create_kernel, scan_name, provider, float_type, inputs, float_type, outputs,
                           scan_compute, destroy, required, required, default_memory};
static CustomOp conv_op = {13, create_kernel, conv_name, provider, float_type, inputs, float_type, outputs,
                           conv_compute, destroy, required, required, default_memory};
static CustomOp conv_seq_op = {13, create_kernel, conv_seq_name, provider, float_type, inputs, float_type, outputs,
                               conv_seq_compute, destroy, required, required, default_memory};
static size_t inputs(const CustomOp *op) { return op == &conv_op || op == &conv_seq_op ? 4 : 8; }

/* what ONNX Runtime's RegisterCustomOpsLibrary (and edgeseq's C API binding) call */
OrtStatus *RegisterCustomOps(void *options, const ApiBase *base) {
  api = base->GetApi(13);
  choose_loops();
  const void **api17 = base->GetApi(17);  /* NULL from a library older than ONNX Runtime 1.17: serial */
  parallel_for = api17 ? (fn_parallel_for)api17[PARALLEL_FOR] : NULL;
  void *domain;
  OrtStatus *status = CALL(CREATE_DOMAIN, fn_create_domain, "edgeseq.ops", &domain);
  if (status) return status;
  if ((status = CALL(DOMAIN_ADD, fn_domain_add, domain, &update_op))) return status;
  if ((status = CALL(DOMAIN_ADD, fn_domain_add, domain, &scan_op))) return status;
  if ((status = CALL(DOMAIN_ADD, fn_domain_add, domain, &conv_op))) return status;
  if ((status = CALL(DOMAIN_ADD, fn_domain_add, domain, &conv_seq_op))) return status;
  return CALL(ADD_DOMAIN, fn_add_domain, options, domain);
}

#else  /* EDGESEQ_LOOPS_PASS: the vector helpers and the loops, compiled for one ISA */
#define v8f LOOP(v8f)
#define v8i LOOP(v8i)
#define splat LOOP(splat)
#define pick LOOP(pick)
#define load8 LOOP(load8)
#define store8 LOOP(store8)
#define load_n LOOP(load_n)
#define store_n LOOP(store_n)
#define exp8 LOOP(exp8)
#define log8 LOOP(log8)
#define softplus8 LOOP(softplus8)
#define silu8 LOOP(silu8)
#define gate LOOP(gate)
#define row_update LOOP(row_update)
#define update LOOP(update)
#define scan LOOP(scan)
#define silu_row LOOP(silu_row)
#define conv_step LOOP(conv_step)
#define conv_rows LOOP(conv_rows)
#define update_body LOOP(update_body)
#define scan_body LOOP(scan_body)
#define conv_step_body LOOP(conv_step_body)
#define conv_rows_body LOOP(conv_rows_body)

/* 8 float lanes (GCC/Clang vector extensions: one AVX2 register, two SSE2 or NEON registers) */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) v8f splat(float v) { return (v8f){v, v, v, v, v, v, v, v}; }
static inline __attribute__((always_inline)) v8f pick(v8i mask, v8f a, v8f b) { return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask)); }

static inline __attribute__((always_inline)) v8f load8(const float *p) { v8f v; memcpy(&v, p, 32); return v; }
static inline __attribute__((always_inline)) void store8(float *p, v8f v) { memcpy(p, &v, 32); }
/* the first n lanes (n < 8: the rest zero) and back: whole vectors inline, only a tail through a
 * memcpy call (a variable-length memcpy per vector cost a 130m layer's conv and gate ~5 us) */
static inline __attribute__((always_inline)) v8f load_n(const float *p, int64_t n) {
  if (n >= 8) return load8(p);
  v8f v = splat(0.0f);
  memcpy(&v, p, (size_t)n * 4);
  return v;
}
static inline __attribute__((always_inline)) void store_n(float *p, v8f v, int64_t n) {
  if (n >= 8) store8(p, v);
  else memcpy(p, &v, (size_t)n * 4);
}

/* exp, inputs clamped to [-87, 88] (e^88 < FLT_MAX): 2^k * p(r), r = x - k ln2 in
 * [-ln2/2, ln2/2], k rounded by the 1.5 * 2^23 shift, p of degree 6 (Taylor coefficients; relative
 * error ~2e-7). Inputs below -87 give e^-87: a decay exp(delta * A) in (0, 1] only ever stands in for
 * an underflow there. */
static inline __attribute__((always_inline)) v8f exp8(v8f x) {
  x = pick(x < splat(-87.0f), splat(-87.0f), x);
  x = pick(x > splat(88.0f), splat(88.0f), x);  /* silu of a very negative v: e^88 stands in for overflow */
  const v8f shift = splat(12582912.0f);  /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
  v8f k = (x * splat(1.44269504088896341f) + shift) - shift;
  v8f r = x - k * splat(0.693145751953125f) - k * splat(1.428606765330187045e-6f);
  v8f p = splat(0.0013888889f);
  p = p * r + splat(0.008333334f);
  p = p * r + splat(0.041666668f);
  p = p * r + splat(0.16666667f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  return (v8f)((v8i)p + (__builtin_convertvector(k, v8i) << 23));
}

/* log for finite w >= 1: w = m * 2^e, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
 * |s| < 0.172, series to s^9 (error below float rounding) */
static inline __attribute__((always_inline)) v8f log8(v8f w) {
  v8i bits = (v8i)w;
  v8i e = ((bits >> 23) & 0xff) - 127;
  v8f m = (v8f)((bits & 0x007fffff) | 0x3f800000);  /* [1, 2) */
  v8i big = m > splat(1.41421356f);
  m = pick(big, m * splat(0.5f), m);
  e = e - big;  /* big is -1 where set */
  v8f s = (m - splat(1.0f)) / (m + splat(1.0f)), s2 = s * s;
  v8f series = s2 * (splat(1.0f / 3) + s2 * (splat(1.0f / 5) + s2 * (splat(1.0f / 7) + s2 * splat(1.0f / 9))));
  return __builtin_convertvector(e, v8f) * splat(0.693147180559945f) + splat(2.0f) * (s + s * series);
}

/* softplus, threshold 20 as torch: v above it, else log1p(e^v) with log1p(u) as log(w) * u / (w - 1),
 * w = 1 + u (where w rounds to 1, u itself): within 2.4e-7 relative of float64 for v > -87 */
static inline __attribute__((always_inline)) v8f softplus8(v8f v) {
  v8i over = v > splat(20.0f);
  v8f u = exp8(pick(over, splat(20.0f), v));
  v8f w = u + splat(1.0f), wm1 = w - splat(1.0f);
  v8i tiny = wm1 == splat(0.0f);
  v8f r = log8(w) * (u / pick(tiny, splat(1.0f), wm1));
  return pick(over, v, pick(tiny, u, r));
}

/* silu(v) = v / (1 + e^-v) */
static inline __attribute__((always_inline)) v8f silu8(v8f v) { return v / (splat(1.0f) + exp8(-v)); }

/* y[0:n] *= silu(z[0:n]) (the gate), 8 at a time with a padded tail */
static inline __attribute__((always_inline)) void gate(float *y, const float *z, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) store_n(y + i, load_n(y + i, n - i) * silu8(load_n(z + i, n - i)), n - i);
}

/* one channel's state row over its N states: h' <- exp(delta * a) * h + dx * b, returns sum(h' * c).
 * N a multiple of 8, or rows padded by the caller's copies (pad lanes: a = h = b = c = 0). */
static inline __attribute__((always_inline)) float row_update(const float *h, float *h_new, const float *a, const float *b,
                                                              const float *c, float delta, float dx, int64_t padded) {
  v8f acc = splat(0.0f);
  for (int64_t n = 0; n < padded; n += 8) {
    const v8f hn = exp8(splat(delta) * load8(a + n)) * load8(h + n) + splat(dx) * load8(b + n);
    store8(h_new + n, hn);
    acc += hn * load8(c + n);
  }
  float sum = 0.0f;
  for (int k = 0; k < 8; k++) sum += acc[k];
  return sum;
}

/* channels [d0, d1) of batch row b: softplus, the state update and the gate */
static inline __attribute__((always_inline)) void update_body(int64_t b, int64_t d0, int64_t d1, int64_t d_inner, int64_t n_state, const float *dt_in,
                              const float *x, const float *A, const float *Bm, const float *C, const float *D,
                              const float *h, const float *z, float *y, float *h_new) {
  const int64_t padded = (n_state + 7) / 8 * 8, span = d1 - d0;
  float dt_all[span + 8], a_row[padded], b_row[padded], c_row[padded], h_row[padded];
  memset(a_row, 0, sizeof a_row); memset(b_row, 0, sizeof b_row); memset(c_row, 0, sizeof c_row);
  memset(h_row, 0, sizeof h_row);
  /* softplus of every channel first: independent vectors, so their long exp/log/divide chains
   * overlap (inside the channel loop they serialize: one 1536 x 16 layer 37 us instead of 21) */
  for (int64_t d = 0; d < span; d += 8) store8(dt_all + d, softplus8(load_n(dt_in + b * d_inner + d0 + d, span - d)));
  memcpy(b_row, Bm + b * n_state, n_state * 4);
  memcpy(c_row, C + b * n_state, n_state * 4);
  for (int64_t d = d0; d < d1; d++) {
    const float xv = x[b * d_inner + d], delta = dt_all[d - d0];
    const int64_t row = (b * d_inner + d) * n_state;
    float acc;
    if (padded == n_state) {  /* d_state a multiple of 8 (16 in every released Mamba): in place */
      acc = row_update(h + row, h_new + row, A + d * n_state, b_row, c_row, delta, delta * xv, padded);
    } else {
      memcpy(a_row, A + d * n_state, n_state * 4);
      memcpy(h_row, h + row, n_state * 4);
      acc = row_update(h_row, h_row, a_row, b_row, c_row, delta, delta * xv, padded);
      memcpy(h_new + row, h_row, n_state * 4);
    }
    y[b * d_inner + d] = acc + D[d] * xv;
  }
  gate(y + b * d_inner + d0, z + b * d_inner + d0, span);
}

/* channels [d0, d1) of batch row b over all L positions; b_rows, c_rows: B and C of every position of
 * that row, each padded to a multiple of 8. Position by position over the block's channels (their
 * state, 128 x 16 floats, stays in L1): successive channels' exp chains are independent and overlap,
 * where a channel's own positions would chain through its state (3x slower, measured). */
static inline __attribute__((always_inline)) void scan_body(int64_t b, int64_t d0, int64_t d1, int64_t length, int64_t d_inner, int64_t n_state,
                            const float *delta, const float *x, const float *A, const float *b_rows,
                            const float *c_rows, const float *D, const float *h0, const float *z, float *y,
                            float *h_out) {
  const int64_t padded = (n_state + 7) / 8 * 8, span = d1 - d0;
  float *state = h_out + (b * d_inner + d0) * n_state;  /* the block's rows, updated in place */
  memcpy(state, h0 + (b * d_inner + d0) * n_state, (size_t)(span * n_state) * 4);
  float a_row[padded], h_row[padded];
  memset(a_row, 0, sizeof a_row); memset(h_row, 0, sizeof h_row);
  for (int64_t t = 0; t < length; t++) {
    const float *bt = b_rows + t * padded, *ct = c_rows + t * padded;
    for (int64_t d = d0; d < d1; d++) {
      const int64_t at = (b * length + t) * d_inner + d;
      const float dv = delta[at], xv = x[at];
      float *row = state + (d - d0) * n_state;
      float acc;
      if (padded == n_state) {
        acc = row_update(row, row, A + d * n_state, bt, ct, dv, dv * xv, padded);
      } else {
        memcpy(a_row, A + d * n_state, n_state * 4);
        memcpy(h_row, row, n_state * 4);
        acc = row_update(h_row, h_row, a_row, bt, ct, dv, dv * xv, padded);
        memcpy(row, h_row, n_state * 4);
      }
      y[at] = acc + D[d] * xv;
    }
    const int64_t at = (b * length + t) * d_inner + d0;
    gate(y + at, z + at, span);
  }
}

/* silu over a row, 8 lanes at a time (the tail through a zero-padded vector) */
static inline __attribute__((always_inline)) void silu_row(float *row, int64_t count) {
  for (int64_t d = 0; d < count; d += 8) store_n(row + d, silu8(load_n(row + d, count - d)), count - d);
}

/* the step's depthwise causal conv: out = silu(w[:, :K-1] . state + w[:, K-1] * x + bias), the window
 * shifted by one (state' = state[:, 1:] then x) */
static inline __attribute__((always_inline)) void conv_step_body(int64_t batch, int64_t d_inner, int64_t width, const float *state, const float *x,
                                 const float *w, const float *bias, float *out, float *state_new) {
  const int64_t keep = width - 1;
  for (int64_t b = 0; b < batch; b++) {
    for (int64_t d = 0; d < d_inner; d++) {
      const float *s = state + (b * d_inner + d) * keep, *wd = w + d * width;
      const float xv = x[b * d_inner + d];
      float acc = 0.0f;
      for (int64_t j = 0; j < keep; j++) acc += wd[j] * s[j];
      acc += wd[keep] * xv;
      out[b * d_inner + d] = acc + bias[d];
      float *sn = state_new + (b * d_inner + d) * keep;
      for (int64_t j = 0; j + 1 < keep; j++) sn[j] = s[j + 1];
      if (keep > 0) sn[keep - 1] = xv;
    }
    silu_row(out + b * d_inner, d_inner);
  }
}

/* the prefill's conv for one batch row: prev [K-1, Di] (the state, position-major), x [L, Di], wt [K, Di]
 * (the weights, tap-major); out [L, Di]. Position t sums tap j over input t + j of [prev, x], tap by
 * tap from 0 as conv_step does (then the bias, then silu) */
static inline __attribute__((always_inline)) void conv_rows_body(int64_t length, int64_t d_inner, int64_t width, const float *prev, const float *x,
                                 const float *wt, const float *bias, float *restrict out) {
  const int64_t keep = width - 1;
  for (int64_t t = 0; t < length; t++) {
    float *restrict o = out + t * d_inner;
    for (int64_t d = 0; d < d_inner; d++) o[d] = 0.0f;
    for (int64_t j = 0; j < width; j++) {
      const float *restrict row = t + j < keep ? prev + (t + j) * d_inner : x + (t + j - keep) * d_inner;
      const float *restrict wj = wt + j * d_inner;
      for (int64_t d = 0; d < d_inner; d++) o[d] += wj[d] * row[d];
    }
    for (int64_t d = 0; d < d_inner; d++) o[d] += bias[d];
    silu_row(o, d_inner);
  }
}


/* The loops' entry points. Mamba's N = 16 states and conv width K = 4 (every released checkpoint) are
 * passed as constants to a copy of each loop, which the compiler unrolls and vectorizes across
 * channels (the conv: 15 -> 4 us a 130m layer); the same operations in the same order, so the same
 * bits as the general copy, which serves every other shape. */
static void update(int64_t b, int64_t d0, int64_t d1, int64_t d_inner, int64_t n_state, const float *dt_in,
                   const float *x, const float *A, const float *Bm, const float *C, const float *D, const float *h,
                   const float *z, float *y, float *h_new) {
  if (n_state == 16) update_body(b, d0, d1, d_inner, 16, dt_in, x, A, Bm, C, D, h, z, y, h_new);
  else update_body(b, d0, d1, d_inner, n_state, dt_in, x, A, Bm, C, D, h, z, y, h_new);
}

static void scan(int64_t b, int64_t d0, int64_t d1, int64_t length, int64_t d_inner, int64_t n_state,
                 const float *delta, const float *x, const float *A, const float *b_rows, const float *c_rows,
                 const float *D, const float *h0, const float *z, float *y, float *h_out) {
  if (n_state == 16) scan_body(b, d0, d1, length, d_inner, 16, delta, x, A, b_rows, c_rows, D, h0, z, y, h_out);
  else scan_body(b, d0, d1, length, d_inner, n_state, delta, x, A, b_rows, c_rows, D, h0, z, y, h_out);
}

static void conv_step(int64_t batch, int64_t d_inner, int64_t width, const float *state, const float *x,
                      const float *w, const float *bias, float *out, float *state_new) {
  if (width == 4) conv_step_body(batch, d_inner, 4, state, x, w, bias, out, state_new);
  else conv_step_body(batch, d_inner, width, state, x, w, bias, out, state_new);
}

static void conv_rows(int64_t length, int64_t d_inner, int64_t width, const float *prev, const float *x,
                      const float *wt, const float *bias, float *restrict out) {
  if (width == 4) conv_rows_body(length, d_inner, 4, prev, x, wt, bias, out);
  else conv_rows_body(length, d_inner, width, prev, x, wt, bias, out);
}

#undef splat
#undef pick
#undef load8
#undef store8
#undef load_n
#undef store_n
#undef exp8
#undef log8
#undef softplus8
#undef silu8
#undef gate
#undef row_update
#undef update
#undef scan
#undef silu_row
#undef conv_step
#undef conv_rows
#undef update_body
#undef scan_body
#undef conv_step_body
#undef conv_rows_body
#undef v8f
#undef v8i
#endif  /* EDGESEQ_LOOPS_PASS */
