/* Fast path of the trace scanner: split a trace file's bytes into objects at
 * `{"id":` (the same rule as records.py), decode the common object shapes and
 * merge them by id into open traces with a FIFO window (the same rule as
 * assembly.MergeWindow). Anything unusual -- escapes, non-ASCII, unknown keys,
 * unknown timestamp names, odd numbers -- is handed back to Python, which
 * decodes it with the reference code and injects the result, so both paths
 * count exactly the same. Knows nothing of Triton's names: the column names
 * and which of them repeat are given by Python (exporter/stages.py, whose
 * merge_stamp() is the rule followed here). Also home of exclusive(), the
 * timeline's per-row sweep. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#define MAX_COLS 32
#define MAX_NAME 256

typedef struct {
    int64_t id;
    int64_t parent;     /* -1: none */
    int32_t hdr;        /* index into the header table, -1: no header seen */
    PyObject *rid;      /* owned, or NULL */
    int64_t stamps[MAX_COLS];
    int64_t *ext;       /* (code, ns) pairs: occurrences of a name repeated > 2 times, custom activities */
    Py_ssize_t ext_n, ext_cap;
} Slot;

typedef struct {
    PyObject_HEAD
    int ncols;          /* columns of a row */
    int nnames;         /* the first nnames columns are names a file can hold */
    char *names[MAX_COLS];
    Py_ssize_t name_len[MAX_COLS];
    int first_col[MAX_COLS], count_col[MAX_COLS]; /* of a repeated name; -1: not repeated */
    Py_ssize_t window;
    /* FIFO ring of open slots, in order of first appearance */
    Slot *ring;
    Py_ssize_t head, count;
    /* open addressing: id -> ring index, -1 empty */
    int64_t *hkeys;
    Py_ssize_t *hvals;
    Py_ssize_t hcap;
    /* finished traces */
    int64_t *out_ids, *out_parents, *out_stamps;
    int32_t *out_hdr;
    Py_ssize_t out_n, out_cap;
    int64_t *out_ext;   /* (row, code, ns) triples of the finished rows */
    Py_ssize_t out_ext_n, out_ext_cap;
    PyObject *out_rids;
    PyObject *hdr_index, *hdr_list; /* (model, version) -> index, and the table */
    Py_ssize_t objects; /* objects decoded on the fast path */
    int64_t last_id;    /* objects of one trace come together: skip the hash for a repeat */
    Slot *last_slot;
    /* the request model of each finished trace (set_model; see derive()), out_width int64 a row */
    int model_set;
    struct Model *model;
    int64_t *out_model;
    Py_ssize_t out_model_cap;
} Scanner;

/* Which columns the request model reads, given by Python (stages.scan_model()). */
#define MAX_SPANS 24
#define MAX_SEGS 16
typedef struct Model {
    int nspans, span_a[MAX_SPANS], span_b[MAX_SPANS];
    int arrival[3];
    int http_send_start, http_send_end, grpc_send_start, grpc_send_end;
    int http_send_end_first, grpc_send_end_first;
    int done, done_first, released, queue_start;
    int ncompute, compute[MAX_COLS], nhttp, http[MAX_COLS], ngrpc, grpc[MAX_COLS], ncount, count[MAX_COLS];
    int k, seg_kind[MAX_SEGS], seg_a[MAX_SEGS], seg_b[MAX_SEGS];
    int64_t max_span;
    int width;
} Model;
enum { SEG_SPAN = 0, SEG_SEND = 1, SEG_BETWEEN = 2, SEG_UNCOMPUTED = 3 };
/* F_EXACT: a streaming row whose segments and gaps model_rows computed with every occurrence */
enum { F_TIMED = 1, F_FRONTEND = 2, F_STREAMING = 4, F_EXACT = 8 };
enum { O_ANSWERED = 0, O_CANCELLED = 1, O_CACHE_HIT = 2 };

static inline uint64_t hash64(int64_t k) {
    uint64_t x = (uint64_t)k;
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
    return x;
}

static Py_ssize_t h_find(Scanner *s, int64_t id) {
    Py_ssize_t mask = s->hcap - 1, i = (Py_ssize_t)(hash64(id) & (uint64_t)mask);
    while (s->hvals[i] >= 0) {
        if (s->hkeys[i] == id) return i;
        i = (i + 1) & mask;
    }
    return -1 - i; /* free position, encoded */
}

static void h_delete(Scanner *s, Py_ssize_t i) {
    Py_ssize_t mask = s->hcap - 1, j = i;
    s->hvals[i] = -1;
    for (;;) {
        j = (j + 1) & mask;
        if (s->hvals[j] < 0) return;
        Py_ssize_t k = (Py_ssize_t)(hash64(s->hkeys[j]) & (uint64_t)mask);
        /* move j back to i if its home k is not cyclically in (i, j] */
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            s->hkeys[i] = s->hkeys[j];
            s->hvals[i] = s->hvals[j];
            s->hvals[j] = -1;
            i = j;
        }
    }
}

static int out_grow(Scanner *s) {
    if (s->out_n < s->out_cap) return 0;
    Py_ssize_t cap = s->out_cap ? s->out_cap * 2 : 4096;
    int64_t *a = PyMem_Realloc(s->out_ids, cap * sizeof(int64_t));
    if (!a) return -1;
    s->out_ids = a;
    a = PyMem_Realloc(s->out_parents, cap * sizeof(int64_t));
    if (!a) return -1;
    s->out_parents = a;
    a = PyMem_Realloc(s->out_stamps, cap * s->ncols * sizeof(int64_t));
    if (!a) return -1;
    s->out_stamps = a;
    int32_t *h = PyMem_Realloc(s->out_hdr, cap * sizeof(int32_t));
    if (!h) return -1;
    s->out_hdr = h;
    s->out_cap = cap;
    return 0;
}

static int push_ext(Slot *t, int64_t code, int64_t ns) {
    if (t->ext_n == t->ext_cap) {
        Py_ssize_t cap = t->ext_cap ? t->ext_cap * 2 : 8;
        int64_t *a = PyMem_Realloc(t->ext, cap * 2 * sizeof(int64_t));
        if (!a) { PyErr_NoMemory(); return -1; }
        t->ext = a; t->ext_cap = cap;
    }
    t->ext[2 * t->ext_n] = code;
    t->ext[2 * t->ext_n + 1] = ns;
    t->ext_n++;
    return 0;
}

/* One timestamp into an open trace: stages.merge_stamp's rule. 0 ns means not captured. */
static int set_stamp(Scanner *s, Slot *t, int col, int64_t ns) {
    if (ns == 0) return 0;
    int fc = s->first_col[col];
    if (fc < 0) { t->stamps[col] = ns; return 0; }
    int cc = s->count_col[col];
    int64_t count = t->stamps[cc] < 0 ? 0 : t->stamps[cc];
    if (count == 0) {
        t->stamps[col] = t->stamps[fc] = ns;
    } else {
        int64_t first = t->stamps[fc], last = t->stamps[col];
        if (count == 2 && (push_ext(t, col, first) < 0 || push_ext(t, col, last) < 0)) return -1;
        if (count >= 2 && push_ext(t, col, ns) < 0) return -1;
        if (ns < first) t->stamps[fc] = ns;
        if (ns > last) t->stamps[col] = ns;
    }
    t->stamps[cc] = count + 1;
    return 0;
}

/* Per interval (a[j], b[j]) of k in priority order, the time of [L, H] it owns (lowest j wins
 * where they overlap), o[k] the time none covers: stages.exclusive_reference's rule. */
static void sweep(const int64_t *a_in, const int64_t *b_in, int k, int64_t L, int64_t H, int64_t *o) {
    int64_t a[MAX_SEGS], b[MAX_SEGS], pts[2 * MAX_SEGS + 2];
    int seg[MAX_SEGS], nv = 0, np_ = 0;
    for (int j = 0; j <= k; j++) o[j] = 0;
    if (H <= L) return;
    for (int j = 0; j < k; j++) { /* the non-empty intervals that meet [L, H], in priority order */
        int64_t x = a_in[j], y = b_in[j];
        if (x < 0 || y <= x || y <= L || x >= H) continue;
        a[nv] = x < L ? L : x;
        b[nv] = y > H ? H : y;
        seg[nv++] = j;
    }
    if (nv == 0) { o[k] = H - L; return; }
    pts[np_++] = L; pts[np_++] = H;
    for (int i = 0; i < nv; i++) { pts[np_++] = a[i]; pts[np_++] = b[i]; }
    for (int i = 1; i < np_; i++) { /* insertion sort: a handful of points */
        int64_t v = pts[i];
        int j = i - 1;
        while (j >= 0 && pts[j] > v) { pts[j + 1] = pts[j]; j--; }
        pts[j + 1] = v;
    }
    for (int i = 0; i + 1 < np_; i++) {
        int64_t x = pts[i], y = pts[i + 1];
        if (y <= x) continue;
        int owner = k;
        for (int v = 0; v < nv; v++)
            if (a[v] <= x && y <= b[v]) { owner = seg[v]; break; }
        o[owner] += y - x;
    }
}

