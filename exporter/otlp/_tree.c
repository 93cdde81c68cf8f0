/* Fast path of the OTLP receiver: one request's decoded span records (exporter/otlp/decode.py's
 * SpanRecord tuples) -> the span checks of spans.py, the duplicate test of ingest.py, and the
 * rows of every OTel trace the request brings whole (root included, nothing of it held), built
 * as TraceBatch columns with the rules of spans.tree_traces and stages.merge_stamp. Every other
 * fresh span (an incomplete tree, a held trace id, a root alone, a chain of ensembles deeper
 * than tree_traces orders) is handed back by index to the Python path, which stays the reference.
 * Knows no Triton name: columns, repeated names, frontend columns and attribute keys come from
 * Python (configure(), from exporter/stages.py and spans.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_COLS 64
#define MAX_LABEL 256            /* spans.MAX_NAME */
#define MAX_DEPTH 16             /* tree_traces' depth bound: deeper chains go to Python */
#define NREASONS 6               /* bad_span_id, missing_attribute, bad_label, implausible_time,
                                    unknown_timestamp, orphan_span (ingest.TREE_REJECTS) */

/* --- BLAKE2b with an 8-byte digest over 24 bytes (RFC 7693): ingest.span_key -------------- */
static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static uint64_t load64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#define B2_G(a, b, c, d, x, y)                                   \
    do {                                                         \
        v[a] = v[a] + v[b] + (x); v[d] = rotr64(v[d] ^ v[a], 32); \
        v[c] = v[c] + v[d]; v[b] = rotr64(v[b] ^ v[c], 24);       \
        v[a] = v[a] + v[b] + (y); v[d] = rotr64(v[d] ^ v[a], 16); \
        v[c] = v[c] + v[d]; v[b] = rotr64(v[b] ^ v[c], 63);       \
    } while (0)

/* The key of (trace id, span id): its 8 digest bytes, as a little-endian word. */
static uint64_t span_key(const unsigned char *tid, const unsigned char *sid) {
    uint64_t m[16] = {0}, v[16];
    m[0] = load64(tid); m[1] = load64(tid + 8); m[2] = load64(sid);
    uint64_t h0 = B2_IV[0] ^ 0x01010000ULL ^ 8;  /* no key, 8-byte digest */
    for (int i = 0; i < 8; i++) { v[i] = B2_IV[i]; v[i + 8] = B2_IV[i]; }
    v[0] = h0;
    v[12] ^= 24;   /* bytes hashed */
    v[14] = ~v[14]; /* the last block */
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2_SIGMA[r];
        B2_G(0, 4, 8, 12, m[s[0]], m[s[1]]); B2_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2_G(2, 6, 10, 14, m[s[4]], m[s[5]]); B2_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2_G(0, 5, 10, 15, m[s[8]], m[s[9]]); B2_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2_G(2, 7, 8, 13, m[s[12]], m[s[13]]); B2_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    return h0 ^ v[0] ^ v[8];
}

static PyObject *key_bytes(uint64_t k) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(k >> (8 * i));
    return PyBytes_FromStringAndSize((const char *)b, 8);
}

/* --- the tables given by Python ------------------------------------------------------------ */
static PyObject *KNOWN;          /* dict: known timestamp name -> its column */
static int NCOLS;                /* columns of a row (stages.NCOLS); custom codes start there */
static int FIRST_COL[MAX_COLS], COUNT_COL[MAX_COLS]; /* by column of a name; -1: not repeated */
static int HTTP_COLS[MAX_COLS], N_HTTP, GRPC_COLS[MAX_COLS], N_GRPC;
static int RECV_COL[2], SEND_COL[2];
static PyObject *S_MODEL, *S_VERSION, *S_REQUEST;
static int64_t MIN_WALL, MAX_AHEAD;

