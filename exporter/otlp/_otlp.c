/* OTLP/HTTP trace bodies -> the receiver's span records (exporter/otlp/decode.py's SpanRecord),
 * without building messages first. Two readers:
 *
 * - protobuf: a wire-format walker over ExportTraceServiceRequest. It accepts and refuses what
 *   the protobuf library's ParseFromString does (truncation, bad tags and lengths, wire types 6
 *   and 7, unbalanced groups, strings that are not UTF-8, nesting past 100), checking every known
 *   field of every message against a table Python builds from opentelemetry-proto's descriptors
 *   (setup()); only the field numbers of the path to the records are written here, and Python
 *   checks them against the same descriptors (FIELDS).
 * - JSON: a parser for OTLP/JSON with the accept/refuse rules of the msgspec decoder it stands
 *   beside (decode.py's Structs, strict=False): unknown fields skipped but well-formed, 64-bit
 *   integers as numbers or text, last duplicate key wins, nulls where the Structs allow them.
 *
 * Both stop at the first error with a one-line ValueError; neither reads past the buffer, and
 * nesting is bounded (skipped JSON values iteratively). decode.py keeps the Python decoders as
 * the reference; tests/test_otlp_decode_c.py holds the two to equal records. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static PyTypeObject *record_type;  /* SpanRecord, given by setup() */

/* ---------------------------------------------------------------- shared */

static int utf8_valid(const unsigned char *s, Py_ssize_t n) {
    const unsigned char *e = s + n;
    while (s < e) {
        unsigned char c = *s;
        if (c < 0x80) { s++; continue; }
        if (c < 0xC2) return 0;
        if (c < 0xE0) {
            if (e - s < 2 || (s[1] & 0xC0) != 0x80) return 0;
            s += 2;
        } else if (c < 0xF0) {
            if (e - s < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
            if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0)) return 0;  /* overlong, surrogate */
            s += 3;
        } else if (c < 0xF5) {
            if (e - s < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
            if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90)) return 0;  /* overlong, > U+10FFFF */
            s += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static int is_ascii(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL) return 0;
    }
    for (; i < n; i++)
        if (s[i] & 0x80) return 0;
    return 1;
}

/* A str from text known to be valid UTF-8. */
static PyObject *make_str(const unsigned char *s, Py_ssize_t n, int ascii) {
    if (!ascii) return PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    PyObject *o = PyUnicode_New(n, 127);
    if (o && n) memcpy(PyUnicode_DATA(o), s, n);
    return o;
}

/* Short strings repeat from span to span (event names, attribute keys, model names): one str
 * each, from a small direct-mapped cache, saves building it again and hashing it again as a
 * dict key later. A miss only replaces the slot. */
#define CACHE_SLOTS 512
#define CACHE_MAX_LEN 48
typedef struct { PyObject *str; Py_ssize_t n; unsigned char bytes[CACHE_MAX_LEN]; } CacheSlot;
static CacheSlot str_cache[CACHE_SLOTS];

static PyObject *cached_str(const unsigned char *s, Py_ssize_t n, int ascii) {
    if (n > CACHE_MAX_LEN || n == 0) return make_str(s, n, ascii);
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
    } else {
        memcpy(&a, s, n);
    }
    uint64_t h = (a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL) ^ (uint64_t)n;
    CacheSlot *c = &str_cache[(h ^ h >> 32) & (CACHE_SLOTS - 1)];
    if (c->str && c->n == n && memcmp(c->bytes, s, n) == 0) {
        Py_INCREF(c->str);
        return c->str;
    }
    PyObject *o = make_str(s, n, ascii);
    if (!o) return NULL;
    Py_INCREF(o);
    Py_XSETREF(c->str, o);
    memcpy(c->bytes, s, n);
    c->n = n;
    return o;
}

static PyObject *int64_text(int64_t v) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    return PyUnicode_FromStringAndSize(buf, n);
}

/* An event's (name, time) tuple; steals both references. It holds only a str and an int, so the
 * cyclic GC need not track it (CPython untracks such tuples itself, but only at a collection). */
static PyObject *event_tuple(PyObject *name, PyObject *t) {
    PyObject *out = name && t ? PyTuple_New(2) : NULL;
    if (!out) {
        Py_XDECREF(name);
        Py_XDECREF(t);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, name);
    PyTuple_SET_ITEM(out, 1, t);
    PyObject_GC_UnTrack(out);
    return out;
}

/* A SpanRecord of the seven fields; steals every reference (NULLs allowed after a failure). */
static PyObject *record(PyObject *f0, PyObject *f1, PyObject *f2, PyObject *f3, PyObject *f4,
                        PyObject *f5, PyObject *f6) {
    PyObject *f[7] = {f0, f1, f2, f3, f4, f5, f6};
    PyObject *r = NULL;
    for (int i = 0; i < 7; i++)
        if (!f[i]) goto fail;
    r = record_type->tp_alloc(record_type, 7);
    if (!r) goto fail;
    for (int i = 0; i < 7; i++) PyTuple_SET_ITEM(r, i, f[i]);
    return r;
fail:
    for (int i = 0; i < 7; i++) Py_XDECREF(f[i]);
    return NULL;
}

/* ------------------------------------------------------------- protobuf */

/* Field kinds of the descriptor table (setup()); K_ONEOF marks a member of a oneof. */
enum { K_NONE = 0, K_VARINT = 1, K_FIXED64 = 2, K_FIXED32 = 3, K_BYTES = 4, K_STRING = 5, K_MESSAGE = 6 };
#define K_ONEOF 8
static const int kind_wire[7] = {-1, 0, 1, 5, 2, 2, 2};

/* The messages on the path to the records: the first entries of the table, in this order. */
enum { M_REQUEST, M_RESOURCE_SPANS, M_SCOPE_SPANS, M_SPAN, M_EVENT, M_KEY_VALUE, M_ANY_VALUE, M_STATUS, M_ROLES };
static const char *role_names[M_ROLES] = {"ExportTraceServiceRequest", "ResourceSpans", "ScopeSpans", "Span",
                                          "Event", "KeyValue", "AnyValue", "Status"};