static inline int any_present(const int64_t *st, const int *cols, int n) {
    for (int i = 0; i < n; i++) if (st[cols[i]] >= 0) return 1;
    return 0;
}

static inline int64_t max2(int64_t a, int64_t b) { return a > b ? a : b; }

/* The request model of one trace (stages.anatomy's rules, which stay the reference): per span its
 * duration (-1: absent or not observed), end_to_end, first_response, the outcome, negative and
 * implausible spans, flags, arrival, end, then the exclusive segments (streaming rows: redone by
 * Python with every occurrence). Columns: [spans..., e2e, first, outcome, neg, impl, flags,
 * arrival, end, seg 0..k]. */
static void derive(const Model *m, const int64_t *st, int64_t *o) {
    int64_t neg = 0, impl = 0;
    for (int i = 0; i < m->nspans; i++) {
        int64_t a = st[m->span_a[i]], b = st[m->span_b[i]], d = b - a;
        o[i] = -1;
        if (a < 0 || b < 0) continue;
        if (d < 0) { neg++; continue; }
        if (d > m->max_span) { impl++; continue; }
        o[i] = d;
    }
    int http = any_present(st, m->http, m->nhttp);
    int frontend = http || any_present(st, m->grpc, m->ngrpc);
    int sent = st[m->http_send_start] >= 0 || st[m->http_send_end] >= 0 || st[m->grpc_send_start] >= 0
               || st[m->grpc_send_end] >= 0;
    int64_t done = st[m->done], released = st[m->released];
    int outcome = O_ANSWERED;
    int computed = any_present(st, m->compute, m->ncompute);
    if (frontend && !(sent || (http && done >= 0))) outcome = O_CANCELLED;
    else if (st[m->queue_start] >= 0 && !computed) outcome = O_CACHE_HIT;
    int64_t arrival = -1;
    for (int i = 0; i < 3 && arrival < 0; i++) arrival = st[m->arrival[i]];
    if (outcome == O_CANCELLED) arrival = -1;
    int64_t send_end = max2(st[m->http_send_end], st[m->grpc_send_end]);
    int64_t end = max2(send_end, done);
    if (end < 0) end = released;
    int64_t first_send = st[m->http_send_end_first] >= 0 ? st[m->http_send_end_first] : st[m->grpc_send_end_first];
    int64_t first = send_end >= 0 ? first_send : (done >= 0 ? st[m->done_first] : released);
    int n = m->nspans;
    int64_t e2e = -1, fr = -1;
    if (arrival >= 0 && end >= 0) {
        int64_t d = end - arrival;
        if (d < 0) neg++; else if (d > m->max_span) impl++; else e2e = d;
    }
    if (arrival >= 0 && first >= 0) {
        int64_t d = first - arrival;
        if (d < 0) neg++; else if (d > m->max_span) impl++; else fr = d;
    }
    int streaming = st[m->http_send_end] >= 0 && st[m->grpc_send_end] >= 0;
    for (int i = 0; i < m->ncount; i++) if (st[m->count[i]] >= 2) streaming = 1;
    int timed = e2e >= 0;
    o[n] = e2e; o[n + 1] = fr; o[n + 2] = outcome; o[n + 3] = neg; o[n + 4] = impl;
    o[n + 5] = (timed ? F_TIMED : 0) | (frontend ? F_FRONTEND : 0) | (timed && streaming ? F_STREAMING : 0);
    o[n + 6] = arrival; o[n + 7] = end;
    int64_t a[MAX_SEGS], b[MAX_SEGS];
    for (int j = 0; j < m->k; j++) {
        int64_t x, y;
        switch (m->seg_kind[j]) {
        case SEG_SEND: {
            int h = st[m->http_send_start] >= 0 && st[m->http_send_end] >= 0;
            x = h ? st[m->http_send_start] : st[m->grpc_send_start];
            y = h ? st[m->http_send_end] : st[m->grpc_send_end];
            break;
        }
        case SEG_BETWEEN: x = first >= 0 ? max2(first, released) : -1; y = end; break;
        default: x = st[m->seg_a[j]]; y = st[m->seg_b[j]];
                 if (m->seg_kind[j] == SEG_UNCOMPUTED && computed) x = -1;
        }
        a[j] = (x >= 0 && y >= 0) ? x : -1;
        b[j] = (x >= 0 && y >= 0) ? y : -1;
    }
    sweep(a, b, m->k, timed ? arrival : 0, timed ? end : 0, o + n + 8);
}

/* ---- streaming rows: every occurrence (model_rows with the rows' extra occurrences) ---- */

