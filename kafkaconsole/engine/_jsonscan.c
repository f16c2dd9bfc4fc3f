/*
 * One poll's JSON values as one document, and a one-field filter read from their bytes.
 *
 * scan(values, key, want, max_total) walks every value once and returns (doc, flags):
 *
 *   doc    b"[" + b",".join(values) + b"]", for simdjson to validate in one call;
 *   flags  one byte per value, 1 when its top-level object's last `key` field is the string
 *          `want` (what `orjson.loads(v).get(key) == want` says of a valid value), else 0;
 *          None when key is None.
 *
 * or None whenever it cannot vouch for both, and the caller goes its per-value way:
 * a value that is not bytes, is empty or is not one object or array (a scalar, a byte order
 * mark, anything after its closing bracket), an unterminated string or bracket, an escape in
 * a top-level key or in the filtered field's string (the raw bytes would not be what a decoder
 * reads), or a document longer than max_total.
 *
 * Why doc stands for the values: the walk reads strings (an escape skips the next byte) and
 * brackets the way any JSON parser does, so when it finds each value to be exactly one
 * balanced object or array, the comma written after it is a separator of the outer array.
 * If simdjson then accepts doc, the array has exactly len(values) elements, each one of the
 * values, each valid JSON on its own. The walk itself never decides validity: it assumes
 * nothing simdjson has not checked, and reads no byte outside a value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define NOT_SCANNED (-1)

/* the bytes the walk stops at outside strings */
static const unsigned char STRUCTURAL[256] = {
    ['"'] = 1, ['{'] = 1, ['}'] = 1, ['['] = 1, [']'] = 1, [','] = 1,
};

static inline int
is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* p just after an opening quote: the closing quote, or NULL when the string does not end.
 * *escaped is set when the string holds a backslash. */
static inline const unsigned char *
string_end(const unsigned char *p, const unsigned char *end, int *escaped)
{
#if defined(__SSE2__)
    /* sixteen bytes at a time while sixteen remain (most of an event is inside strings) */
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    while (end - p >= 16) {
        const __m128i block = _mm_loadu_si128((const __m128i *)p);
        const int hits = _mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(block, quote), _mm_cmpeq_epi8(block, backslash)));
        if (hits == 0) {
            p += 16;
            continue;
        }
        p += __builtin_ctz((unsigned)hits);
        if (*p == '"') {
            return p;
        }
        *escaped = 1;
        p += 2;
    }
#endif
    while (p < end) {
        unsigned char c = *p;
        if (c == '"') {
            return p;
        }
        if (c == '\\') {
            *escaped = 1;
            p += 2;
            continue;
        }
        p++;
    }
    return NULL;
}

/* 1 or 0 (the filter's answer; 0 for an array, or with no filter), or NOT_SCANNED. */
static int
scan_value(const unsigned char *s, Py_ssize_t n, const char *key, Py_ssize_t klen,
           const char *want, Py_ssize_t wlen)
{
    const unsigned char *p = s, *end = s + n;
    while (p < end && is_ws(*p)) {
        p++;
    }
    if (p == end || (*p != '{' && *p != '[')) {
        return NOT_SCANNED;
    }
    const int object = *p == '{';
    const int filtering = key != NULL;
    Py_ssize_t depth = 0;
    int key_next = 0; /* at depth 1 of the top object, after '{' or ',': a key comes next */
    int match = 0;
    for (;;) {
        while (p < end && !STRUCTURAL[*p]) {
            p++;
        }
        if (p == end) {
            break;
        }
        unsigned char c = *p;
        if (c == '"') {
            int escaped = 0;
            const unsigned char *q = string_end(p + 1, end, &escaped);
            if (q == NULL) {
                return NOT_SCANNED;
            }
            if (depth == 1 && object && key_next) {
                key_next = 0;
                int ours = 0;
                if (filtering) {
                    if (escaped) {
                        return NOT_SCANNED;
                    }
                    ours = q - (p + 1) == klen && memcmp(p + 1, key, (size_t)klen) == 0;
                }
                p = q + 1;
                while (p < end && is_ws(*p)) {
                    p++;
                }
                if (p == end || *p != ':') {
                    return NOT_SCANNED;
                }
                p++;
                while (p < end && is_ws(*p)) {
                    p++;
                }
                if (ours) {
                    /* a later field of the same name replaces this answer, as in a dict */
                    match = 0;
                    if (p < end && *p == '"') {
                        int vescaped = 0;
                        const unsigned char *r = string_end(p + 1, end, &vescaped);
                        if (r == NULL || vescaped) {
                            return NOT_SCANNED;
                        }
                        match = r - (p + 1) == wlen && memcmp(p + 1, want, (size_t)wlen) == 0;
                        p = r + 1;
                    }
                }
                continue;
            }
            p = q + 1;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
            if (depth == 1) {
                key_next = 1;
            }
        }
        else if (c == '}' || c == ']') {
            depth--;
            if (depth == 0) {
                p++;
                break;
            }
        }
        else if (c == ',' && depth == 1) {
            key_next = 1;
        }
        p++;
    }
    if (depth != 0) {
        return NOT_SCANNED;
    }
    while (p < end && is_ws(*p)) {
        p++;
    }
    if (p != end) {
        return NOT_SCANNED;
    }
    return object ? match : 0;
}