/* The fields read here: (message, field name, number, kind, message it holds or -1). */
typedef struct { int msg; const char *name; int number, kind, holds; } RoleField;
enum {
    F_RESOURCE_SPANS = 1, F_SCOPE_SPANS = 2, F_SPANS = 2, F_TRACE_ID = 1, F_SPAN_ID = 2, F_PARENT_SPAN_ID = 4,
    F_NAME = 5, F_ATTRIBUTES = 9, F_EVENTS = 11, F_STATUS = 15, F_EVENT_TIME = 1, F_EVENT_NAME = 2,
    F_KEY = 1, F_VALUE = 2, F_STRING_VALUE = 1, F_INT_VALUE = 3, F_CODE = 3,
};
static const RoleField role_fields[] = {
    {M_REQUEST, "resource_spans", F_RESOURCE_SPANS, K_MESSAGE, M_RESOURCE_SPANS},
    {M_RESOURCE_SPANS, "scope_spans", F_SCOPE_SPANS, K_MESSAGE, M_SCOPE_SPANS},
    {M_SCOPE_SPANS, "spans", F_SPANS, K_MESSAGE, M_SPAN},
    {M_SPAN, "trace_id", F_TRACE_ID, K_BYTES, -1},
    {M_SPAN, "span_id", F_SPAN_ID, K_BYTES, -1},
    {M_SPAN, "parent_span_id", F_PARENT_SPAN_ID, K_BYTES, -1},
    {M_SPAN, "name", F_NAME, K_STRING, -1},
    {M_SPAN, "attributes", F_ATTRIBUTES, K_MESSAGE, M_KEY_VALUE},
    {M_SPAN, "events", F_EVENTS, K_MESSAGE, M_EVENT},
    {M_SPAN, "status", F_STATUS, K_MESSAGE, M_STATUS},
    {M_EVENT, "time_unix_nano", F_EVENT_TIME, K_FIXED64, -1},
    {M_EVENT, "name", F_EVENT_NAME, K_STRING, -1},
    {M_KEY_VALUE, "key", F_KEY, K_STRING, -1},
    {M_KEY_VALUE, "value", F_VALUE, K_MESSAGE, M_ANY_VALUE},
    {M_ANY_VALUE, "string_value", F_STRING_VALUE, K_STRING | K_ONEOF, -1},
    {M_ANY_VALUE, "int_value", F_INT_VALUE, K_VARINT | K_ONEOF, -1},
    {M_STATUS, "code", F_CODE, K_VARINT, -1},
};
#define N_ROLE_FIELDS ((int)(sizeof role_fields / sizeof role_fields[0]))

typedef struct { Py_ssize_t nfields; unsigned char *kind, *holds; } Msg;
static Msg *msgs;
static Py_ssize_t nmsgs;
#define PB_MAX_DEPTH 100  /* ParseFromString's limit on nested messages and groups */

typedef struct {
    const uint8_t *base;
    const char *err;
    Py_ssize_t at;
} Pb;

static int pb_fail(Pb *s, const uint8_t *at, const char *msg) {
    if (!s->err) { s->err = msg; s->at = at - s->base; }
    return -1;
}

static inline int pb_varint(Pb *s, const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return pb_fail(s, p, "truncated varint");
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) { *pp = p; *out = v; return 0; }
    }
    return pb_fail(s, *pp, "varint longer than 10 bytes");
}

static inline int pb_tag(Pb *s, const uint8_t **pp, const uint8_t *end, uint32_t *field, int *wt) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    int i;
    for (i = 0; i < 5; i++) {
        if (p >= end) return pb_fail(s, p, "truncated tag");
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) break;
    }
    if (i == 5 || v > 0xffffffffULL) return pb_fail(s, *pp, "tag out of range");
    if ((v >> 3) == 0) return pb_fail(s, *pp, "field number 0");
    *field = (uint32_t)(v >> 3);
    *wt = (int)(v & 7);
    *pp = p;
    return 0;
}

/* A length-delimited field's bytes [*q, *qe). */
static inline int pb_len(Pb *s, const uint8_t **pp, const uint8_t *end, const uint8_t **q, const uint8_t **qe) {
    uint64_t n;
    if (pb_varint(s, pp, end, &n) < 0) return -1;
    if (n > (uint64_t)(end - *pp)) return pb_fail(s, *pp, "length past the end");
    *q = *pp;
    *qe = *pp + n;
    *pp = *qe;
    return 0;
}

static inline int pb_string(Pb *s, const uint8_t *q, const uint8_t *qe, int *ascii) {
    *ascii = is_ascii(q, qe - q);
    if (!*ascii && !utf8_valid(q, qe - q)) return pb_fail(s, q, "string field is not UTF-8");
    return 0;
}

static int pb_message(Pb *s, Py_ssize_t mi, const uint8_t *p, const uint8_t *end, int depth);

static int pb_skip(Pb *s, uint32_t field, int wt, const uint8_t **pp, const uint8_t *end, int depth) {
    uint64_t v;
    const uint8_t *q, *qe;
    switch (wt) {
    case 0: return pb_varint(s, pp, end, &v);
    case 1:
        if (end - *pp < 8) return pb_fail(s, *pp, "truncated fixed64");
        *pp += 8;
        return 0;
    case 5:
        if (end - *pp < 4) return pb_fail(s, *pp, "truncated fixed32");
        *pp += 4;
        return 0;
    case 2: return pb_len(s, pp, end, &q, &qe);
    case 3: {  /* an unknown group: skipped to its end, nested groups included */
        if (depth + 1 > PB_MAX_DEPTH) return pb_fail(s, *pp, "nested too deep");
        for (;;) {
            uint32_t f;
            int w;
            if (*pp >= end) return pb_fail(s, *pp, "group not closed");
            if (pb_tag(s, pp, end, &f, &w) < 0) return -1;
            if (w == 4) return f == field ? 0 : pb_fail(s, *pp, "group closed by another field");
            if (pb_skip(s, f, w, pp, end, depth + 1) < 0) return -1;
        }
    }
    case 4: return pb_fail(s, *pp, "end of a group never opened");
    default: return pb_fail(s, *pp, "invalid wire type");
    }
}

static inline int pb_kind(Py_ssize_t mi, uint32_t field) {
    return field < (uint32_t)msgs[mi].nfields ? msgs[mi].kind[field] : K_NONE;
}

/* One field of message mi whose tag was read: a known field is checked (strings UTF-8, messages
 * walked); one of another wire type than declared is unknown, as for ParseFromString. */
static int pb_field(Pb *s, Py_ssize_t mi, uint32_t field, int wt, const uint8_t **pp, const uint8_t *end, int depth) {
    int k = pb_kind(mi, field) & 7;
    if ((k == K_STRING || k == K_MESSAGE) && wt == 2) {
        const uint8_t *q, *qe;
        int ascii;
        if (pb_len(s, pp, end, &q, &qe) < 0) return -1;
        if (k == K_STRING) return pb_string(s, q, qe, &ascii);
        if (depth + 1 > PB_MAX_DEPTH) return pb_fail(s, q, "nested too deep");
        return pb_message(s, msgs[mi].holds[field], q, qe, depth + 1);
    }
    return pb_skip(s, field, wt, pp, end, depth);
}

static int pb_message(Pb *s, Py_ssize_t mi, const uint8_t *p, const uint8_t *end, int depth) {
    while (p < end) {
        uint32_t f;
        int wt;
        if (pb_tag(s, &p, end, &f, &wt) < 0 || pb_field(s, mi, f, wt, &p, end, depth) < 0) return -1;
    }
    return 0;
}

typedef struct {
    int kind;  /* which member of AnyValue's oneof was set last: 0 none, 1 string, 2 int, 3 another */
    const uint8_t *s;
    Py_ssize_t n;
    int ascii;
    int64_t i;
} AnyValue;