static int cmp_i64(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

typedef struct { int64_t t; int delta, seg; } Ev;

static int cmp_ev(const void *x, const void *y) {
    const Ev *a = x, *b = y;
    if (a->t != b->t) return (a->t > b->t) - (a->t < b->t);
    if (a->delta != b->delta) return a->delta - b->delta;
    return a->seg - b->seg;
}

/* Every time of the repeated column col in one row (stages.occurrences): the row's extra
 * (code, ns) pairs sorted where it occurred more than twice. buf holds exn + 2. */
static Py_ssize_t occurrences(const Scanner *s, const int64_t *st, const int64_t *ex, Py_ssize_t exn, int col,
                              int64_t *buf) {
    if (col >= s->nnames || s->count_col[col] < 0) return 0;
    int64_t count = st[s->count_col[col]];
    Py_ssize_t n = 0;
    if (count >= 3) {
        for (Py_ssize_t i = 0; i < exn; i++) if (ex[3 * i + 1] == col) buf[n++] = ex[3 * i + 2];
        qsort(buf, (size_t)n, sizeof(int64_t), cmp_i64);
    } else if (count == 2) {
        buf[0] = st[s->first_col[col]]; buf[1] = st[col]; n = 2;
    } else if (count == 1) {
        buf[0] = st[col]; n = 1;
    }
    return n;
}

/* A streaming row's segments (stages.trace_segments: every response's send an interval of its
 * own, swept as exclusive_reference does) into seg[k + 1], and its gaps between responses
 * (stages.response_times) appended to *gaps as (row, gap). -1: no memory. */
static int stream_row(const Scanner *s, const int64_t *st, const int64_t *ex, Py_ssize_t exn, Py_ssize_t row,
                      int64_t lo, int64_t hi, int64_t *seg, int64_t **gaps, Py_ssize_t *ngaps, Py_ssize_t *gcap) {
    const Model *m = s->model;
    Py_ssize_t cap = exn + 2;
    int64_t *buf = PyMem_Malloc(6 * cap * sizeof(int64_t));
    int64_t *ia = PyMem_Malloc((2 * cap + m->k) * 3 * sizeof(int64_t));
    Ev *ev = PyMem_Malloc((2 * cap + m->k) * 2 * sizeof(Ev));
    int rc = -1;
    if (!buf || !ia || !ev) { PyErr_NoMemory(); goto done; }
    int64_t *hs = buf, *he = buf + cap, *gs = buf + 2 * cap, *ge = buf + 3 * cap, *tm = buf + 4 * cap;
    Py_ssize_t nhs = occurrences(s, st, ex, exn, m->http_send_start, hs);
    Py_ssize_t nhe = occurrences(s, st, ex, exn, m->http_send_end, he);
    Py_ssize_t ngs = occurrences(s, st, ex, exn, m->grpc_send_start, gs);
    Py_ssize_t nge = occurrences(s, st, ex, exn, m->grpc_send_end, ge);
    /* response times: the sends' ends, else the responses' completions, else the release */
    Py_ssize_t nt = 0;
    for (Py_ssize_t i = 0; i < nhe; i++) tm[nt++] = he[i];
    for (Py_ssize_t i = 0; i < nge; i++) tm[nt++] = ge[i];
    if (nt) qsort(tm, (size_t)nt, sizeof(int64_t), cmp_i64);
    else nt = occurrences(s, st, ex, exn, m->done, tm);
    if (!nt) { tm[0] = st[m->released]; nt = 1; }
    int computed = any_present(st, m->compute, m->ncompute);
    Py_ssize_t ni = 0;
    for (int j = 0; j < m->k; j++) {
        if (m->seg_kind[j] == SEG_SEND) {
            for (Py_ssize_t i = 0; i < nhs && i < nhe; i++) { ia[3 * ni] = j; ia[3 * ni + 1] = hs[i]; ia[3 * ni++ + 2] = he[i]; }
            for (Py_ssize_t i = 0; i < ngs && i < nge; i++) { ia[3 * ni] = j; ia[3 * ni + 1] = gs[i]; ia[3 * ni++ + 2] = ge[i]; }
        } else if (m->seg_kind[j] == SEG_BETWEEN) {
            ia[3 * ni] = j; ia[3 * ni + 1] = max2(st[m->released], tm[0]); ia[3 * ni++ + 2] = hi;
        } else if (st[m->seg_a[j]] >= 0 && st[m->seg_b[j]] >= 0 && (m->seg_kind[j] != SEG_UNCOMPUTED || !computed)) {
            ia[3 * ni] = j; ia[3 * ni + 1] = st[m->seg_a[j]]; ia[3 * ni++ + 2] = st[m->seg_b[j]];
        }
    }
    Py_ssize_t ne = 0;
    for (Py_ssize_t i = 0; i < ni; i++) {
        int64_t a = ia[3 * i + 1], b = ia[3 * i + 2];
        if (b > a && a < hi && b > lo) {
            ev[ne++] = (Ev){a > lo ? a : lo, 1, (int)ia[3 * i]};
            ev[ne++] = (Ev){b < hi ? b : hi, -1, (int)ia[3 * i]};
        }
    }
    qsort(ev, (size_t)ne, sizeof(Ev), cmp_ev);
    int64_t active[MAX_SEGS + 1] = {0};
    int nseg = m->k + 1;
    for (int j = 0; j < nseg; j++) seg[j] = 0;
    int64_t at = lo;
    for (Py_ssize_t i = 0; i < ne; i++) {
        if (ev[i].t > at) {
            int owner = nseg - 1;
            for (int j = 0; j < nseg - 1; j++) if (active[j]) { owner = j; break; }
            seg[owner] += ev[i].t - at;
            at = ev[i].t;
        }
        active[ev[i].seg] += ev[i].delta;
    }
    seg[nseg - 1] += hi - at;
    if (*ngaps + nt > *gcap) {
        Py_ssize_t c = *gcap ? *gcap : 64;
        while (c < *ngaps + nt) c *= 2;
        int64_t *g = PyMem_Realloc(*gaps, c * 2 * sizeof(int64_t));
        if (!g) { PyErr_NoMemory(); goto done; }
        *gaps = g; *gcap = c;
    }
    for (Py_ssize_t i = 1; i < nt; i++) {
        (*gaps)[2 * *ngaps] = row; (*gaps)[2 * *ngaps + 1] = tm[i] - tm[i - 1]; (*ngaps)++;
    }
    rc = 0;
done:
    PyMem_Free(buf); PyMem_Free(ia); PyMem_Free(ev);
    return rc;
}

/* Move the oldest open trace to the output. */
static int finish_oldest(Scanner *s) {
    Slot *t = &s->ring[s->head];
    if (t == s->last_slot) s->last_slot = NULL;
    if (out_grow(s) < 0) { PyErr_NoMemory(); return -1; }
    Py_ssize_t n = s->out_n;
    s->out_ids[n] = t->id;
    s->out_parents[n] = t->parent;
    memcpy(&s->out_stamps[n * s->ncols], t->stamps, s->ncols * sizeof(int64_t));
    if (s->model_set) {
        if (n >= s->out_model_cap) {
            Py_ssize_t cap = s->out_cap;
            int64_t *a = PyMem_Realloc(s->out_model, cap * s->model->width * sizeof(int64_t));
            if (!a) { PyErr_NoMemory(); return -1; }
            s->out_model = a; s->out_model_cap = cap;
        }
        derive(s->model, t->stamps, &s->out_model[n * s->model->width]);
    }
    s->out_hdr[n] = t->hdr;
    if (t->ext_n) {
        if (s->out_ext_n + t->ext_n > s->out_ext_cap) {
            Py_ssize_t cap = s->out_ext_cap ? s->out_ext_cap : 1024;
            while (cap < s->out_ext_n + t->ext_n) cap *= 2;
            int64_t *a = PyMem_Realloc(s->out_ext, cap * 3 * sizeof(int64_t));
            if (!a) { PyErr_NoMemory(); return -1; }
            s->out_ext = a; s->out_ext_cap = cap;
        }
        for (Py_ssize_t i = 0; i < t->ext_n; i++) {
            int64_t *e = &s->out_ext[3 * s->out_ext_n++];
            e[0] = n; e[1] = t->ext[2 * i]; e[2] = t->ext[2 * i + 1];
        }
        t->ext_n = 0;
        if (t->ext_cap > 256) { /* a long stream's buffer is not kept for the slot's next trace */
            PyMem_Free(t->ext);
            t->ext = NULL;
            t->ext_cap = 0;
        }
    }
    if (PyList_Append(s->out_rids, t->rid ? t->rid : Py_None) < 0) return -1;
    Py_CLEAR(t->rid);
    s->out_n++;
    Py_ssize_t h = h_find(s, t->id);
    if (h >= 0) h_delete(s, h);
    s->head = (s->head + 1) % s->window;
    s->count--;
    return 0;
}

/* The open trace for id, opening it (and finishing the oldest if full). */
static Slot *get_slot(Scanner *s, int64_t id) {
    if (s->last_slot && s->last_id == id) return s->last_slot;
    Py_ssize_t h = h_find(s, id);
    if (h >= 0) {
        s->last_id = id;
        return s->last_slot = &s->ring[s->hvals[h]];
    }
    if (s->count >= s->window) {
        if (finish_oldest(s) < 0) return NULL;
        h = h_find(s, id);
    }
    Py_ssize_t pos = (s->head + s->count) % s->window;
    Slot *t = &s->ring[pos];
    t->id = id; t->parent = -1; t->hdr = -1;
    t->rid = NULL;
    t->ext_n = 0; /* the buffer of a reused slot is kept */
    for (int c = 0; c < s->ncols; c++) t->stamps[c] = -1;
    Py_ssize_t free_at = -1 - h;
    s->hkeys[free_at] = id;
    s->hvals[free_at] = pos;
    s->count++;
    s->last_id = id;
    return s->last_slot = t;
}

/* The header table index of (model, version); steals both references. */
static int32_t intern_header(Scanner *s, PyObject *model, PyObject *version) {
    PyObject *key = PyTuple_Pack(2, model, version);
    Py_DECREF(model); Py_DECREF(version);
    if (!key) return -2;
    PyObject *idx = PyDict_GetItemWithError(s->hdr_index, key);
    if (idx) { Py_DECREF(key); return (int32_t)PyLong_AsLong(idx); }
    if (PyErr_Occurred()) { Py_DECREF(key); return -2; }
    Py_ssize_t n = PyList_GET_SIZE(s->hdr_list);
    PyObject *v = PyLong_FromSsize_t(n);
    if (!v || PyDict_SetItem(s->hdr_index, key, v) < 0 || PyList_Append(s->hdr_list, key) < 0) {
        Py_XDECREF(v); Py_DECREF(key); return -2;
    }
    Py_DECREF(v); Py_DECREF(key);
    return (int32_t)n;
}

static void set_header(Slot *t, int32_t hdr, PyObject *rid, int64_t parent) {
    t->hdr = hdr;
    Py_XSETREF(t->rid, rid);
    t->parent = parent;
}

/* ---- the fast object decoder ------------------------------------------------ */

static inline int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static inline int is_re_ws(unsigned char c) { return is_ws(c) || c == 0x0b || c == 0x0c; }

typedef struct { const unsigned char *p, *end; } Cur;

static inline void skip_ws(Cur *c) { while (c->p < c->end && is_ws(*c->p)) c->p++; }

static inline int eat(Cur *c, unsigned char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) { c->p++; return 1; }
    return 0;
}

/* A plain string: printable ASCII without escapes. */
static inline int read_str(Cur *c, const unsigned char **s, Py_ssize_t *n) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"') return 0;
    const unsigned char *a = ++c->p;
    while (c->p < c->end && *c->p != '"') {
        unsigned char ch = *c->p;
        if (ch < 0x20 || ch >= 0x7f || ch == '\\') return 0;
        c->p++;
    }
    if (c->p >= c->end) return 0;
    *s = a; *n = c->p - a;
    c->p++;
    return 1;
}

/* Digits at p (no whitespace): a non-negative JSON integer of at most 18 digits. */
static inline const unsigned char *scan_uint(const unsigned char *p, const unsigned char *end, int64_t *v) {
    const unsigned char *a = p;
    int64_t x = 0;
    while (p < end && (unsigned)(*p - '0') < 10) { x = x * 10 + (*p - '0'); p++; }
    Py_ssize_t n = p - a;
    if (n == 0 || n > 18 || (n > 1 && *a == '0')) return NULL;
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return NULL;
    *v = x;
    return p;
}