static int col_list(PyObject *seq, int *out, int *n, int max) {
    PyObject *f = PySequence_Fast(seq, "a sequence of columns");
    if (!f) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(f);
    if (len > max) { Py_DECREF(f); PyErr_SetString(PyExc_ValueError, "too many columns"); return -1; }
    for (Py_ssize_t i = 0; i < len; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(f, i));
        if (v == -1 && PyErr_Occurred()) { Py_DECREF(f); return -1; }
        out[i] = (int)v;
    }
    if (n) *n = (int)len;
    Py_DECREF(f);
    return 0;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *known, *first, *count, *http, *grpc, *recv, *send, *model, *version, *request;
    long long min_wall, max_ahead;
    if (!PyArg_ParseTuple(args, "O!iOOOOOOLLUUU", &PyDict_Type, &known, &NCOLS, &first, &count, &http, &grpc,
                          &recv, &send, &min_wall, &max_ahead, &model, &version, &request))
        return NULL;
    int nf, nc, nr, ns;
    if (NCOLS > MAX_COLS) { PyErr_SetString(PyExc_ValueError, "too many columns"); return NULL; }
    if (col_list(first, FIRST_COL, &nf, MAX_COLS) || col_list(count, COUNT_COL, &nc, MAX_COLS) ||
        col_list(http, HTTP_COLS, &N_HTTP, MAX_COLS) || col_list(grpc, GRPC_COLS, &N_GRPC, MAX_COLS) ||
        col_list(recv, RECV_COL, &nr, 2) || col_list(send, SEND_COL, &ns, 2))
        return NULL;
    if (nr != 2 || ns != 2 || nf != nc) { PyErr_SetString(PyExc_ValueError, "bad column tables"); return NULL; }
    Py_XSETREF(KNOWN, Py_NewRef(known));
    Py_XSETREF(S_MODEL, Py_NewRef(model));
    Py_XSETREF(S_VERSION, Py_NewRef(version));
    Py_XSETREF(S_REQUEST, Py_NewRef(request));
    MIN_WALL = min_wall;
    MAX_AHEAD = max_ahead;
    Py_RETURN_NONE;
}

/* stages.CUSTOM_NAME: [A-Za-z][A-Za-z0-9_]{0,63}_(START|END), whole */
static int custom_name(PyObject *name) {
    if (!PyUnicode_IS_ASCII(name)) return 0;
    const char *s = (const char *)PyUnicode_DATA(name);
    Py_ssize_t n = PyUnicode_GET_LENGTH(name), base;
    if (n > 6 && memcmp(s + n - 6, "_START", 6) == 0) base = n - 6;
    else if (n > 4 && memcmp(s + n - 4, "_END", 4) == 0) base = n - 4;
    else return 0;
    if (base < 1 || base > 64) return 0;
    char c = s[0];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) return 0;
    for (Py_ssize_t i = 1; i < base; i++) {
        c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return 0;
    }
    return 1;
}

/* the column of a known name, -1 for another (custom or unknown), -2 on error */
static int column_of(PyObject *name) {
    PyObject *c = PyDict_GetItemWithError(KNOWN, name);
    if (!c) return PyErr_Occurred() ? -2 : -1;
    return (int)PyLong_AsLong(c);
}

/* --- one request --------------------------------------------------------------------------- */
typedef struct {
    PyObject *rec;
    const unsigned char *tid, *sid, *pid;
    PyObject *attrs, *events;
    uint64_t key;
    int fresh, model, error, has_pid;
    Py_ssize_t group, next;  /* the trace it belongs to; the next fresh span of that trace */
    Py_ssize_t parent;       /* the fresh span of its trace named by its parent id, -1: none */
    int depth, above;        /* a model span's ancestors that are model spans; a model span's parent */
    Py_ssize_t row;          /* a model span's row, -1 before it is built */
    int64_t row_id;
} Sp;

typedef struct { Py_ssize_t first, last, n; int root; } Group;

typedef struct {
    int64_t *ids, *parents, *stamps, *extra; int32_t *hdr; char *failed, *codes;
    Py_ssize_t n, cap, nx, capx;
    PyObject *headers, *header_index, *request_ids, *customs, *custom_index, *trace_ids;
} Rows;