/* AnyValue; several occurrences in one KeyValue merge, as ParseFromString merges them. */
static int pb_any_value(Pb *s, const uint8_t *p, const uint8_t *end, int depth, AnyValue *av) {
    while (p < end) {
        uint32_t f;
        int wt;
        if (pb_tag(s, &p, end, &f, &wt) < 0) return -1;
        if (f == F_STRING_VALUE && wt == 2) {
            const uint8_t *q, *qe;
            if (pb_len(s, &p, end, &q, &qe) < 0 || pb_string(s, q, qe, &av->ascii) < 0) return -1;
            av->kind = 1, av->s = q, av->n = qe - q;
        } else if (f == F_INT_VALUE && wt == 0) {
            uint64_t v;
            if (pb_varint(s, &p, end, &v) < 0) return -1;
            av->kind = 2, av->i = (int64_t)v;
        } else {
            int k = pb_kind(M_ANY_VALUE, f);
            if ((k & K_ONEOF) && kind_wire[k & 7] == wt) av->kind = 3;
            if (pb_field(s, M_ANY_VALUE, f, wt, &p, end, depth) < 0) return -1;
        }
    }
    return 0;
}

static int pb_key_value(Pb *s, const uint8_t *p, const uint8_t *end, int depth, PyObject *attrs) {
    const uint8_t *key = NULL;
    Py_ssize_t nkey = 0;
    int key_ascii = 1;
    AnyValue av = {0, NULL, 0, 1, 0};
    while (p < end) {
        uint32_t f;
        int wt;
        if (pb_tag(s, &p, end, &f, &wt) < 0) return -1;
        if ((f == F_KEY || f == F_VALUE) && wt == 2) {
            const uint8_t *q, *qe;
            if (pb_len(s, &p, end, &q, &qe) < 0) return -1;
            if (f == F_KEY) {
                if (pb_string(s, q, qe, &key_ascii) < 0) return -1;
                key = q, nkey = qe - q;
            } else {
                if (depth + 1 > PB_MAX_DEPTH) return pb_fail(s, q, "nested too deep");
                if (pb_any_value(s, q, qe, depth + 1, &av) < 0) return -1;
            }
        } else if (pb_field(s, M_KEY_VALUE, f, wt, &p, end, depth) < 0) {
            return -1;
        }
    }
    if (nkey < 7 || memcmp(key, "triton.", 7) != 0 || (av.kind != 1 && av.kind != 2)) return 0;
    PyObject *k = cached_str(key, nkey, key_ascii);
    PyObject *v = av.kind == 1 ? cached_str(av.s, av.n, av.ascii) : int64_text(av.i);
    int r = k && v ? PyDict_SetItem(attrs, k, v) : -1;
    Py_XDECREF(k);
    Py_XDECREF(v);
    return r;
}

static PyObject *pb_event(Pb *s, const uint8_t *p, const uint8_t *end, int depth) {
    const uint8_t *name = NULL;
    Py_ssize_t nname = 0;
    int ascii = 1;
    uint64_t t = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        if (pb_tag(s, &p, end, &f, &wt) < 0) return NULL;
        if (f == F_EVENT_TIME && wt == 1) {
            if (end - p < 8) return pb_fail(s, p, "truncated fixed64"), NULL;
            t = 0;
            for (int i = 7; i >= 0; i--) t = (t << 8) | p[i];
            p += 8;
        } else if (f == F_EVENT_NAME && wt == 2) {
            const uint8_t *q, *qe;
            if (pb_len(s, &p, end, &q, &qe) < 0 || pb_string(s, q, qe, &ascii) < 0) return NULL;
            name = q, nname = qe - q;
        } else if (pb_field(s, M_EVENT, f, wt, &p, end, depth) < 0) {
            return NULL;
        }
    }
    return event_tuple(cached_str(name, nname, ascii), PyLong_FromUnsignedLongLong(t));
}

static int pb_status(Pb *s, const uint8_t *p, const uint8_t *end, int depth, int32_t *code) {
    while (p < end) {
        uint32_t f;
        int wt;
        if (pb_tag(s, &p, end, &f, &wt) < 0) return -1;
        if (f == F_CODE && wt == 0) {
            uint64_t v;
            if (pb_varint(s, &p, end, &v) < 0) return -1;
            *code = (int32_t)(uint32_t)v;  /* an int32 enum: ParseFromString keeps the low 32 bits */
        } else if (pb_field(s, M_STATUS, f, wt, &p, end, depth) < 0) {
            return -1;
        }
    }
    return 0;
}

static int pb_span(Pb *s, const uint8_t *p, const uint8_t *end, int depth, PyObject *out) {
    const uint8_t *id[3] = {NULL, NULL, NULL}, *name = NULL;
    Py_ssize_t nid[3] = {0, 0, 0}, nname = 0;
    int name_ascii = 1;
    int32_t code = 0;
    PyObject *attrs = PyDict_New(), *events = PyList_New(0);
    if (!attrs || !events) goto fail;
    while (p < end) {
        uint32_t f;
        int wt;
        if (pb_tag(s, &p, end, &f, &wt) < 0) goto fail;
        if (wt != 2 || !(f == F_TRACE_ID || f == F_SPAN_ID || f == F_PARENT_SPAN_ID || f == F_NAME ||
                         f == F_ATTRIBUTES || f == F_EVENTS || f == F_STATUS)) {
            if (pb_field(s, M_SPAN, f, wt, &p, end, depth) < 0) goto fail;
            continue;
        }
        const uint8_t *q, *qe;
        if (pb_len(s, &p, end, &q, &qe) < 0) goto fail;
        if (f == F_TRACE_ID || f == F_SPAN_ID || f == F_PARENT_SPAN_ID) {
            int i = f == F_TRACE_ID ? 0 : f == F_SPAN_ID ? 1 : 2;
            id[i] = q, nid[i] = qe - q;
            continue;
        }
        if (f == F_NAME) {
            if (pb_string(s, q, qe, &name_ascii) < 0) goto fail;
            name = q, nname = qe - q;
            continue;
        }
        if (depth + 1 > PB_MAX_DEPTH) { pb_fail(s, q, "nested too deep"); goto fail; }
        if (f == F_ATTRIBUTES) {
            if (pb_key_value(s, q, qe, depth + 1, attrs) < 0) goto fail;
        } else if (f == F_EVENTS) {
            PyObject *e = pb_event(s, q, qe, depth + 1);
            if (!e) goto fail;
            int r = PyList_Append(events, e);
            Py_DECREF(e);
            if (r < 0) goto fail;
        } else if (pb_status(s, q, qe, depth + 1, &code) < 0) {
            goto fail;
        }
    }
    PyObject *r = record(PyBytes_FromStringAndSize((const char *)id[0], nid[0]),
                         PyBytes_FromStringAndSize((const char *)id[1], nid[1]),
                         PyBytes_FromStringAndSize((const char *)id[2], nid[2]),
                         cached_str(name, nname, name_ascii), attrs, events, PyLong_FromLong(code));
    if (!r) return -1;
    int rc = PyList_Append(out, r);
    Py_DECREF(r);
    return rc;
fail:
    Py_XDECREF(attrs);
    Py_XDECREF(events);
    return -1;
}