/* A non-negative JSON integer of at most 18 digits. */
static inline int read_uint(Cur *c, int64_t *v) {
    skip_ws(c);
    const unsigned char *a = c->p;
    int64_t x = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') { x = x * 10 + (*c->p - '0'); c->p++; }
    Py_ssize_t n = c->p - a;
    if (n == 0 || n > 18 || (n > 1 && *a == '0')) return 0;
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')) return 0;
    *v = x;
    return 1;
}

static int key_is(const unsigned char *k, Py_ssize_t n, const char *want) {
    return (Py_ssize_t)strlen(want) == n && memcmp(k, want, n) == 0;
}

static inline int column_of(Scanner *s, const unsigned char *name, Py_ssize_t n) {
    for (int i = 0; i < s->nnames; i++)
        if (s->name_len[i] == n && memcmp(s->names[i], name, n) == 0) return i;
    return -1;
}

enum { K_ID = 1, K_TS = 2, K_MODEL = 4, K_VERSION = 8, K_RID = 16, K_PARENT = 32 };

#define MAX_STAMPS 32

/* Decode one object at [a, b). 1: applied; 0: not a fast shape (Python decodes it); -1: error. */
static int fast_object(Scanner *s, const unsigned char *a, const unsigned char *b) {
    Cur c = {a, b};
    int seen = 0;
    int64_t id = -1, parent = -1;
    const unsigned char *model = NULL, *vstr = NULL, *rid = NULL;
    Py_ssize_t model_n = 0, vstr_n = 0, rid_n = 0;
    int64_t vnum = -1, ridnum = -1;
    int ncols_seen = 0, cols[MAX_STAMPS];
    int64_t ns_vals[MAX_STAMPS];
    if (!eat(&c, '{')) return 0;
    for (;;) {
        const unsigned char *k; Py_ssize_t kn;
        if (!read_str(&c, &k, &kn) || !eat(&c, ':')) return 0;
        int bit;
        if (key_is(k, kn, "id")) { bit = K_ID; if (!read_uint(&c, &id)) return 0; }
        else if (key_is(k, kn, "timestamps")) {
            bit = K_TS;
            if (!eat(&c, '[')) return 0;
            for (;;) {
                const unsigned char *nm = NULL; Py_ssize_t nmn = 0; int64_t ns = -1; int have = 0;
                if (!eat(&c, '{')) return 0;
                for (int m = 0; m < 2; m++) {
                    const unsigned char *k2; Py_ssize_t k2n;
                    if (!read_str(&c, &k2, &k2n) || !eat(&c, ':')) return 0;
                    if (key_is(k2, k2n, "name") && !(have & 1)) { if (!read_str(&c, &nm, &nmn)) return 0; have |= 1; }
                    else if (key_is(k2, k2n, "ns") && !(have & 2)) { if (!read_uint(&c, &ns)) return 0; have |= 2; }
                    else return 0;
                    if (m == 0 && !eat(&c, ',')) return 0;
                }
                if (!eat(&c, '}')) return 0;
                int col = column_of(s, nm, nmn);
                if (col < 0 || ncols_seen >= MAX_STAMPS) return 0;
                cols[ncols_seen] = col; ns_vals[ncols_seen] = ns; ncols_seen++;
                if (eat(&c, ',')) continue;
                if (eat(&c, ']')) break;
                return 0;
            }
            if (ncols_seen == 0) return 0;
        }
        else if (key_is(k, kn, "model_name")) {
            bit = K_MODEL;
            if (!read_str(&c, &model, &model_n) || model_n == 0 || model_n > MAX_NAME) return 0;
        }
        else if (key_is(k, kn, "model_version")) {
            bit = K_VERSION;
            skip_ws(&c);
            if (c.p < c.end && *c.p == '"') { if (!read_str(&c, &vstr, &vstr_n) || vstr_n > MAX_NAME) return 0; }
            else {
                const unsigned char *d = c.p;
                if (!read_uint(&c, &vnum)) return 0;
                vstr = d; vstr_n = c.p - d; /* the digits are the version's text */
            }
        }
        else if (key_is(k, kn, "request_id")) {
            bit = K_RID;
            skip_ws(&c);
            if (c.p < c.end && *c.p == '"') {
                if (!read_str(&c, &rid, &rid_n) || rid_n > MAX_NAME) return 0;
            } else if (!read_uint(&c, &ridnum)) return 0;
        }
        else if (key_is(k, kn, "parent_id")) { bit = K_PARENT; if (!read_uint(&c, &parent)) return 0; }
        else return 0;
        if (seen & bit) return 0; /* duplicate key: let Python decide */
        seen |= bit;
        if (eat(&c, ',')) continue;
        if (eat(&c, '}')) break;
        return 0;
    }
    /* only separators may follow up to the next object */
    while (c.p < b) { if (!is_ws(*c.p) && *c.p != ',') return 0; c.p++; }
    if (!(seen & K_ID)) return 0;
    if (seen & K_TS) {
        if (seen != (K_ID | K_TS)) return 0;
        int any = 0;
        for (int i = 0; i < ncols_seen; i++) any |= ns_vals[i] != 0;
        if (!any) return 1; /* only "not captured" times: as records.to_record, no trace is opened */
        Slot *t = get_slot(s, id);
        if (!t) return -1;
        for (int i = 0; i < ncols_seen; i++)
            if (set_stamp(s, t, cols[i], ns_vals[i]) < 0) return -1;
        return 1;
    }
    if (!(seen & K_MODEL) || !(seen & K_VERSION)) return 0;
    PyObject *m = PyUnicode_DecodeASCII((const char *)model, model_n, NULL);
    PyObject *v = PyUnicode_DecodeASCII((const char *)vstr, vstr_n, NULL);
    PyObject *r = NULL;
    if (rid && rid_n > 0) r = PyUnicode_DecodeASCII((const char *)rid, rid_n, NULL);
    else if (!rid && ridnum >= 0) r = PyUnicode_FromFormat("%lld", (long long)ridnum);
    int want_rid = (rid && rid_n > 0) || (!rid && ridnum >= 0);
    if (!m || !v || (want_rid && !r)) {
        Py_XDECREF(m); Py_XDECREF(v); Py_XDECREF(r);
        return -1;
    }
    int32_t hdr = intern_header(s, m, v);
    if (hdr < 0) { Py_XDECREF(r); return -1; }
    Slot *t = get_slot(s, id);
    if (!t) { Py_XDECREF(r); return -1; }
    set_header(t, hdr, r, (seen & K_PARENT) ? parent : -1);
    return 1;
}

/* The common shape, exactly as Triton writes it:
 * {"id":N,"timestamps":[{"name":"X","ns":N}]}   -> 1 with *id, *col, *ns and *after set */
static int compact_stamp(Scanner *s, const unsigned char *a, const unsigned char *end,
                         int64_t *id, int *col, int64_t *ns, const unsigned char **after) {
    static const char K1[] = "{\"id\":", K2[] = ",\"timestamps\":[{\"name\":\"", K3[] = "\",\"ns\":", K4[] = "}]}";
    const unsigned char *p = a;
    if (end - p < 64 || memcmp(p, K1, sizeof K1 - 1) != 0) return 0;
    p = scan_uint(p + sizeof K1 - 1, end, id);
    if (!p) return 0;
    if (end - p < (Py_ssize_t)sizeof K2 || memcmp(p, K2, sizeof K2 - 1) != 0) return 0;
    p += sizeof K2 - 1;
    const unsigned char *q = memchr(p, '"', (size_t)(end - p < 64 ? end - p : 64));
    if (!q) return 0;
    *col = column_of(s, p, q - p);
    if (*col < 0) return 0;
    p = q;
    if (end - p < (Py_ssize_t)sizeof K3 || memcmp(p, K3, sizeof K3 - 1) != 0) return 0;
    p = scan_uint(p + sizeof K3 - 1, end, ns);
    if (!p) return 0;
    if (end - p < (Py_ssize_t)sizeof K4 - 1 || memcmp(p, K4, sizeof K4 - 1) != 0) return 0;
    *after = p + sizeof K4 - 1;
    return 1;
}

static inline int starts_at(const unsigned char *p, const unsigned char *end) {
    return end - p >= 6 && memcmp(p, "{\"id\":", 6) == 0;
}

