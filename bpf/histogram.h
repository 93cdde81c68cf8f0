/* Metric maps shared by every program in bpf/: their key, the log-linear bucket
 * function and the update macros. exporter/ebpf/ reads these maps generically,
 * as each program's .yaml declares them.
 *
 * Buckets are log-linear, 4 per power of two, "le" semantics: bucket i counts
 * values v with bound(i-1) < v <= bound(i), bounds 0,1,2,3,4,5,6,7,8,10,12,14,16,20,...
 * log_linear_index() is the same function as exporter/histogram.py's; the tests
 * run values through this copy in the kernel and compare.
 */
#ifndef INFPROF_HISTOGRAM_H
#define INFPROF_HISTOGRAM_H

/* struct metric_key (one key for every series of every metric of a program), the
 * ROLE_* and DIRECTION_* values of its fields and the ERR_* slots of errors[]: the
 * loader generates them from histogram.yaml, the declaration exporter/ebpf/ decodes
 * the maps with. METRIC_<name> (a metric's position in its program's .yaml) comes
 * from the loader as well. */
#include "metric_key.h"

/* A histogram bucket's observations and their exact sum (the series' _sum is the
 * sum over its buckets: one map update per observation); a counter uses count. */
struct metric_value {
    u64 count;
    u64 sum;
};

#ifndef METRIC_SERIES
#define METRIC_SERIES 16384 /* series of all metrics of a program: ports x roles x buckets x pods */
#endif
/* Per CPU: no atomics and no cache line bouncing between cores on the hot path;
 * not preallocated, since series are few and created once. */
BPF_F_TABLE("percpu_hash", struct metric_key, struct metric_value, metrics, METRIC_SERIES, BPF_F_NO_PREALLOC);
BPF_ARRAY(errors, u64, ERR_SLOTS);

static __always_inline void count_error(u32 slot)
{
    u64 *n = errors.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Number of significant bits of x (0 for 0), without loops or clz (BPF has neither). */
static __always_inline u32 bit_length(u64 x)
{
    u32 n = 0;
    if (x >> 32) { x >>= 32; n += 32; }
    if (x >> 16) { x >>= 16; n += 16; }
    if (x >> 8)  { x >>= 8;  n += 8; }
    if (x >> 4)  { x >>= 4;  n += 4; }
    if (x >> 2)  { x >>= 2;  n += 2; }
    if (x >> 1)  { x >>= 1;  n += 1; }
    return n + (u32)x;
}

/* Index of the smallest bound >= v: ceil, so a value on a bound lands in its le. */
static __always_inline u32 log_linear_index(u64 v)
{
    if (v <= 4)
        return (u32)v;
    u64 x = v - 1;                  /* bound(i) = (5 + k) << e covers x = bound - 1 */
    u32 e = bit_length(x) - 3;      /* x >= 4: the top three bits of x are 1kk */
    u32 m = (u32)(x >> e);          /* 4..7 */
    return 5 + 4 * e + (m - 4);
}

static __always_inline struct metric_value *metric_series(struct metric_key *k)
{
    struct metric_value zero = {};
    struct metric_value *v = metrics.lookup_or_try_init(k, &zero);
    if (!v)
        count_error(ERR_MAP_FULL); /* a refused insert is counted, never fatal */
    return v;
}

/* Add n to the counter at k. */
static __always_inline void metric_add(struct metric_key *k, u64 n)
{
    struct metric_value *v = metric_series(k);
    if (v)
        v->count += n;
}

/* One observation of x in the histogram at k: its bucket's count and sum. */
static __always_inline void hist_observe(struct metric_key *k, u64 x)
{
    k->bucket = log_linear_index(x);
    struct metric_value *v = metric_series(k);
    if (v) {
        v->count += 1;
        v->sum += x;
    }
}

#endif