/* The path to the spans: each level reads its own field and checks the others by the table. */
static int pb_level(Pb *s, int level, const uint8_t *p, const uint8_t *end, PyObject *out) {
    static const uint32_t child[3] = {F_RESOURCE_SPANS, F_SCOPE_SPANS, F_SPANS};
    while (p < end) {
        uint32_t f;
        int wt;
        if (pb_tag(s, &p, end, &f, &wt) < 0) return -1;
        if (f == child[level] && wt == 2) {
            const uint8_t *q, *qe;
            if (pb_len(s, &p, end, &q, &qe) < 0) return -1;
            if ((level < 2 ? pb_level(s, level + 1, q, qe, out) : pb_span(s, q, qe, level + 1, out)) < 0) return -1;
        } else if (pb_field(s, level, f, wt, &p, end, level) < 0) {  /* M_REQUEST..M_SCOPE_SPANS are 0..2 */
            return -1;
        }
    }
    return 0;
}

static PyObject *protobuf_records(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (!record_type || !msgs) return PyErr_Format(PyExc_RuntimeError, "setup() was not called");
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    Pb s = {(const uint8_t *)b.buf, NULL, 0};
    PyObject *out = PyList_New(0);
    if (out && pb_level(&s, 0, s.base, s.base + b.len, out) < 0) Py_CLEAR(out);
    PyBuffer_Release(&b);
    if (!out && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "protobuf body is not an ExportTraceServiceRequest: %s at byte %zd",
                     s.err ? s.err : "error", s.at);
    return out;
}

/* ----------------------------------------------------------------- JSON */

#define J_MAX_DEPTH 512  /* objects and arrays in one another, all counted */

typedef struct {
    const unsigned char *p, *end, *base;
    unsigned char *scratch;  /* strings with escapes, decoded */
    Py_ssize_t scap;
    const char *err;
    Py_ssize_t at;
    PyObject *out;
    PyObject *bad;  /* the message for the first span whose ids are not hex (raised at the end) */
    Py_ssize_t bad_at;
} J;

typedef struct { const unsigned char *s; Py_ssize_t n; int ascii; } View;

static int j_fail(J *j, const char *msg) {
    if (!j->err) { j->err = msg; j->at = j->p - j->base; }
    return -1;
}

static inline int j_ws(J *j) {
    const unsigned char *p = j->p, *e = j->end;
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    j->p = p;
    return p < e ? 0 : j_fail(j, "truncated");
}

static int j_reserve(J *j, Py_ssize_t n) {
    if (n <= j->scap) return 0;
    Py_ssize_t cap = j->scap ? j->scap : 256;
    while (cap < n) cap *= 2;
    unsigned char *s = PyMem_Realloc(j->scratch, cap);
    if (!s) { PyErr_NoMemory(); return -1; }
    j->scratch = s, j->scap = cap;
    return 0;
}

static int j_hex4(J *j, unsigned *out) {
    if (j->end - j->p < 4) return j_fail(j, "truncated");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = *j->p;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return j_fail(j, "invalid character in a unicode escape");
        v = v << 4 | (unsigned)d;
        j->p++;
    }
    *out = v;
    return 0;
}