/* Next object start at or after p: '{' ws* '"id"' ws* ':' (records.OBJECT_START). */
static const unsigned char *next_start(const unsigned char *p, const unsigned char *end) {
    while (p < end) {
        p = memchr(p, '{', end - p);
        if (!p) return NULL;
        const unsigned char *q = p + 1;
        while (q < end && is_re_ws(*q)) q++;
        if (end - q >= 4 && memcmp(q, "\"id\"", 4) == 0) {
            q += 4;
            while (q < end && is_re_ws(*q)) q++;
            if (q < end && *q == ':') return p;
        }
        p++;
    }
    return NULL;
}

/* feed(buf, pos, final) -> (pos, status, end)
 * status 0: stopped before the last object of buf (more data needed, or the tail when final)
 * status 1: the object [pos, end) is not a fast shape: decode it in Python, then feed from end */
static PyObject *Scanner_feed(Scanner *s, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos;
    int final;
    if (!PyArg_ParseTuple(args, "y*np", &view, &pos, &final)) return NULL;
    const unsigned char *base = view.buf, *end = base + view.len;
    const unsigned char *a = next_start(base + pos, end);
    PyObject *res = NULL;
    while (a) {
        int64_t id, ns;
        int col;
        const unsigned char *after;
        if (compact_stamp(s, a, end, &id, &col, &ns, &after)) {
            /* whole once only separators lead to the next object start */
            const unsigned char *q = after;
            while (q < end && (*q == ',' || is_ws(*q))) q++;
            if (starts_at(q, end)) {
                Slot *t = ns ? get_slot(s, id) : NULL;
                if (ns && !t) goto done;
                if (t && set_stamp(s, t, col, ns) < 0) goto done;
                s->objects++;
                a = q;
                continue;
            }
        }
        const unsigned char *b = next_start(a + 1, end);
        if (!b) break; /* the last object: whole only once the caller knows what follows */
        int r = fast_object(s, a, b);
        if (r < 0) goto done;
        if (r == 0) {
            res = Py_BuildValue("nin", (Py_ssize_t)(a - base), 1, (Py_ssize_t)(b - base));
            goto done;
        }
        s->objects++;
        a = b;
    }
    {
        Py_ssize_t at = a ? (Py_ssize_t)(a - base) : (Py_ssize_t)view.len;
        res = Py_BuildValue("nin", at, 0, at);
    }
done:
    PyBuffer_Release(&view);
    (void)final;
    return res;
}

static PyObject *Scanner_inject_header(Scanner *s, PyObject *args) {
    long long id, parent;
    PyObject *m, *v, *r;
    if (!PyArg_ParseTuple(args, "LOOOL", &id, &m, &v, &r, &parent)) return NULL;
    Py_INCREF(m); Py_INCREF(v);
    int32_t hdr = intern_header(s, m, v);
    if (hdr < 0) return NULL;
    Slot *t = get_slot(s, id);
    if (!t) return NULL;
    if (r != Py_None) Py_INCREF(r);
    set_header(t, hdr, r == Py_None ? NULL : r, parent);
    Py_RETURN_NONE;
}