static Py_ssize_t table_size(Py_ssize_t n) {
    Py_ssize_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

/* the fresh span with this key (and these ids), -1: none */
static Py_ssize_t find(const Sp *sp, const Py_ssize_t *table, Py_ssize_t mask, uint64_t key,
                       const unsigned char *tid, const unsigned char *sid) {
    for (Py_ssize_t h = (Py_ssize_t)(key & (uint64_t)mask);; h = (h + 1) & mask) {
        Py_ssize_t i = table[h] - 1;
        if (i < 0) return -1;
        if (sp[i].key == key && (!tid || (memcmp(sp[i].tid, tid, 16) == 0 && memcmp(sp[i].sid, sid, 8) == 0)))
            return i;
    }
}

static int grow_rows(Rows *r) {
    if (r->n < r->cap) return 0;
    Py_ssize_t cap = r->cap ? 2 * r->cap : 64;
    int64_t *ids = PyMem_Realloc(r->ids, cap * 8), *parents = NULL, *stamps = NULL;
    if (ids) r->ids = ids;
    if (ids && (parents = PyMem_Realloc(r->parents, cap * 8))) r->parents = parents;
    if (parents && (stamps = PyMem_Realloc(r->stamps, cap * NCOLS * 8))) r->stamps = stamps;
    int32_t *hdr = stamps ? PyMem_Realloc(r->hdr, cap * 4) : NULL;
    if (hdr) r->hdr = hdr;
    char *failed = hdr ? PyMem_Realloc(r->failed, cap) : NULL, *codes = NULL;
    if (failed) r->failed = failed;
    if (failed && (codes = PyMem_Realloc(r->codes, cap))) r->codes = codes;
    if (!codes) { PyErr_NoMemory(); return -1; }
    r->cap = cap;
    return 0;
}

static int add_extra(Rows *r, int64_t code, int64_t ns) {
    if (r->nx == r->capx) {
        Py_ssize_t cap = r->capx ? 2 * r->capx : 64;
        int64_t *x = PyMem_Realloc(r->extra, cap * 3 * 8);
        if (!x) { PyErr_NoMemory(); return -1; }
        r->extra = x;
        r->capx = cap;
    }
    int64_t *x = r->extra + 3 * r->nx++;
    x[0] = r->n; x[1] = code; x[2] = ns;
    return 0;
}

/* the code of a custom activity name in the batch's table */
static int64_t custom_code(Rows *r, PyObject *name) {
    PyObject *c = PyDict_GetItemWithError(r->custom_index, name);
    if (c) return PyLong_AsLongLong(c);
    if (PyErr_Occurred()) return -1;
    Py_ssize_t n = PyList_GET_SIZE(r->customs);
    PyObject *code = PyLong_FromSsize_t(NCOLS + n);
    if (!code || PyDict_SetItem(r->custom_index, name, code) < 0 || PyList_Append(r->customs, name) < 0) {
        Py_XDECREF(code);
        return -1;
    }
    Py_DECREF(code);
    return NCOLS + n;
}

/* Trace.add of each event (spans._add), skipping unknown names (counted already); with
 * `received` set, the HTTP sends before it are skipped too (spans._add_frontend) */
static int add_events(Rows *r, PyObject *events, int64_t received) {
    int64_t *row = r->stamps + r->n * NCOLS;
    Py_ssize_t n = PyList_GET_SIZE(events);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(events, i), *name = PyTuple_GET_ITEM(e, 0);
        int64_t ns = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 1));
        int c = column_of(name);
        if (c == -2) return -1;
        if (c < 0) {
            if (!custom_name(name)) continue;
            int64_t code = custom_code(r, name);
            if (code < 0 || add_extra(r, code, ns) < 0) return -1;
            continue;
        }
        if (received >= 0 && (c == SEND_COL[0] || c == SEND_COL[1]) && ns < received) continue;
        int fc = FIRST_COL[c], cc = COUNT_COL[c];
        if (fc < 0) { row[c] = ns; continue; }  /* the last wins */
        int64_t count = row[cc] < 0 ? 0 : row[cc];
        if (count == 0) {
            row[c] = row[fc] = ns;
        } else {
            int64_t first = row[fc], last = row[c];
            if (count == 2 && (add_extra(r, c, first) < 0 || add_extra(r, c, last) < 0)) return -1;
            if (count >= 2 && add_extra(r, c, ns) < 0) return -1;
            row[fc] = first < ns ? first : ns;
            row[c] = last > ns ? last : ns;
        }
        row[cc] = count + 1;
    }
    return 0;
}