/* One escape after its backslash; its UTF-8 written to dst (when given): the byte count. */
static int j_escape(J *j, unsigned char *dst) {
    if (j->p >= j->end) return j_fail(j, "truncated");
    unsigned char c = *j->p++;
    unsigned cp, lo;
    switch (c) {
    case '"': case '\\': case '/': cp = c; break;
    case 'b': cp = '\b'; break;
    case 'f': cp = '\f'; break;
    case 'n': cp = '\n'; break;
    case 'r': cp = '\r'; break;
    case 't': cp = '\t'; break;
    case 'u':
        if (j_hex4(j, &cp) < 0) return -1;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return j_fail(j, "invalid utf-16 surrogate pair");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (j->end - j->p < 6) return j_fail(j, "truncated");
            if (j->p[0] != '\\' || j->p[1] != 'u') return j_fail(j, "unpaired utf-16 surrogate");
            j->p += 2;
            if (j_hex4(j, &lo) < 0) return -1;
            if (lo < 0xDC00 || lo > 0xDFFF) return j_fail(j, "invalid utf-16 surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10 | (lo - 0xDC00));
        }
        break;
    default:
        j->p--;
        return j_fail(j, "invalid escape in a string");
    }
    if (!dst) return 0;
    if (cp < 0x80) { dst[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { dst[0] = 0xC0 | cp >> 6; dst[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        dst[0] = 0xE0 | cp >> 12; dst[1] = 0x80 | (cp >> 6 & 0x3F); dst[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    dst[0] = 0xF0 | cp >> 18; dst[1] = 0x80 | (cp >> 12 & 0x3F); dst[2] = 0x80 | (cp >> 6 & 0x3F);
    dst[3] = 0x80 | (cp & 0x3F);
    return 4;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define HAS_ZERO(w) (((w) - ONES) & ~(w) & HIGHS)

/* Scans plain string bytes from q to the next '"' or '\\'; NULL at a control character or the end.
 * Eight bytes at a time while none of them is '"', '\\' or a control character. */
static inline const unsigned char *j_plain(J *j, const unsigned char *q, int *ascii) {
    const unsigned char *e = j->end;
    uint64_t any = 0;
    while (e - q >= 8) {
        uint64_t w;
        memcpy(&w, q, 8);
        uint64_t m = HAS_ZERO(w ^ (ONES * '"')) | HAS_ZERO(w ^ (ONES * '\\')) | ((w - ONES * 0x20) & ~w & HIGHS);
        if (m) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* the lowest flagged byte is the first special one (a false flag needs a borrow from below) */
            int i = __builtin_ctzll(m) >> 3;
            if (i) any |= w & (~0ULL >> (64 - 8 * i));
            q += i;
            if (*q >= 0x20) {
                if (any & HIGHS) *ascii = 0;
                return q;
            }
#endif
            break;
        }
        any |= w;
        q += 8;
    }
    if (any & HIGHS) *ascii = 0;
    any = 0;
    for (; q < e; q++) {
        unsigned char c = *q;
        if (c == '"' || c == '\\') { *ascii &= !(any & 0x80); return q; }
        if (c < 0x20) { j->p = q; j_fail(j, "control character in a string"); return NULL; }
        any |= c;
    }
    j->p = q;
    j_fail(j, "truncated");
    return NULL;
}

/* The string at j->p ('"'), its escapes decoded (into scratch when it has any). Its bytes are valid
 * until the next string is read; they are UTF-8 only where the caller checks them. */
static int j_string(J *j, View *v) {
    const unsigned char *s = ++j->p, *q;
    int ascii = 1;
    if (!(q = j_plain(j, s, &ascii))) return -1;
    if (*q == '"') {
        v->s = s, v->n = q - s, v->ascii = ascii;
        j->p = q + 1;
        return 0;
    }
    Py_ssize_t n = 0;
    for (;;) {
        if (j_reserve(j, n + (q - s) + 4) < 0) return -1;
        memcpy(j->scratch + n, s, q - s);
        n += q - s;
        if (*q == '"') {
            v->s = j->scratch, v->n = n, v->ascii = ascii;
            j->p = q + 1;
            return 0;
        }
        j->p = q + 1;
        int w = j_escape(j, j->scratch + n);
        if (w < 0) return -1;
        if (j->scratch[n] & 0x80) ascii = 0;
        n += w;
        s = j->p;
        if (!(q = j_plain(j, s, &ascii))) return -1;
    }
}

static int j_skip_string(J *j) {
    const unsigned char *q = j->p + 1;
    int ascii = 1;
    for (;;) {
        if (!(q = j_plain(j, q, &ascii))) return -1;
        if (*q == '"') { j->p = q + 1; return 0; }
        j->p = q + 1;
        if (j_escape(j, NULL) < 0) return -1;
        q = j->p;
    }
}

/* A string the Structs hold as str: must be UTF-8 (msgspec refuses it otherwise). */
static int j_text(J *j, View *v) {
    if (j_ws(j) < 0) return -1;
    if (*j->p != '"') return j_fail(j, "expected a string");
    if (j_string(j, v) < 0) return -1;
    if (!v->ascii && !utf8_valid(v->s, v->n)) return j_fail(j, "string is not UTF-8");
    return 0;
}

static PyObject *j_str(J *j, View *v) { return cached_str(v->s, v->n, v->ascii); }

static int j_literal(J *j, const char *word, Py_ssize_t n) {
    if (j->end - j->p < n) return j_fail(j, "truncated");
    if (memcmp(j->p, word, n) != 0) return j_fail(j, "invalid character");
    j->p += n;
    return 0;
}

/* 1 (and consumed) when the value at j->p is null, 0 when it is something else, -1 on error. */
static int j_null(J *j) {
    if (j_ws(j) < 0) return -1;
    if (*j->p != 'n') return 0;
    return j_literal(j, "null", 4) < 0 ? -1 : 1;
}

#define IS_DIGIT(c) ((unsigned)((c) - '0') < 10u)

/* A JSON number's extent from s: *stop after it; NULL error message when well-formed. */
static const char *number_extent(const unsigned char *s, const unsigned char *e, const unsigned char **stop,
                                 int *isfloat) {
    const unsigned char *p = s, *q;
    *isfloat = 0;
    if (p < e && *p == '-') p++;
    if (p >= e) return "invalid number";
    if (*p == '0') {
        p++;
        if (p < e && IS_DIGIT(*p)) return "invalid number";
    } else if (IS_DIGIT(*p)) {
        while (p < e && IS_DIGIT(*p)) p++;
    } else {
        return "invalid character";
    }
    if (p < e && *p == '.') {
        for (q = ++p; p < e && IS_DIGIT(*p);) p++;
        if (p == q) return "invalid number";
        *isfloat = 1;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        for (q = p; p < e && IS_DIGIT(*p);) p++;
        if (p == q) return "invalid number";
        *isfloat = 1;
    }
    *stop = p;
    return NULL;
}

/* The int a well-formed number stands for under msgspec's lax rules: integers exactly (at most
 * 4300 characters), other numbers when integral and within 2**53. NULL with *err on refusal. */
static PyObject *number_int(const unsigned char *s, const unsigned char *e, int isfloat, int nonneg, const char **err) {
    int neg = *s == '-';
    char small[64], *buf = small;
    PyObject *out = NULL;
    if (!isfloat) {
        const unsigned char *d = s + neg;
        if (e - d <= 19) {
            uint64_t v = 0;
            for (; d < e; d++) v = v * 10 + (uint64_t)(*d - '0');
            if (!neg) return PyLong_FromUnsignedLongLong(v);
            if (v == 0) return PyLong_FromLong(0);
            if (nonneg) { *err = "integer must be >= 0"; return NULL; }
            if (v <= (uint64_t)INT64_MAX) return PyLong_FromLongLong(-(int64_t)v);
        } else if (neg && nonneg) {
            *err = "integer must be >= 0";
            return NULL;
        }
        if (e - s > 4300) { *err = "integer out of range"; return NULL; }
    }
    if (e - s >= (Py_ssize_t)sizeof small && !(buf = PyMem_Malloc(e - s + 1))) return PyErr_NoMemory();
    memcpy(buf, s, e - s);
    buf[e - s] = 0;
    if (!isfloat) {
        out = PyLong_FromString(buf, NULL, 10);
    } else {
        double x = PyOS_string_to_double(buf, NULL, NULL);
        if (x == -1.0 && PyErr_Occurred()) goto done;
        if (isinf(x)) *err = "number out of range";
        else if (fmod(x, 1.0) != 0.0 || x > 9007199254740992.0 || x < -9007199254740992.0) *err = "expected an integer";
        else if (nonneg && (int64_t)x < 0) *err = "integer must be >= 0";
        else out = PyLong_FromLongLong((int64_t)x);
    }
done:
    if (buf != small) PyMem_Free(buf);
    return out;
}

/* A number in the JSON at j->p, as an int (see number_int). */
static PyObject *j_number_int(J *j, int nonneg) {
    const unsigned char *stop;
    int isfloat;
    const char *err = number_extent(j->p, j->end, &stop, &isfloat);
    if (err) return j_fail(j, err), NULL;
    PyObject *o = number_int(j->p, stop, isfloat, nonneg, &err);
    if (!o && err) return j_fail(j, err), NULL;
    j->p = stop;
    return o;
}

/* An unsigned 64-bit field: a number, or a string holding one (proto3 JSON; strict=False). */
static PyObject *j_u64(J *j) {
    if (j_ws(j) < 0) return NULL;
    if (*j->p != '"') return j_number_int(j, 1);
    View v;
    const unsigned char *start = j->p, *stop;
    int isfloat;
    if (j_string(j, &v) < 0) return NULL;
    const char *err = v.n ? number_extent(v.s, v.s + v.n, &stop, &isfloat) : "expected an integer";
    if (!err && stop != v.s + v.n) err = "expected an integer";
    PyObject *o = err ? NULL : number_int(v.s, stop, isfloat, 1, &err);
    if (!o && err) { j->p = start; j_fail(j, err); }
    return o;
}

/* decode.py's _integer(): decimal text normalised ("007" -> "7", "-0" -> "0"); *out NULL when the
 * text is not an integer (the attribute is dropped). */
static int integer_text(const unsigned char *s, Py_ssize_t n, PyObject **out) {
    int neg = n > 0 && s[0] == '-';
    const unsigned char *d = s + neg, *e = s + n;
    *out = NULL;
    if (d >= e || e - d > 4300) return 0;  /* int() takes at most 4300 digits */
    for (const unsigned char *c = d; c < e; c++)
        if (!IS_DIGIT(*c)) return 0;
    if (*d != '0' || e - d == 1 - neg)  /* already normal: "7", "-7", "0" */
        return (*out = cached_str(s, n, 1)) ? 0 : -1;
    while (d < e - 1 && *d == '0') d++;
    if (*d == '0') neg = 0;
    if (!(*out = PyUnicode_New(e - d + neg, 127))) return -1;
    char *o = PyUnicode_DATA(*out);
    if (neg) *o++ = '-';
    memcpy(o, d, e - d);
    return 0;
}

/* Skips one well-formed value of any type, iteratively: `depth` containers already hold it. */
static int j_skip(J *j, int depth) {
    unsigned char stack[J_MAX_DEPTH];
    int top = 0;
    const unsigned char *stop;
    int isfloat;
value:
    if (j_ws(j) < 0) return -1;
    switch (*j->p) {
    case '"':
        if (j_skip_string(j) < 0) return -1;
        break;
    case '{': case '[':
        if (depth + top + 1 > J_MAX_DEPTH) return j_fail(j, "nested too deep");
        stack[top++] = *j->p++;
        if (j_ws(j) < 0) return -1;
        if (*j->p == (stack[top - 1] == '{' ? '}' : ']')) { j->p++; top--; break; }
        if (stack[top - 1] == '{') goto key;
        goto value;
    case 'n': if (j_literal(j, "null", 4) < 0) return -1; break;
    case 't': if (j_literal(j, "true", 4) < 0) return -1; break;
    case 'f': if (j_literal(j, "false", 5) < 0) return -1; break;
    default: {
        const char *err = number_extent(j->p, j->end, &stop, &isfloat);
        if (err) return j_fail(j, err);
        j->p = stop;
    }
    }
next:
    if (top == 0) return 0;
    if (j_ws(j) < 0) return -1;
    if (*j->p == ',') {
        j->p++;
        if (j_ws(j) < 0) return -1;
        if (stack[top - 1] == '[') {
            if (*j->p == ']') return j_fail(j, "trailing comma in an array");
            goto value;
        }
        goto key;
    }
    if (*j->p != (stack[top - 1] == '{' ? '}' : ']'))
        return j_fail(j, stack[top - 1] == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
    j->p++;
    top--;
    goto next;
key:
    if (*j->p != '"') return j_fail(j, *j->p == '}' ? "trailing comma in an object" : "object keys must be strings");
    if (j_skip_string(j) < 0 || j_ws(j) < 0) return -1;
    if (*j->p != ':') return j_fail(j, "expected ':'");
    j->p++;
    goto value;
}

/* The next key of the object being read (j->p then at its value): 1, or 0 at its end. */
static int j_key(J *j, int *first, View *k) {
    if (j_ws(j) < 0) return -1;
    if (*j->p == '}') { j->p++; return 0; }
    if (!*first) {
        if (*j->p != ',') return j_fail(j, "expected ',' or '}'");
        j->p++;
        if (j_ws(j) < 0) return -1;
    }
    *first = 0;
    if (*j->p != '"') return j_fail(j, *j->p == '}' ? "trailing comma in an object" : "object keys must be strings");
    if (j_string(j, k) < 0 || j_ws(j) < 0) return -1;
    if (*j->p != ':') return j_fail(j, "expected ':'");
    j->p++;
    return 1;
}

/* The next item of the array being read (j->p then at it): 1, or 0 at its end. */
static int j_item(J *j, int *first) {
    if (j_ws(j) < 0) return -1;
    if (*j->p == ']') { j->p++; return 0; }
    if (!*first) {
        if (*j->p != ',') return j_fail(j, "expected ',' or ']'");
        j->p++;
        if (j_ws(j) < 0) return -1;
        if (*j->p == ']') return j_fail(j, "trailing comma in an array");
    }
    *first = 0;
    return 1;
}

#define KEY_IS(k, lit) ((k).n == (Py_ssize_t)sizeof(lit) - 1 && memcmp((k).s, lit, sizeof(lit) - 1) == 0)

/* Enters the container expected at j->p ('{' or '['), counting its depth. */
static int j_open(J *j, unsigned char c, int depth) {
    if (j_ws(j) < 0) return -1;
    if (*j->p != c) return j_fail(j, c == '{' ? "expected an object" : "expected an array");
    if (depth > J_MAX_DEPTH) return j_fail(j, "nested too deep");
    j->p++;
    return 0;
}

/* Value: stringValue and intValue, the only members read (others skipped). */
static int j_value(J *j, int depth, PyObject **sv, PyObject **iv) {
    int first = 1, r, n;
    View k, v;
    if (j_open(j, '{', depth) < 0) return -1;
    while ((r = j_key(j, &first, &k)) > 0) {
        if (KEY_IS(k, "stringValue")) {
            Py_CLEAR(*sv);
            if ((n = j_null(j)) < 0) return -1;
            if (!n && (j_text(j, &v) < 0 || !(*sv = j_str(j, &v)))) return -1;
        } else if (KEY_IS(k, "intValue")) {
            Py_CLEAR(*iv);
            if ((n = j_null(j)) < 0) return -1;
            if (n) continue;
            if (*j->p == '"') {
                if (j_text(j, &v) < 0 || integer_text(v.s, v.n, iv) < 0) return -1;
            } else {
                PyObject *num = j_number_int(j, 0);
                if (!num) return -1;
                *iv = PyObject_Str(num);
                Py_DECREF(num);
                if (!*iv) return -1;
            }
        } else if (j_skip(j, depth) < 0) {
            return -1;
        }
    }
    return r;
}

/* KeyValue: sets attrs[key] for a triton.* key with a string or integer value. */
static int j_key_value(J *j, int depth, PyObject *attrs) {
    int first = 1, r, n, has_value = 0;
    View k, v;
    PyObject *key = NULL, *sv = NULL, *iv = NULL;  /* key: only a triton.* one */
    if (j_open(j, '{', depth) < 0) return -1;
    while ((r = j_key(j, &first, &k)) > 0) {
        if (KEY_IS(k, "key")) {
            Py_CLEAR(key);
            if (j_text(j, &v) < 0) goto fail;
            if (v.n >= 7 && memcmp(v.s, "triton.", 7) == 0 && !(key = j_str(j, &v))) goto fail;
        } else if (KEY_IS(k, "value")) {
            Py_CLEAR(sv);
            Py_CLEAR(iv);
            if ((n = j_null(j)) < 0) goto fail;
            has_value = !n;
            if (has_value && j_value(j, depth + 1, &sv, &iv) < 0) goto fail;
        } else if (j_skip(j, depth) < 0) {
            goto fail;
        }
    }
    if (r == 0 && key && has_value && (sv || iv)) r = PyDict_SetItem(attrs, key, sv ? sv : iv);
    Py_XDECREF(key);
    Py_XDECREF(sv);
    Py_XDECREF(iv);
    return r;
fail:
    Py_XDECREF(key);
    Py_XDECREF(sv);
    Py_XDECREF(iv);
    return -1;
}

static PyObject *j_event(J *j, int depth) {
    int first = 1, r;
    View k, v;
    PyObject *name = NULL, *t = NULL;
    if (j_open(j, '{', depth) < 0) return NULL;
    while ((r = j_key(j, &first, &k)) > 0) {
        if (KEY_IS(k, "name")) {
            Py_CLEAR(name);
            if (j_text(j, &v) < 0 || !(name = j_str(j, &v))) goto fail;
        } else if (KEY_IS(k, "timeUnixNano")) {
            Py_CLEAR(t);
            if (!(t = j_u64(j))) goto fail;
        } else if (j_skip(j, depth) < 0) {
            goto fail;
        }
    }
    if (r < 0) goto fail;
    if (!name && !(name = PyUnicode_New(0, 0))) goto fail;
    if (!t && !(t = PyLong_FromLong(0))) goto fail;
    return event_tuple(name, t);
fail:
    Py_XDECREF(name);
    Py_XDECREF(t);
    return NULL;
}

/* Status: its code as an int (a number, or the enum's name; another name counts as 0). */
static PyObject *j_status(J *j, int depth) {
    int first = 1, r;
    View k, v;
    PyObject *code = NULL;
    if (j_open(j, '{', depth) < 0) return NULL;
    while ((r = j_key(j, &first, &k)) > 0) {
        if (!KEY_IS(k, "code")) {
            if (j_skip(j, depth) < 0) goto fail;
            continue;
        }
        Py_CLEAR(code);
        if (j_ws(j) < 0) goto fail;
        if (*j->p != '"') {
            if (!(code = j_number_int(j, 0))) goto fail;
            continue;
        }
        if (j_text(j, &v) < 0) goto fail;
        code = PyLong_FromLong(KEY_IS(v, "STATUS_CODE_OK") ? 1 : KEY_IS(v, "STATUS_CODE_ERROR") ? 2 : 0);
        if (!code) goto fail;
    }
    if (r < 0) goto fail;
    return code ? code : PyLong_FromLong(0);
fail:
    Py_XDECREF(code);
    return NULL;
}

typedef struct { unsigned char *p; Py_ssize_t n, cap; unsigned char inl[48]; } Buf;

static int buf_set(Buf *b, const View *v) {
    if (v->n > b->cap) {
        unsigned char *p = PyMem_Malloc(v->n);
        if (!p) { PyErr_NoMemory(); return -1; }
        if (b->p != b->inl) PyMem_Free(b->p);
        b->p = p, b->cap = v->n;
    }
    if (v->n) memcpy(b->p, v->s, v->n);
    b->n = v->n;
    return 0;
}

static signed char hex_digit[256];  /* -1: not a hex digit (filled at import) */

/* bytes.fromhex(): pairs of hex digits, ASCII whitespace between them; NULL without an error set
 * when the text is not that. */
static PyObject *from_hex(const Buf *b) {
    PyObject *o = PyBytes_FromStringAndSize(NULL, b->n / 2);
    if (!o) return NULL;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(o);
    Py_ssize_t k = 0, i = 0;
    while (i < b->n) {
        unsigned char c = b->p[i];
        if (c == ' ' || (c >= '\t' && c <= '\r')) { i++; continue; }
        int hi = hex_digit[c], lo = i + 1 < b->n ? hex_digit[b->p[i + 1]] : -1;
        if (hi < 0 || lo < 0) { Py_DECREF(o); return NULL; }
        d[k++] = (unsigned char)(hi << 4 | lo);
        i += 2;
    }
    if (k != b->n / 2 && _PyBytes_Resize(&o, k) < 0) return NULL;
    return o;
}

/* Notes the first span whose ids are not hex; the body is refused at its end, as decode.py does
 * after msgspec has read the whole body. A placeholder keeps the records' positions. */
static int j_bad_ids(J *j, const Buf *tid, const Buf *sid) {
    if (PyList_Append(j->out, Py_None) < 0) return -1;
    if (j->bad) return 0;
    PyObject *t = PyUnicode_DecodeUTF8((const char *)tid->p, tid->n, "strict");
    PyObject *s = PyUnicode_DecodeUTF8((const char *)sid->p, sid->n, "strict");
    PyObject *t40 = t ? PyUnicode_Substring(t, 0, 40) : NULL, *s40 = s ? PyUnicode_Substring(s, 0, 40) : NULL;
    if (t40 && s40) j->bad = PyUnicode_FromFormat("span %R of trace %R: ids must be hex", s40, t40);
    j->bad_at = PyList_GET_SIZE(j->out) - 1;
    Py_XDECREF(t);
    Py_XDECREF(s);
    Py_XDECREF(t40);
    Py_XDECREF(s40);
    return j->bad ? 0 : -1;
}

static int j_span(J *j, int depth) {
    int first = 1, r = -1, n, seen_attrs = 0, seen_events = 0, item;
    View k, v;
    Buf id[3];
    PyObject *name = NULL, *attrs = PyDict_New(), *events = PyList_New(0), *code = NULL;
    for (int i = 0; i < 3; i++) id[i].p = id[i].inl, id[i].n = 0, id[i].cap = sizeof id[i].inl;
    if (!attrs || !events || j_open(j, '{', depth) < 0) goto done;
    while ((r = j_key(j, &first, &k)) > 0) {
        r = -1;
        int which = KEY_IS(k, "traceId") ? 0 : KEY_IS(k, "spanId") ? 1 : KEY_IS(k, "parentSpanId") ? 2 : -1;
        if (which >= 0) {
            if (j_text(j, &v) < 0 || buf_set(&id[which], &v) < 0) goto done;
        } else if (KEY_IS(k, "name")) {
            Py_CLEAR(name);
            if (j_text(j, &v) < 0 || !(name = j_str(j, &v))) goto done;
        } else if (KEY_IS(k, "attributes")) {
            if (seen_attrs++) {
                Py_SETREF(attrs, PyDict_New());
                if (!attrs) goto done;
            }
            if (j_open(j, '[', depth + 1) < 0) goto done;
            for (item = 1; (n = j_item(j, &item)) > 0;) {
                if ((n = j_null(j)) < 0 || (!n && j_key_value(j, depth + 2, attrs) < 0)) goto done;
            }
            if (n < 0) goto done;
        } else if (KEY_IS(k, "events")) {
            if (seen_events++) {
                Py_SETREF(events, PyList_New(0));
                if (!events) goto done;
            }
            if (j_open(j, '[', depth + 1) < 0) goto done;
            for (item = 1; (n = j_item(j, &item)) > 0;) {
                if ((n = j_null(j)) < 0) goto done;
                if (n) continue;
                PyObject *e = j_event(j, depth + 2);
                if (!e) goto done;
                n = PyList_Append(events, e);
                Py_DECREF(e);
                if (n < 0) goto done;
            }
            if (n < 0) goto done;
        } else if (KEY_IS(k, "status")) {
            Py_CLEAR(code);
            if ((n = j_null(j)) < 0 || (!n && !(code = j_status(j, depth + 1)))) goto done;
        } else if (j_skip(j, depth) < 0) {
            goto done;
        }
    }
    if (r < 0) goto done;
    PyObject *tid = from_hex(&id[0]), *sid = tid ? from_hex(&id[1]) : NULL, *pid = sid ? from_hex(&id[2]) : NULL;
    if (!pid) {
        Py_XDECREF(tid);
        Py_XDECREF(sid);
        r = PyErr_Occurred() ? -1 : j_bad_ids(j, &id[0], &id[1]);
        goto done;
    }
    if (!name) name = PyUnicode_New(0, 0);
    if (!code) code = PyLong_FromLong(0);
    PyObject *rec = record(tid, sid, pid, name, attrs, events, code);
    name = attrs = events = code = NULL;
    r = rec ? PyList_Append(j->out, rec) : -1;
    Py_XDECREF(rec);
done:
    for (int i = 0; i < 3; i++)
        if (id[i].p != id[i].inl) PyMem_Free(id[i].p);
    Py_XDECREF(name);
    Py_XDECREF(attrs);
    Py_XDECREF(events);
    Py_XDECREF(code);
    return r;
}

/* A repeated key replaces the earlier list: the records it gave since `mark` are dropped. */
static int j_restart(J *j, Py_ssize_t *mark) {
    if (*mark < 0) { *mark = PyList_GET_SIZE(j->out); return 0; }
    if (j->bad && j->bad_at >= *mark) Py_CLEAR(j->bad);
    return PyList_SetSlice(j->out, *mark, PY_SSIZE_T_MAX, NULL);
}

/* ExportTraceServiceRequest (level 0), ResourceSpans (1), ScopeSpans (2): each reads its list of
 * the next and skips the rest. */
static int j_level(J *j, int level, int depth) {
    static const char *child[3] = {"resourceSpans", "scopeSpans", "spans"};
    int first = 1, r, item, n;
    Py_ssize_t mark = -1;
    View k;
    if (j_open(j, '{', depth) < 0) return -1;
    while ((r = j_key(j, &first, &k)) > 0) {
        if (k.n != (Py_ssize_t)strlen(child[level]) || memcmp(k.s, child[level], k.n) != 0) {
            if (j_skip(j, depth) < 0) return -1;
            continue;
        }
        if (j_restart(j, &mark) < 0 || j_open(j, '[', depth + 1) < 0) return -1;
        for (item = 1; (n = j_item(j, &item)) > 0;)
            if ((level < 2 ? j_level(j, level + 1, depth + 2) : j_span(j, depth + 2)) < 0) return -1;
        if (n < 0) return -1;
    }
    return r;
}

static PyObject *json_records(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (!record_type) return PyErr_Format(PyExc_RuntimeError, "setup() was not called");
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    J j = {b.buf, (const unsigned char *)b.buf + b.len, b.buf, NULL, 0, NULL, 0, PyList_New(0), NULL, 0};
    int ok = j.out && j_level(&j, 0, 1) == 0;
    if (ok) {
        while (j.p < j.end && (*j.p == ' ' || *j.p == '\n' || *j.p == '\r' || *j.p == '\t')) j.p++;
        if (j.p < j.end) ok = 0, j_fail(&j, "trailing characters");
    }
    PyBuffer_Release(&b);
    PyMem_Free(j.scratch);
    if (ok && j.bad) {
        PyErr_SetObject(PyExc_ValueError, j.bad);
        ok = 0;
    }
    Py_XDECREF(j.bad);
    if (ok) return j.out;
    Py_XDECREF(j.out);
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "JSON body is not an ExportTraceServiceRequest: %s at byte %zd",
                     j.err ? j.err : "error", j.at);
    return NULL;
}

/* --------------------------------------------------------------- module */

static void free_tables(void) {
    for (Py_ssize_t i = 0; i < nmsgs; i++) PyMem_Free(msgs[i].kind);
    PyMem_Free(msgs);
    msgs = NULL;
    nmsgs = 0;
}

/* setup(record_type, tables): the SpanRecord class, and per message (the M_* ones first) a bytes
 * of two bytes per field number from 0: its kind (K_*, | K_ONEOF) and the message it holds. */
static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *type, *tables;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &type, &PyTuple_Type, &tables)) return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type))
        return PyErr_Format(PyExc_TypeError, "the record type must be a tuple subclass");
    Py_ssize_t n = PyTuple_GET_SIZE(tables);
    if (n < M_ROLES) return PyErr_Format(PyExc_ValueError, "the table holds %zd messages, fewer than %d", n, M_ROLES);
    Msg *m = PyMem_Calloc(n, sizeof(Msg));
    if (!m) return PyErr_NoMemory();
    free_tables();
    msgs = m;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(tables, i);
        if (!PyBytes_Check(t) || PyBytes_GET_SIZE(t) % 2) {
            free_tables();
            return PyErr_Format(PyExc_ValueError, "table %zd is not bytes of (kind, message) pairs", i);
        }
        Py_ssize_t nf = PyBytes_GET_SIZE(t) / 2;
        unsigned char *kinds = PyMem_Malloc(2 * nf + 1);
        if (!kinds) { free_tables(); return PyErr_NoMemory(); }
        m[i].nfields = nf, m[i].kind = kinds, m[i].holds = kinds + nf;
        nmsgs = i + 1;
        const unsigned char *src = (const unsigned char *)PyBytes_AS_STRING(t);
        for (Py_ssize_t f = 0; f < nf; f++) {
            kinds[f] = src[2 * f], kinds[nf + f] = src[2 * f + 1];
            if ((kinds[f] & 7) > K_MESSAGE || ((kinds[f] & 7) == K_MESSAGE && kinds[nf + f] >= n)) {
                free_tables();
                return PyErr_Format(PyExc_ValueError, "table %zd, field %zd: bad entry", i, f);
            }
        }
    }
    Py_INCREF(type);
    Py_XSETREF(record_type, (PyTypeObject *)type);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", setup, METH_VARARGS, "setup(record_type, tables): the record class and the protobuf descriptor table"},
    {"json_records", json_records, METH_O, "json_records(data) -> list of records of an OTLP/JSON trace body"},
    {"protobuf_records", protobuf_records, METH_O, "protobuf_records(data) -> list of records of a protobuf trace body"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlp", "OTLP trace bodies to span records.", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__otlp(void) {
    for (int c = 0; c < 256; c++)
        hex_digit[c] = (signed char)(c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                     : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1);
    PyObject *m = PyModule_Create(&module);
    PyObject *roles = PyTuple_New(M_ROLES), *fields = PyTuple_New(N_ROLE_FIELDS), *kinds = NULL;
    if (!m || !roles || !fields) goto fail;
    for (int i = 0; i < M_ROLES; i++) PyTuple_SET_ITEM(roles, i, PyUnicode_FromString(role_names[i]));
    for (int i = 0; i < N_ROLE_FIELDS; i++) {
        const RoleField *f = &role_fields[i];
        PyObject *t = Py_BuildValue("(isiiz)", f->msg, f->name, f->number, f->kind,
                                    f->holds >= 0 ? role_names[f->holds] : NULL);
        if (!t) goto fail;
        PyTuple_SET_ITEM(fields, i, t);
    }
    kinds = Py_BuildValue("{sisisisisisisi}", "varint", K_VARINT, "fixed64", K_FIXED64, "fixed32", K_FIXED32,
                          "bytes", K_BYTES, "string", K_STRING, "message", K_MESSAGE, "oneof", K_ONEOF);
    if (!kinds || PyModule_AddObject(m, "ROLES", roles) < 0) goto fail;
    roles = NULL;
    if (PyModule_AddObject(m, "FIELDS", fields) < 0) goto fail;
    fields = NULL;
    if (PyModule_AddObject(m, "KINDS", kinds) < 0) goto fail;
    kinds = NULL;
    if (PyModule_AddIntConstant(m, "JSON_MAX_DEPTH", J_MAX_DEPTH) < 0 ||
        PyModule_AddIntConstant(m, "PROTOBUF_MAX_DEPTH", PB_MAX_DEPTH) < 0) goto fail;
    return m;
fail:
    Py_XDECREF(roles);
    Py_XDECREF(fields);
    Py_XDECREF(kinds);
    Py_XDECREF(m);
    return NULL;
}