static PyObject *
scan(PyObject *self, PyObject *args)
{
    PyObject *values;
    const char *key = NULL, *want = NULL;
    Py_ssize_t klen = 0, wlen = 0, max_total = 0;
    if (!PyArg_ParseTuple(args, "O!z#z#n", &PyList_Type, &values, &key, &klen, &want, &wlen,
                          &max_total)) {
        return NULL;
    }
    if (key != NULL && want == NULL) {
        PyErr_SetString(PyExc_TypeError, "a key needs a wanted value");
        return NULL;
    }
    const Py_ssize_t n = PyList_GET_SIZE(values);
    if (n == 0) {
        Py_RETURN_NONE;
    }
    PyObject *flags = NULL;
    char *flag = NULL;
    if (key != NULL) {
        flags = PyBytes_FromStringAndSize(NULL, n);
        if (flags == NULL) {
            return NULL;
        }
        flag = PyBytes_AS_STRING(flags);
    }
    Py_ssize_t total = n + 1; /* the brackets and the commas */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(v)) {
            goto not_scanned;
        }
        const Py_ssize_t size = PyBytes_GET_SIZE(v);
        if (size > max_total - total) {
            goto not_scanned;
        }
        total += size;
        int r = scan_value((const unsigned char *)PyBytes_AS_STRING(v), size, key, klen, want,
                           wlen);
        if (r == NOT_SCANNED) {
            goto not_scanned;
        }
        if (flag != NULL) {
            flag[i] = (char)r;
        }
    }
    PyObject *doc = PyBytes_FromStringAndSize(NULL, total);
    if (doc == NULL) {
        Py_XDECREF(flags);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(doc);
    *out++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        const Py_ssize_t size = PyBytes_GET_SIZE(v);
        memcpy(out, PyBytes_AS_STRING(v), (size_t)size);
        out += size;
        *out++ = i + 1 < n ? ',' : ']';
    }
    if (flags == NULL) {
        flags = Py_NewRef(Py_None);
    }
    return Py_BuildValue("(NN)", doc, flags);

not_scanned:
    Py_XDECREF(flags);
    Py_RETURN_NONE;
}

/* runs(flags, first) -> [(first + i, first + j), ...]: the runs of non-zero bytes in flags,
 * as the inclusive offset ranges they stand for when flags[k] is the record at first + k. */
static PyObject *
runs(PyObject *self, PyObject *args)
{
    const char *flag;
    Py_ssize_t n;
    long long first;
    if (!PyArg_ParseTuple(args, "y#L", &flag, &n, &first)) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t i = 0;
    while (i < n) {
        if (!flag[i]) {
            i++;
            continue;
        }
        Py_ssize_t j = i;
        while (j + 1 < n && flag[j + 1]) {
            j++;
        }
        PyObject *range = Py_BuildValue("(LL)", first + (long long)i, first + (long long)j);
        if (range == NULL || PyList_Append(out, range) < 0) {
            Py_XDECREF(range);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(range);
        i = j + 1;
    }
    return out;
}

/* size_bounds(records) -> (largest, smallest) serialized_value_size of the records (aiokafka's
 * ConsumerRecord: -1 for a null value), the raw format's check of a whole poll in one C loop
 * (map(attrgetter) and max() and min() over the sizes cost ~110 ns a record, this ~35). */
static PyObject *size_attr = NULL;

static PyObject *
size_bounds(PyObject *self, PyObject *records)
{
    if (!PyList_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "size_bounds() takes a list of records");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "size_bounds() of no records");
        return NULL;
    }
    long long hi = LLONG_MIN, lo = LLONG_MAX;
    /* the size is read again each turn and the item held: an attribute that runs Python code
     * could change the list */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *item = PyList_GET_ITEM(records, i);
        Py_INCREF(item);
        PyObject *size = PyObject_GetAttr(item, size_attr);
        Py_DECREF(item);
        if (size == NULL) {
            return NULL;
        }
        long long v = PyLong_AsLongLong(size);
        Py_DECREF(size);
        if (v == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (v > hi) {
            hi = v;
        }
        if (v < lo) {
            lo = v;
        }
    }
    return Py_BuildValue("(LL)", hi, lo);
}

static PyMethodDef methods[] = {
    {"runs", runs, METH_VARARGS,
     "runs(flags, first) -> list of (first + i, first + j): the runs of non-zero bytes in "
     "flags as inclusive offset ranges."},
    {"size_bounds", size_bounds, METH_O,
     "size_bounds(records) -> (largest, smallest) serialized_value_size of the records."},
    {"scan", scan, METH_VARARGS,
     "scan(values, key, want, max_total) -> (doc, flags) | None: the values as one JSON array "
     "and, per value, whether its top-level field key is the string want (see _jsonscan.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kafkaconsole.engine._jsonscan",
    "A poll's JSON values as one document, and a one-field filter read from their bytes.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__jsonscan(void)
{
    if (size_attr == NULL) {
        size_attr = PyUnicode_InternFromString("serialized_value_size");
        if (size_attr == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