/* spans._add_frontend's cut: the first receive, where an HTTP send came before it; else -1 */
static int64_t received_cut(PyObject *events) {
    int64_t received = INT64_MAX, send = INT64_MAX;
    Py_ssize_t n = PyList_GET_SIZE(events);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        int c = column_of(PyTuple_GET_ITEM(e, 0));
        if (c < 0) { if (c == -2) PyErr_Clear(); continue; }
        int64_t ns = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 1));
        if ((c == RECV_COL[0] || c == RECV_COL[1]) && ns < received) received = ns;
        else if ((c == SEND_COL[0] || c == SEND_COL[1]) && ns < send) send = ns;
    }
    return send < received && received < INT64_MAX ? received : -1;
}

static int build_row(Rows *r, Sp *sp, Py_ssize_t m, Py_ssize_t first_span, PyObject *w3c) {
    if (grow_rows(r) < 0) return -1;
    Py_ssize_t i = r->n;
    Sp *s = &sp[m];
    int64_t *row = r->stamps + i * NCOLS;
    for (int c = 0; c < NCOLS; c++) row[c] = -1;
    r->ids[i] = s->row_id;
    r->parents[i] = -1;
    int failed = 0, code = -1;
    Py_ssize_t p = s->parent;
    if (p >= 0 && sp[p].model) {
        r->parents[i] = sp[p].row_id;
        code = r->codes[sp[p].row];  /* built before: its depth is smaller */
    } else if (p >= 0) {
        if (add_events(r, sp[p].events, received_cut(sp[p].events)) < 0) return -1;
        failed = sp[p].error;
    }
    failed |= s->error;
    for (Py_ssize_t c = first_span; c >= 0; c = sp[c].next) {  /* its compute span(s) */
        if (!sp[c].model && sp[c].parent == m) {
            failed |= sp[c].error;
            if (add_events(r, sp[c].events, -1) < 0) return -1;
        }
    }
    if (add_events(r, s->events, -1) < 0) return -1;
    if (code < 0) {  /* stages.frontend_protocol */
        code = 0;
        for (int k = 0; k < N_HTTP && !code; k++) if (row[HTTP_COLS[k]] >= 0) code = 1;
        for (int k = 0; k < N_GRPC && !code; k++) if (row[GRPC_COLS[k]] >= 0) code = 2;
    }
    r->codes[i] = (char)code;
    r->failed[i] = (char)failed;
    PyObject *model = PyDict_GetItem(s->attrs, S_MODEL), *version = PyDict_GetItem(s->attrs, S_VERSION);
    PyObject *key = PyTuple_Pack(2, model, version);
    if (!key) return -1;
    PyObject *h = PyDict_GetItemWithError(r->header_index, key);
    if (h) {
        r->hdr[i] = (int32_t)PyLong_AsLong(h);
    } else {
        Py_ssize_t n = PyList_GET_SIZE(r->headers);
        PyObject *hn = PyErr_Occurred() ? NULL : PyLong_FromSsize_t(n);
        if (!hn || PyDict_SetItem(r->header_index, key, hn) < 0 || PyList_Append(r->headers, key) < 0) {
            Py_XDECREF(hn); Py_DECREF(key);
            return -1;
        }
        Py_DECREF(hn);
        r->hdr[i] = (int32_t)n;
    }
    Py_DECREF(key);
    PyObject *rid = PyDict_GetItem(s->attrs, S_REQUEST);
    if (!rid || !PyUnicode_Check(rid) || PyUnicode_GET_LENGTH(rid) == 0) rid = Py_None;
    if (PyList_Append(r->request_ids, rid) < 0 || PyList_Append(r->trace_ids, w3c) < 0) return -1;
    s->row = i;
    r->n++;
    return 0;
}