static PyObject *Scanner_inject_stamp(Scanner *s, PyObject *args) {
    long long id, ns;
    int col;
    if (!PyArg_ParseTuple(args, "LiL", &id, &col, &ns)) return NULL;
    if (col < 0 || col >= s->nnames) { PyErr_SetString(PyExc_ValueError, "column"); return NULL; }
    Slot *t = get_slot(s, id);
    if (!t || set_stamp(s, t, col, ns) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Scanner_inject_extra(Scanner *s, PyObject *args) {
    long long id, code, ns;
    if (!PyArg_ParseTuple(args, "LLL", &id, &code, &ns)) return NULL;
    if (code < s->ncols) { PyErr_SetString(PyExc_ValueError, "code"); return NULL; }
    Slot *t = get_slot(s, id);
    if (!t || push_ext(t, code, ns) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Scanner_lookup(Scanner *s, PyObject *arg) {
    long long id = PyLong_AsLongLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t h = h_find(s, id);
    if (h < 0) Py_RETURN_NONE;
    Slot *t = &s->ring[s->hvals[h]];
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int c = 0; c < s->nnames; c++) {
        if (t->stamps[c] < 0) continue;
        PyObject *v = PyLong_FromLongLong(t->stamps[c]);
        if (!v || PyDict_SetItemString(d, s->names[c], v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    PyObject *parent = t->hdr >= 0 && t->parent >= 0 ? PyLong_FromLongLong(t->parent) : Py_NewRef(Py_None);
    return Py_BuildValue("(NN)", parent, d);
}

/* set_model(ints): stages.scan_model()'s layout, read in this order. */
static int take_cols(PyObject *seq, Py_ssize_t *i, int *n, int *cols, int max, int ncols) {
    long v = PyLong_AsLong(PyTuple_GET_ITEM(seq, (*i)++));
    if (v < 0 || v > max) return -1;
    *n = (int)v;
    for (int j = 0; j < *n; j++) {
        long c = PyLong_AsLong(PyTuple_GET_ITEM(seq, (*i)++));
        if (c < 0 || c >= ncols) return -1;
        cols[j] = (int)c;
    }
    return 0;
}

static PyObject *Scanner_set_model(Scanner *s, PyObject *arg) {
    if (!PyTuple_Check(arg)) { PyErr_SetString(PyExc_TypeError, "set_model: a tuple"); return NULL; }
    Model *m = PyMem_Calloc(1, sizeof(Model));
    if (!m) return PyErr_NoMemory();
    Py_ssize_t i = 0, len = PyTuple_GET_SIZE(arg);
    int bad = 0;
#define NEXT(dst) do { if (i >= len) { bad = 1; break; } long v_ = PyLong_AsLong(PyTuple_GET_ITEM(arg, i++)); \
        if (v_ < 0 || v_ >= s->ncols) { bad = 1; break; } (dst) = (int)v_; } while (0)
    long ns = i < len ? PyLong_AsLong(PyTuple_GET_ITEM(arg, i++)) : -1;
    if (ns < 0 || ns > MAX_SPANS) bad = 1;
    m->nspans = (int)ns;
    for (int j = 0; !bad && j < m->nspans; j++) { NEXT(m->span_a[j]); NEXT(m->span_b[j]); }
    for (int j = 0; !bad && j < 3; j++) NEXT(m->arrival[j]);
    if (!bad) { NEXT(m->http_send_start); NEXT(m->http_send_end); NEXT(m->grpc_send_start); NEXT(m->grpc_send_end); }
    if (!bad) { NEXT(m->http_send_end_first); NEXT(m->grpc_send_end_first); }
    if (!bad) { NEXT(m->done); NEXT(m->done_first); NEXT(m->released); NEXT(m->queue_start); }
    if (!bad && (i + 4 > len || take_cols(arg, &i, &m->ncompute, m->compute, MAX_COLS, s->ncols) < 0
                 || take_cols(arg, &i, &m->nhttp, m->http, MAX_COLS, s->ncols) < 0
                 || take_cols(arg, &i, &m->ngrpc, m->grpc, MAX_COLS, s->ncols) < 0
                 || take_cols(arg, &i, &m->ncount, m->count, MAX_COLS, s->ncols) < 0)) bad = 1;
    long k = !bad && i < len ? PyLong_AsLong(PyTuple_GET_ITEM(arg, i++)) : -1;
    if (k < 1 || k >= MAX_SEGS || i + 3 * k + 1 != len) bad = 1;
    for (int j = 0; !bad && j < k; j++) {
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(arg, i++));
        if (kind < SEG_SPAN || kind > SEG_UNCOMPUTED) { bad = 1; break; }
        m->seg_kind[j] = (int)kind;
        NEXT(m->seg_a[j]); NEXT(m->seg_b[j]);
    }
#undef NEXT
    if (!bad) {
        m->k = (int)k;
        m->max_span = PyLong_AsLongLong(PyTuple_GET_ITEM(arg, i));
        if (m->max_span <= 0) bad = 1;
    }
    if (bad || PyErr_Occurred()) {
        PyMem_Free(m);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "set_model: layout");
        return NULL;
    }
    m->width = m->nspans + 8 + m->k + 1;
    PyMem_Free(s->model);
    s->model = m;
    s->model_set = 1;
    return PyLong_FromLong(m->width);
}

/* model_rows(stamps[, extra]) -> bytes: derive() over each row of a C-contiguous int64 [n, ncols] matrix
 * (rows assembled by Python, e.g. from OTLP spans), the same request model a scanned trace gets.
 * With extra, the rows' (row, code, ns) occurrences sorted by row (TraceBatch.extra): streaming rows
 * are done here too (flag F_EXACT), and the result is (model, gaps), gaps (row, gap) int64 pairs. */
static PyObject *Scanner_model_rows(Scanner *s, PyObject *args) {
    PyObject *arg, *extra = NULL;
    if (!PyArg_ParseTuple(args, "O|O", &arg, &extra)) return NULL;
    if (!s->model_set) { PyErr_SetString(PyExc_ValueError, "model_rows: set_model first"); return NULL; }
    Py_buffer b, e = {0};
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (extra && PyObject_GetBuffer(extra, &e, PyBUF_C_CONTIGUOUS) < 0) { PyBuffer_Release(&b); return NULL; }
    PyObject *res = NULL, *model = NULL;
    int64_t *gaps = NULL;
    Py_ssize_t ngaps = 0, gcap = 0;
    Py_ssize_t row = s->ncols * (Py_ssize_t)sizeof(int64_t);
    if (b.len % row != 0) { PyErr_SetString(PyExc_ValueError, "model_rows: not whole rows"); goto done; }
    Py_ssize_t n = b.len / row, width = s->model->width;
    Py_ssize_t exn = extra ? e.len / (3 * (Py_ssize_t)sizeof(int64_t)) : 0;
    const int64_t *ex = extra ? e.buf : NULL;
    if (extra && e.len != exn * 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "model_rows: extra is not (row, code, ns) triples"); goto done;
    }
    for (Py_ssize_t i = 0; i < exn; i++)
        if (ex[3 * i] < 0 || ex[3 * i] >= n || (i && ex[3 * i] < ex[3 * i - 3])) {
            PyErr_SetString(PyExc_ValueError, "model_rows: extra rows out of order"); goto done;
        }
    model = PyBytes_FromStringAndSize(NULL, n * width * (Py_ssize_t)sizeof(int64_t));
    if (!model) goto done;
    const int64_t *st = b.buf;
    int64_t *out = (int64_t *)PyBytes_AS_STRING(model);
    Py_ssize_t x = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        int64_t *o = out + r * width;
        derive(s->model, st + r * s->ncols, o);
        Py_ssize_t x0 = x;
        while (x < exn && ex[3 * x] == r) x++;
        int64_t *flags = &o[s->model->nspans + 5];
        if (extra && (*flags & F_STREAMING)) {
            int64_t lo = o[s->model->nspans + 6], hi = o[s->model->nspans + 7];
            if (stream_row(s, st + r * s->ncols, ex + 3 * x0, x - x0, r, lo, hi, o + s->model->nspans + 8,
                           &gaps, &ngaps, &gcap) < 0) goto done;
            *flags |= F_EXACT;
        }
    }
    if (!extra) { res = model; model = NULL; goto done; }
    PyObject *g = PyBytes_FromStringAndSize((const char *)gaps, ngaps * 2 * (Py_ssize_t)sizeof(int64_t));
    if (g) res = PyTuple_Pack(2, model, g);
    Py_XDECREF(g);
done:
    Py_XDECREF(model);
    PyMem_Free(gaps);
    PyBuffer_Release(&b);
    if (extra) PyBuffer_Release(&e);
    return res;
}

static PyObject *Scanner_finish_all(Scanner *s, PyObject *unused) {
    while (s->count > 0)
        if (finish_oldest(s) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Scanner_take(Scanner *s, PyObject *unused) {
    Py_ssize_t n = s->out_n;
    PyObject *ids = PyBytes_FromStringAndSize((const char *)s->out_ids, n * sizeof(int64_t));
    PyObject *parents = PyBytes_FromStringAndSize((const char *)s->out_parents, n * sizeof(int64_t));
    PyObject *stamps = PyBytes_FromStringAndSize((const char *)s->out_stamps, n * s->ncols * sizeof(int64_t));
    PyObject *hdrs = PyBytes_FromStringAndSize((const char *)s->out_hdr, n * sizeof(int32_t));
    PyObject *ext = PyBytes_FromStringAndSize((const char *)s->out_ext, s->out_ext_n * 3 * sizeof(int64_t));
    if (!ids || !parents || !stamps || !hdrs || !ext) {
        Py_XDECREF(ids); Py_XDECREF(parents); Py_XDECREF(stamps); Py_XDECREF(hdrs); Py_XDECREF(ext);
        return NULL;
    }
    PyObject *model = s->model_set
        ? PyBytes_FromStringAndSize((const char *)s->out_model, n * s->model->width * sizeof(int64_t))
        : Py_NewRef(Py_None);
    if (!model) { Py_DECREF(ids); Py_DECREF(parents); Py_DECREF(stamps); Py_DECREF(hdrs); Py_DECREF(ext); return NULL; }
    PyObject *res = Py_BuildValue("(NNNNONN)", ids, parents, stamps, hdrs, s->out_rids, ext, model);
    if (!res) return NULL;
    Py_SETREF(s->out_rids, PyList_New(0));
    s->out_n = 0;
    s->out_ext_n = 0;
    if (!s->out_rids) { Py_DECREF(res); return NULL; }
    return res;
}

static PyObject *Scanner_pending(Scanner *s, void *closure) { return PyLong_FromSsize_t(s->out_n); }
static PyObject *Scanner_objects(Scanner *s, void *closure) { return PyLong_FromSsize_t(s->objects); }
static PyObject *Scanner_headers(Scanner *s, void *closure) { return Py_NewRef(s->hdr_list); }

/* Scanner(names, ncols, first_col, count_col, window): names are the columns a file's
 * timestamp names map to (the first columns); first_col/count_col per name, -1 where it
 * does not repeat; ncols the whole row. */
static int Scanner_init(Scanner *s, PyObject *args, PyObject *kw) {
    PyObject *names, *firsts, *counts;
    Py_ssize_t window, ncols;
    if (!PyArg_ParseTuple(args, "O!nO!O!n", &PyTuple_Type, &names, &ncols, &PyTuple_Type, &firsts,
                          &PyTuple_Type, &counts, &window)) return -1;
    Py_ssize_t k = PyTuple_GET_SIZE(names);
    if (ncols > MAX_COLS || k > ncols || window < 1 || PyTuple_GET_SIZE(firsts) != k || PyTuple_GET_SIZE(counts) != k) {
        PyErr_SetString(PyExc_ValueError, "too many columns or bad window"); return -1;
    }
    s->ncols = (int)ncols;
    s->nnames = (int)k;
    for (Py_ssize_t i = 0; i < k; i++) {
        long f = PyLong_AsLong(PyTuple_GET_ITEM(firsts, i)), c = PyLong_AsLong(PyTuple_GET_ITEM(counts, i));
        if (PyErr_Occurred()) return -1;
        if (f >= ncols || c >= ncols || (f < 0) != (c < 0)) { PyErr_SetString(PyExc_ValueError, "repeat columns"); return -1; }
        s->first_col[i] = (int)f; s->count_col[i] = (int)c;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(names, i), &n);
        if (!u) return -1;
        s->names[i] = PyMem_Malloc(n + 1);
        if (!s->names[i]) { PyErr_NoMemory(); return -1; }
        memcpy(s->names[i], u, n + 1);
        s->name_len[i] = n;
    }
    s->window = window;
    s->ring = PyMem_Calloc(window, sizeof(Slot));
    s->hcap = 16;
    while (s->hcap < window * 2) s->hcap <<= 1;
    s->hkeys = PyMem_Malloc(s->hcap * sizeof(int64_t));
    s->hvals = PyMem_Malloc(s->hcap * sizeof(Py_ssize_t));
    if (!s->ring || !s->hkeys || !s->hvals) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < s->hcap; i++) s->hvals[i] = -1;
    s->out_rids = PyList_New(0);
    s->hdr_index = PyDict_New();
    s->hdr_list = PyList_New(0);
    if (!s->out_rids || !s->hdr_index || !s->hdr_list) return -1;
    return 0;
}

static void Scanner_dealloc(Scanner *s) {
    if (s->ring) {
        for (Py_ssize_t i = 0; i < s->count; i++) {
            Slot *t = &s->ring[(s->head + i) % s->window];
            Py_CLEAR(t->rid);
        }
        for (Py_ssize_t i = 0; i < s->window; i++) PyMem_Free(s->ring[i].ext);
        PyMem_Free(s->ring);
    }
    for (int i = 0; i < s->nnames; i++) PyMem_Free(s->names[i]);
    PyMem_Free(s->out_ext);
    PyMem_Free(s->model);
    PyMem_Free(s->out_model);
    PyMem_Free(s->hkeys); PyMem_Free(s->hvals);
    PyMem_Free(s->out_ids); PyMem_Free(s->out_parents); PyMem_Free(s->out_stamps); PyMem_Free(s->out_hdr);
    Py_XDECREF(s->out_rids); Py_XDECREF(s->hdr_index); Py_XDECREF(s->hdr_list);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef Scanner_methods[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_VARARGS, "feed(buf, pos, final) -> (pos, status, end)"},
    {"inject_header", (PyCFunction)Scanner_inject_header, METH_VARARGS, "a header decoded by Python"},
    {"inject_stamp", (PyCFunction)Scanner_inject_stamp, METH_VARARGS, "a timestamp decoded by Python"},
    {"inject_extra", (PyCFunction)Scanner_inject_extra, METH_VARARGS, "(id, code >= ncols, ns): a custom activity"},
    {"lookup", (PyCFunction)Scanner_lookup, METH_O, "(parent, stamps) of an open trace, or None"},
    {"set_model", (PyCFunction)Scanner_set_model, METH_O, "the request model's columns (stages.scan_model()); -> row width"},
    {"model_rows", (PyCFunction)Scanner_model_rows, METH_VARARGS,
     "model_rows(stamps[, extra]) -> bytes, or (bytes, gaps) with extra: the request model of each row"},
    {"finish_all", (PyCFunction)Scanner_finish_all, METH_NOARGS, "finish every open trace"},
    {"take", (PyCFunction)Scanner_take, METH_NOARGS, "the finished traces as columns"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Scanner_getset[] = {
    {"finished", (getter)Scanner_pending, NULL, "finished traces not taken yet", NULL},
    {"objects", (getter)Scanner_objects, NULL, "objects decoded on the fast path", NULL},
    {"headers", (getter)Scanner_headers, NULL, "the (model, version) table that header indexes point into", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "exporter.traces._scan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
    .tp_getset = Scanner_getset,
};

/* ---- the exclusive timeline ---------------------------------------------------- */

/* exclusive(starts, ends, lo, hi, k) -> bytes of int64 [n, k+1]: per row, the time of
 * [lo, hi] each of its k intervals owns, interval j winning over every later one where
 * they overlap, column k the time none covers (stages.exclusive_reference's rule).
 * starts and ends are [k, n] (interval j of row r at j * n + r). An interval with a
 * negative start or end <= start is empty; a row with hi <= lo owns nothing. */
#define MAX_K MAX_SEGS
static PyObject *exclusive(PyObject *self, PyObject *args) {
    Py_buffer bs, be, bl, bh;
    int k;
    if (!PyArg_ParseTuple(args, "y*y*y*y*i", &bs, &be, &bl, &bh, &k)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = bl.len / (Py_ssize_t)sizeof(int64_t);
    if (k < 1 || k > MAX_K || bs.len != n * k * (Py_ssize_t)sizeof(int64_t) || be.len != bs.len || bh.len != bl.len) {
        PyErr_SetString(PyExc_ValueError, "exclusive: shapes");
        goto done;
    }
    res = PyBytes_FromStringAndSize(NULL, n * (k + 1) * sizeof(int64_t));
    if (!res) goto done;
    const int64_t *st = bs.buf, *en = be.buf, *lo = bl.buf, *hi = bh.buf;
    int64_t *out = (int64_t *)PyBytes_AS_STRING(res);
    for (Py_ssize_t r = 0; r < n; r++) {
        int64_t a[MAX_K], b[MAX_K];
        for (int j = 0; j < k; j++) { a[j] = st[j * n + r]; b[j] = en[j * n + r]; }
        sweep(a, b, k, lo[r], hi[r], out + r * (k + 1));
    }
done:
    PyBuffer_Release(&bs); PyBuffer_Release(&be); PyBuffer_Release(&bl); PyBuffer_Release(&bh);
    return res;
}

/* ---- a few observations into a histogram (histogram.Histogram.fill) ---------------------- */

/* fill(counts, native, bounds, fractions, per_exp, values, unit) -> zeros: each value's bucket
 * (bisect_left over bounds) counted in the list `counts`, and, positive ones, their native
 * bucket bisect_left(fractions, frexp(v / unit)[0]) + (exp - 1) * per_exp in the dict `native`
 * (None: not kept); returns how many were <= 0 (the zero bucket). */
static PyObject *fill(PyObject *self, PyObject *args) {
    PyObject *counts, *native, *bounds, *fractions, *values;
    long per_exp;
    double unit;
    if (!PyArg_ParseTuple(args, "O!OO!O!lO!d", &PyList_Type, &counts, &native, &PyTuple_Type, &bounds,
                          &PyTuple_Type, &fractions, &per_exp, &PyList_Type, &values, &unit)) return NULL;
    if (native != Py_None && !PyDict_Check(native)) { PyErr_SetString(PyExc_TypeError, "fill: native"); return NULL; }
    Py_ssize_t nb = PyTuple_GET_SIZE(bounds), nf = PyTuple_GET_SIZE(fractions);
    if (PyList_GET_SIZE(counts) != nb + 1 || nb > 512 || nf > 512) {
        PyErr_SetString(PyExc_ValueError, "fill: shapes"); return NULL;
    }
    int64_t b[512];
    double f[512];
    for (Py_ssize_t i = 0; i < nb; i++) b[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(bounds, i));
    for (Py_ssize_t i = 0; i < nf; i++) f[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(fractions, i));
    if (PyErr_Occurred()) return NULL;
    long zeros = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(values); i++) {
        int64_t v = PyLong_AsLongLong(PyList_GET_ITEM(values, i));
        if (v == -1 && PyErr_Occurred()) return NULL;
        Py_ssize_t lo = 0, hi = nb;
        while (lo < hi) { Py_ssize_t mid = (lo + hi) / 2; if (b[mid] < v) lo = mid + 1; else hi = mid; }
        long long c = PyLong_AsLongLong(PyList_GET_ITEM(counts, lo));
        if (c == -1 && PyErr_Occurred()) return NULL;
        PyObject *c1 = PyLong_FromLongLong(c + 1);
        if (!c1) return NULL;
        PyList_SetItem(counts, lo, c1); /* steals c1, drops the old count */
        if (v <= 0) { zeros++; continue; }
        if (native == Py_None) continue;
        int exp;
        double frac = frexp((double)v / unit, &exp);
        Py_ssize_t a = 0, z = nf;
        while (a < z) { Py_ssize_t mid = (a + z) / 2; if (f[mid] < frac) a = mid + 1; else z = mid; }
        PyObject *key = PyLong_FromLongLong((long long)a + (long long)(exp - 1) * per_exp);
        if (!key) return NULL;
        PyObject *old = PyDict_GetItemWithError(native, key);
        if (!old && PyErr_Occurred()) { Py_DECREF(key); return NULL; }
        long long was = old ? PyLong_AsLongLong(old) : 0;
        if (was == -1 && PyErr_Occurred()) { Py_DECREF(key); return NULL; }
        PyObject *n = PyLong_FromLongLong(was + 1);
        int rc = n ? PyDict_SetItem(native, key, n) : -1;
        Py_XDECREF(n);
        Py_DECREF(key);
        if (rc < 0) return NULL;
    }
    return PyLong_FromLong(zeros);
}

/* ---- a batch's observations binned per series (traces.binning.bin_values) --------------------- */

/* An exact sum as a Python int (a series' sum may pass 2**63). */
static PyObject *int128_to_py(__int128 t) {
    if (t >= INT64_MIN && t <= INT64_MAX) return PyLong_FromLongLong((long long)t);
    int neg = t < 0;
    unsigned __int128 m = neg ? -(unsigned __int128)t : (unsigned __int128)t;
    PyObject *hi = PyLong_FromUnsignedLongLong((unsigned long long)(m >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)m);
    PyObject *sh = PyLong_FromLong(64);
    PyObject *a = (hi && sh) ? PyNumber_Lshift(hi, sh) : NULL;
    PyObject *r = (a && lo) ? PyNumber_Or(a, lo) : NULL;
    Py_XDECREF(hi); Py_XDECREF(lo); Py_XDECREF(sh); Py_XDECREF(a);
    if (r && neg) { PyObject *q = PyNumber_Negative(r); Py_DECREF(r); r = q; }
    return r;
}

/* bin_values(series, values, n_series, bounds, fractions, per_exp, unit) -> (per_series, cells, lasts):
 * series and values are int64 buffers of one length (observation i: values[i] in series series[i]).
 * per_series lists, by ascending series, each series observed: (series, counts, total, count, zeros,
 * native), counts per bucket as fill() bins (bisect_left over bounds, len(bounds) + 1 buckets), total
 * the exact sum, zeros the observations <= 0, native a new dict of native bucket -> count of the
 * positive ones (fill()'s index, keys ascending). cells (ascending) are series * (len(bounds) + 1) +
 * bucket of every bucket observed, lasts the position of each one's last observation. */
static PyObject *bin_values(PyObject *self, PyObject *args) {
    Py_buffer bs, bv;
    Py_ssize_t n_series;
    PyObject *bounds, *fractions;
    long per_exp;
    double unit;
    if (!PyArg_ParseTuple(args, "y*y*nO!O!ld", &bs, &bv, &n_series, &PyTuple_Type, &bounds, &PyTuple_Type,
                          &fractions, &per_exp, &unit)) return NULL;
    PyObject *res = NULL, *per = NULL, *cells = NULL, *lasts = NULL;
    Py_ssize_t *dense = NULL, *last = NULL;
    int64_t *cnt = NULL, *nobs = NULL, *zeros = NULL;
    __int128 *tot = NULL;
    int64_t *keys = NULL, *grouped = NULL, *at = NULL, *tally = NULL;
    Py_ssize_t *posu = NULL;
    Py_ssize_t n = bv.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t nb = PyTuple_GET_SIZE(bounds), nf = PyTuple_GET_SIZE(fractions), w = nb + 1;
    if (bs.len != bv.len || bv.len % (Py_ssize_t)sizeof(int64_t) || n_series < 0 || nb > 512 || nf > 512
        || !(unit > 0 && unit < INFINITY) || per_exp < 1 || per_exp > 1024) {
        PyErr_SetString(PyExc_ValueError, "bin_values: shapes");
        goto done;
    }
    int64_t b[512];
    double f[512];
    for (Py_ssize_t i = 0; i < nb; i++) b[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(bounds, i));
    for (Py_ssize_t i = 0; i < nf; i++) f[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(fractions, i));
    if (PyErr_Occurred()) goto done;
    const int64_t *sv = bs.buf, *vv = bv.buf;
    dense = PyMem_Calloc(n_series ? n_series : 1, sizeof(Py_ssize_t));
    if (!dense) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sv[i] < 0 || sv[i] >= n_series) { PyErr_SetString(PyExc_ValueError, "bin_values: series"); goto done; }
        dense[sv[i]] = 1;
    }
    Py_ssize_t nu = 0;
    for (Py_ssize_t s = 0; s < n_series; s++) if (dense[s]) dense[s] = ++nu; /* 1 + the series' rank */
    size_t m = nu ? (size_t)nu : 1;
    cnt = PyMem_Calloc(m * (size_t)w, sizeof(int64_t));
    last = PyMem_Malloc(m * (size_t)w * sizeof(Py_ssize_t));
    nobs = PyMem_Calloc(m, sizeof(int64_t));
    zeros = PyMem_Calloc(m, sizeof(int64_t));
    tot = PyMem_Calloc(m, sizeof(__int128));
    size_t nn = n ? (size_t)n : 1;
    keys = PyMem_Malloc(nn * sizeof(int64_t));
    grouped = PyMem_Malloc(nn * sizeof(int64_t));
    posu = PyMem_Malloc(nn * sizeof(Py_ssize_t));
    at = PyMem_Calloc(m + 1, sizeof(int64_t));
    if (!cnt || !last || !nobs || !zeros || !tot || !keys || !grouped || !posu || !at) { PyErr_NoMemory(); goto done; }
    Py_ssize_t nk = 0;
    int64_t kmin = INT64_MAX, kmax = INT64_MIN;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t v = vv[i];
        Py_ssize_t u = dense[sv[i]] - 1;
        Py_ssize_t lo = 0, hi = nb;
        while (lo < hi) { Py_ssize_t mid = (lo + hi) / 2; if (b[mid] < v) lo = mid + 1; else hi = mid; }
        cnt[u * w + lo]++;
        last[u * w + lo] = i;
        tot[u] += v;
        nobs[u]++;
        if (v <= 0) { zeros[u]++; continue; }
        int exp;
        double frac = frexp((double)v / unit, &exp);
        Py_ssize_t a = 0, z = nf;
        while (a < z) { Py_ssize_t mid = (a + z) / 2; if (f[mid] < frac) a = mid + 1; else z = mid; }
        int64_t k = (int64_t)a + (int64_t)(exp - 1) * per_exp;
        keys[nk] = k;
        posu[nk++] = u;
        at[u + 1]++;
        if (k < kmin) kmin = k;
        if (k > kmax) kmax = k;
    }
    /* the native keys grouped by series (a counting sort), then counted per series in a dense tally
     * over the keys' range: a positive int64 over a fixed unit spans at most 64 powers of two, so the
     * range stays near 64 * per_exp whatever the values */
    for (Py_ssize_t x = 0; x < nu; x++) at[x + 1] += at[x];
    for (Py_ssize_t i = 0; i < nk; i++) grouped[at[posu[i]]++] = keys[i];
    for (Py_ssize_t x = nu; x > 0; x--) at[x] = at[x - 1];
    at[0] = 0;
    if (nk && kmax - kmin > 1 << 20) { PyErr_SetString(PyExc_ValueError, "bin_values: native range"); goto done; }
    tally = PyMem_Calloc(nk ? (size_t)(kmax - kmin + 1) : 1, sizeof(int64_t));
    if (!tally) { PyErr_NoMemory(); goto done; }
    per = PyList_New(nu);
    cells = PyList_New(0);
    lasts = PyList_New(0);
    if (!per || !cells || !lasts) goto done;
    Py_ssize_t u = 0;
    for (Py_ssize_t s = 0; s < n_series; s++) {
        if (!dense[s]) continue;
        PyObject *counts = PyList_New(w), *native = PyDict_New();
        PyObject *item = NULL;
        if (counts && native) {
            for (Py_ssize_t k = 0; k < w; k++) {
                PyObject *c = PyLong_FromLongLong(cnt[u * w + k]);
                if (!c) goto item_done;
                PyList_SET_ITEM(counts, k, c);
                if (cnt[u * w + k]) {
                    PyObject *cell = PyLong_FromSsize_t(s * w + k), *pos = PyLong_FromSsize_t(last[u * w + k]);
                    int rc = (cell && pos) ? PyList_Append(cells, cell) | PyList_Append(lasts, pos) : -1;
                    Py_XDECREF(cell); Py_XDECREF(pos);
                    if (rc < 0) goto item_done;
                }
            }
            int64_t lo_k = INT64_MAX, hi_k = INT64_MIN;
            for (int64_t i = at[u]; i < at[u + 1]; i++) {
                int64_t k = grouped[i];
                tally[k - kmin]++;
                if (k < lo_k) lo_k = k;
                if (k > hi_k) hi_k = k;
            }
            for (int64_t k = lo_k; at[u] < at[u + 1] && k <= hi_k; k++) {
                int64_t c = tally[k - kmin];
                if (!c) continue;
                tally[k - kmin] = 0;
                PyObject *key = PyLong_FromLongLong(k), *cn = PyLong_FromLongLong(c);
                int rc = (key && cn) ? PyDict_SetItem(native, key, cn) : -1;
                Py_XDECREF(key); Py_XDECREF(cn);
                if (rc < 0) goto item_done;
            }
            PyObject *total = int128_to_py(tot[u]);
            if (total) item = Py_BuildValue("(nOOLLO)", s, counts, total, (long long)nobs[u], (long long)zeros[u], native);
            Py_XDECREF(total);
        }
    item_done:
        Py_XDECREF(counts); Py_XDECREF(native);
        if (!item) goto done;
        PyList_SET_ITEM(per, u, item);
        u++;
    }
    res = PyTuple_Pack(3, per, cells, lasts);
done:
    Py_XDECREF(per); Py_XDECREF(cells); Py_XDECREF(lasts);
    PyMem_Free(dense); PyMem_Free(cnt); PyMem_Free(last); PyMem_Free(nobs); PyMem_Free(zeros); PyMem_Free(tot);
    PyMem_Free(keys); PyMem_Free(grouped); PyMem_Free(posu); PyMem_Free(at); PyMem_Free(tally);
    PyBuffer_Release(&bs); PyBuffer_Release(&bv);
    return res;
}

static PyMethodDef module_methods[] = {
    {"exclusive", exclusive, METH_VARARGS, "exclusive(starts, ends, lo, hi, k): the timeline's per-row sweep"},
    {"fill", fill, METH_VARARGS, "fill(counts, native, bounds, fractions, per_exp, values, unit) -> zeros"},
    {"bin_values", bin_values, METH_VARARGS,
     "bin_values(series, values, n_series, bounds, fractions, per_exp, unit) -> (per_series, cells, lasts)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", "Fast trace-file scanner.", -1, module_methods};

PyMODINIT_FUNC PyInit__scan(void) {
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) { Py_DECREF(&ScannerType); Py_DECREF(m); return NULL; }
    return m;
}