/* The checks of spans._span: 0 valid, else the reason's slot + 1; counts unknown names. */
static int check(Sp *s, int64_t now_ns, long *unknown) {
    PyObject *rec = s->rec, *t = PyTuple_GET_ITEM(rec, 0), *sid = PyTuple_GET_ITEM(rec, 1),
             *pid = PyTuple_GET_ITEM(rec, 2), *name = PyTuple_GET_ITEM(rec, 3);
    s->attrs = PyTuple_GET_ITEM(rec, 4);
    s->events = PyTuple_GET_ITEM(rec, 5);
    if (!PyBytes_Check(t) || !PyBytes_Check(sid) || !PyBytes_Check(pid) || !PyUnicode_Check(name) ||
        !PyDict_Check(s->attrs) || !PyList_Check(s->events)) {
        PyErr_SetString(PyExc_TypeError, "not a SpanRecord of bytes, str, dict and list");
        return -1;
    }
    Py_ssize_t pl = PyBytes_GET_SIZE(pid);
    s->tid = (const unsigned char *)PyBytes_AS_STRING(t);
    s->sid = (const unsigned char *)PyBytes_AS_STRING(sid);
    s->pid = (const unsigned char *)PyBytes_AS_STRING(pid);
    s->has_pid = pl != 0;
    if (PyBytes_GET_SIZE(t) != 16 || PyBytes_GET_SIZE(sid) != 8 || (pl != 0 && pl != 8)) return 1;
    int any = 0;
    for (int i = 0; i < 16; i++) any |= s->tid[i];
    if (!any) return 1;
    any = 0;
    for (int i = 0; i < 8; i++) any |= s->sid[i];
    if (!any) return 1;
    PyObject *model = PyDict_GetItemWithError(s->attrs, S_MODEL);
    if (!model && PyErr_Occurred()) return -1;
    s->model = model != NULL;
    if (model || (PyUnicode_CompareWithASCIIString(name, "InferRequest") != 0 &&
                  PyUnicode_CompareWithASCIIString(name, "compute") != 0)) {
        if (!model || !PyUnicode_Check(model) || PyUnicode_GET_LENGTH(model) == 0) return 2;
        int has = PyDict_Contains(s->attrs, S_VERSION);
        if (has < 0) return -1;
        if (!has) return 2;
        PyObject *rid = PyDict_GetItem(s->attrs, S_REQUEST);
        if (PyUnicode_GET_LENGTH(model) > MAX_LABEL || (rid && PyUnicode_Check(rid) && PyUnicode_GET_LENGTH(rid) > MAX_LABEL))
            return 3;
    }
    Py_ssize_t n = PyList_GET_SIZE(s->events);
    long bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(s->events, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(e, 0)) ||
            !PyLong_Check(PyTuple_GET_ITEM(e, 1))) {
            PyErr_SetString(PyExc_TypeError, "an event is not a (name, time) pair");
            return -1;
        }
        int overflow;
        long long ns = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(e, 1), &overflow);
        if (overflow || ns < MIN_WALL || ns > now_ns + MAX_AHEAD) return 4;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name_i = PyTuple_GET_ITEM(PyList_GET_ITEM(s->events, i), 0);
        int c = column_of(name_i);
        if (c == -2) return -1;
        if (c < 0 && !custom_name(name_i)) bad++;
    }
    *unknown += bad;
    PyObject *status = PyTuple_GET_ITEM(rec, 6);
    s->error = PyLong_Check(status) && PyLong_AsLong(status) == 2;  /* STATUS_CODE_ERROR */
    if (PyErr_Occurred()) PyErr_Clear();
    return 0;
}

static void free_rows(Rows *r) {
    PyMem_Free(r->ids); PyMem_Free(r->parents); PyMem_Free(r->stamps); PyMem_Free(r->extra);
    PyMem_Free(r->hdr); PyMem_Free(r->failed); PyMem_Free(r->codes);
    Py_XDECREF(r->headers); Py_XDECREF(r->header_index); Py_XDECREF(r->request_ids);
    Py_XDECREF(r->customs); Py_XDECREF(r->custom_index); Py_XDECREF(r->trace_ids);
}

static PyObject *hex_id(const unsigned char *tid) {
    static const char digits[] = "0123456789abcdef";
    char out[32];
    for (int i = 0; i < 16; i++) { out[2 * i] = digits[tid[i] >> 4]; out[2 * i + 1] = digits[tid[i] & 15]; }
    return PyUnicode_FromStringAndSize(out, 32);
}

/* build(records, now_ns, held, seen, legacy) -> (rejects, keys, duplicates, slow, rows) */
static PyObject *build(PyObject *self, PyObject *args) {
    PyObject *records, *held, *seen, *legacy;
    long long now_ns;
    if (!PyArg_ParseTuple(args, "O!LOOO", &PyList_Type, &records, &now_ns, &held, &seen, &legacy)) return NULL;
    if (!KNOWN) { PyErr_SetString(PyExc_RuntimeError, "configure() first"); return NULL; }
    Py_ssize_t n = PyList_GET_SIZE(records), cap = table_size(n), mask = cap - 1, ngroups = 0;
    long rejects[NREASONS] = {0}, duplicates = 0;
    int use_legacy = PySet_Check(legacy) && PySet_GET_SIZE(legacy) > 0;
    Sp *sp = PyMem_Calloc(n ? n : 1, sizeof(Sp));
    Py_ssize_t *table = PyMem_Calloc(cap, sizeof(Py_ssize_t)), *gtable = PyMem_Calloc(cap, sizeof(Py_ssize_t));
    Group *groups = PyMem_Calloc(n ? n : 1, sizeof(Group));
    Rows r = {0};
    PyObject *keys = PyList_New(0), *slow = PyList_New(0), *result = NULL;
    r.headers = PyList_New(0); r.header_index = PyDict_New(); r.request_ids = PyList_New(0);
    r.customs = PyList_New(0); r.custom_index = PyDict_New(); r.trace_ids = PyList_New(0);
    if (!sp || !table || !gtable || !groups || !keys || !slow || !r.headers || !r.header_index ||
        !r.request_ids || !r.customs || !r.custom_index || !r.trace_ids) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    /* the checks, the duplicate test, and each fresh span's trace */
    for (Py_ssize_t i = 0; i < n; i++) {
        Sp *s = &sp[i];
        s->rec = PyList_GET_ITEM(records, i);
        s->parent = -1; s->row = -1; s->next = -1;
        if (!PyTuple_Check(s->rec) || PyTuple_GET_SIZE(s->rec) != 7) {
            PyErr_SetString(PyExc_TypeError, "not a SpanRecord");
            goto done;
        }
        int why = check(s, now_ns, &rejects[4]);
        if (why < 0) goto done;
        if (why > 0) { rejects[why - 1]++; continue; }
        s->key = span_key(s->tid, s->sid);
        PyObject *k = key_bytes(s->key);
        if (!k) goto done;
        int dup = PySequence_Contains(seen, k);
        if (dup == 0 && find(sp, table, mask, s->key, NULL, NULL) >= 0) dup = 1;
        if (dup == 0 && use_legacy) dup = PySet_Contains(legacy, PyTuple_GET_ITEM(s->rec, 1));
        if (dup < 0 || (dup == 0 && PyList_Append(keys, k) < 0)) { Py_DECREF(k); goto done; }
        Py_DECREF(k);
        if (dup) { duplicates++; continue; }
        s->fresh = 1;
        Py_ssize_t h = (Py_ssize_t)(s->key & (uint64_t)mask);
        while (table[h]) h = (h + 1) & mask;
        table[h] = i + 1;
        uint64_t th = load64(s->tid) ^ (load64(s->tid + 8) * 0x9e3779b97f4a7c15ULL);
        for (h = (Py_ssize_t)(th & (uint64_t)mask);; h = (h + 1) & mask) {
            Py_ssize_t g = gtable[h] - 1;
            if (g < 0) {
                g = ngroups++;
                gtable[h] = g + 1;
                groups[g].first = i; groups[g].last = -1;
            } else if (memcmp(sp[groups[g].first].tid, s->tid, 16) != 0) {
                continue;
            }
            if (groups[g].last >= 0) sp[groups[g].last].next = i;
            groups[g].last = i;
            groups[g].n++;
            groups[g].root |= !s->has_pid;
            s->group = g;
            break;
        }
    }
    /* each trace the request brings whole: its rows */
    int64_t next_id = 1;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        Group *gr = &groups[g];
        int fast = gr->root && gr->n > 1;
        if (fast) {
            int in = PySequence_Contains(held, PyTuple_GET_ITEM(sp[gr->first].rec, 0));
            if (in < 0) goto done;
            fast = !in;
        }
        for (Py_ssize_t i = gr->first; fast && i >= 0; i = sp[i].next) {
            if (sp[i].has_pid) sp[i].parent = find(sp, table, mask, span_key(sp[i].tid, sp[i].pid), sp[i].tid, sp[i].pid);
        }
        for (Py_ssize_t i = gr->first; fast && i >= 0; i = sp[i].next) {
            if (!sp[i].model) continue;
            if (sp[i].parent >= 0) sp[sp[i].parent].above = 1;
            int depth = 0;
            for (Py_ssize_t p = sp[i].parent; p >= 0 && sp[p].model && depth < MAX_DEPTH; p = sp[p].parent) depth++;
            if (depth >= MAX_DEPTH) fast = 0;  /* a chain tree_traces does not order: Python's path */
            sp[i].depth = depth;
        }
        if (!fast) {
            for (Py_ssize_t i = gr->first; i >= 0; i = sp[i].next) {
                PyObject *ix = PyLong_FromSsize_t(i);
                if (!ix || PyList_Append(slow, ix) < 0) { Py_XDECREF(ix); goto done; }
                Py_DECREF(ix);
            }
            continue;
        }
        for (Py_ssize_t i = gr->first; i >= 0; i = sp[i].next) {
            if (sp[i].model) sp[i].row_id = next_id++;
            else if (!(sp[i].parent >= 0 && sp[sp[i].parent].model) && !sp[i].above) rejects[5]++;
        }
        PyObject *w3c = hex_id(sp[gr->first].tid);
        if (!w3c) goto done;
        for (int d = 0; d < MAX_DEPTH; d++) {
            for (Py_ssize_t i = gr->first; i >= 0; i = sp[i].next) {
                if (sp[i].model && sp[i].depth == d && build_row(&r, sp, i, gr->first, w3c) < 0) {
                    Py_DECREF(w3c);
                    goto done;
                }
            }
        }
        Py_DECREF(w3c);
    }
    {
        PyObject *rows = Py_BuildValue(
            "(ny#y#y#y#OOy#OOy#y#)", r.n, (const char *)r.ids, r.n * 8, (const char *)r.parents, r.n * 8,
            (const char *)r.stamps, r.n * NCOLS * 8, (const char *)r.hdr, r.n * 4, r.headers, r.request_ids,
            (const char *)r.extra, r.nx * 24, r.customs, r.trace_ids, r.failed, r.n, r.codes, r.n);
        if (!rows) goto done;
        result = Py_BuildValue("((llllll)OlON)", rejects[0], rejects[1], rejects[2], rejects[3], rejects[4],
                               rejects[5], keys, duplicates, slow, rows);
    }
done:
    PyMem_Free(sp); PyMem_Free(table); PyMem_Free(gtable); PyMem_Free(groups);
    Py_XDECREF(keys); Py_XDECREF(slow);
    free_rows(&r);
    return result;
}

static PyObject *key(PyObject *self, PyObject *args) {
    const char *tid, *sid;
    Py_ssize_t nt, ns;
    if (!PyArg_ParseTuple(args, "y#y#", &tid, &nt, &sid, &ns)) return NULL;
    if (nt != 16 || ns != 8) { PyErr_SetString(PyExc_ValueError, "a 16-byte trace id and an 8-byte span id"); return NULL; }
    return key_bytes(span_key((const unsigned char *)tid, (const unsigned char *)sid));
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "Set the column tables (from exporter/stages.py)."},
    {"build", build, METH_VARARGS, "A request's records -> (rejects, keys, duplicates, slow, rows)."},
    {"key", key, METH_VARARGS, "The 8-byte BLAKE2b key of (trace id, span id)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tree", "OTLP span records -> trace rows.", -1, methods};

PyMODINIT_FUNC PyInit__tree(void) {
    return PyModule_Create(&module);
}
