/* pgpool_tw._speedups: the shape key of a simple-protocol query text. */
#include "_speedups.h"

/*
 * Why: the C loop routes a Query by looking its text's shape up in a per-process
 * table `shape key -> routing class` that Python fills, so that pgbench -S's
 * `... WHERE aid = 12345;`, with a new number each time, never enters Python.
 * Python computes the keys it inserts with this same function (shape_key), never
 * with a second implementation.
 *
 * The key is the text with each literal constant replaced by one byte:
 *
 * - SHAPE_INT: a numeric literal PostgreSQL's lexer reads as ICONST (digits only,
 *   value at most 2147483647, leading zeros allowed);
 * - SHAPE_NUMERIC: any other numeric literal (a `.`, an exponent, or too large
 *   for int32: FCONST).  The two are kept apart because the grammar accepts only
 *   an ICONST in places (`char(5)`, `int[3]`, `second(3)`): `char(5.5)` fails to
 *   parse where `char(5)` does not;
 * - SHAPE_STRING: a string literal '...' (with '' inside).
 *
 * Everything else is copied verbatim: identifiers and keywords (case kept,
 * digits in them included), "quoted identifiers", whitespace, operators and
 * punctuation.  The placeholder bytes cannot occur in a text that has a key
 * (control bytes other than tab, newline and return abort), so equal keys mean
 * two texts that differ only in the contents of literals at the same places, and
 * where the lexer saw the same tokens: the same statement shape.
 *
 * "No key" (-1) is always a correct answer (Python classifies the text); a wrong
 * key is a routing bug.  So every construct whose lexing depends on more than the
 * rules above aborts: bytes >= 0x80, control bytes but tab, newline and return,
 * `$` anywhere (dollar quotes, parameters, identifiers with `$`), a backslash
 * anywhere, comments (`--`, slash-star: Python reads those) outside literals, an
 * unterminated literal or quoted identifier, an identifier directly followed by
 * `'` (E'', B'', X'', N'' and typed literals written without a space), `&`
 * directly followed by a quote (U&'' and U&"": their UESCAPE '!' is a literal
 * that changes what the other one means), a number directly followed by an
 * identifier character, `.` or `'` (`1abc`, `0x1F`, `1_000`, `1..2`, `1e`), a `.`
 * followed by a digit outside a number (`.5`, `t.5`), and texts longer than
 * SHAPE_TEXT_MAX.
 *
 * No allocation in shape_key_into; it never reads past n.
 */

#define SHAPE_INT 0x01
#define SHAPE_STRING 0x02
#define SHAPE_NUMERIC 0x03
#define SHAPE_TEXT_MAX 8192 /* classify.py's CACHE_TEXT_LIMIT: longer texts are not cached */

enum {
    K_ABORT = 0, /* must be 0: the table's default */
    K_COPY,      /* whitespace, operators, punctuation */
    K_IDENT,     /* [A-Za-z_] */
    K_DIGIT,
    K_QUOTE,
    K_DQUOTE,
    K_DOT,
    K_DASH,
    K_SLASH,
    K_AMP,
};

static unsigned char kinds[256];
static unsigned char ident_char[256]; /* [A-Za-z0-9_] */
static int kinds_ready = 0;

static void
shape_init(void)
{
    if (kinds_ready)
        return;
    for (int c = 0x20; c < 0x7f; c++)
        kinds[c] = K_COPY;
    kinds['\t'] = kinds['\n'] = kinds['\r'] = K_COPY;
    for (int c = 'a'; c <= 'z'; c++)
        kinds[c] = K_IDENT;
    for (int c = 'A'; c <= 'Z'; c++)
        kinds[c] = K_IDENT;
    kinds['_'] = K_IDENT;
    for (int c = '0'; c <= '9'; c++)
        kinds[c] = K_DIGIT;
    kinds['\''] = K_QUOTE;
    kinds['"'] = K_DQUOTE;
    kinds['.'] = K_DOT;
    kinds['-'] = K_DASH;
    kinds['/'] = K_SLASH;
    kinds['&'] = K_AMP;
    kinds['$'] = K_ABORT;
    kinds['\\'] = K_ABORT;
    kinds[0x7f] = K_ABORT;
    for (int c = 0; c < 256; c++)
        ident_char[c] = kinds[c] == K_IDENT || kinds[c] == K_DIGIT;
    kinds_ready = 1;
}

#define IS_DIGIT(c) ((unsigned)((c) - '0') < 10u)

/* The end of the quoted run opened at text[i] (by '\'' or '"', doubled inside),
   just past its closing quote; -1 if unterminated or holding a byte that aborts. */
static Py_ssize_t
quoted_end(const unsigned char *text, Py_ssize_t n, Py_ssize_t i)
{
    unsigned char q = text[i];
    for (Py_ssize_t j = i + 1; j < n; j++) {
        unsigned char c = text[j];
        if (c == q) {
            if (j + 1 < n && text[j + 1] == q) {
                j++;
                continue;
            }
            return j + 1;
        }
        if (kinds[c] == K_ABORT)
            return -1;
    }
    return -1;
}

Py_ssize_t
shape_key_into(const unsigned char *text, Py_ssize_t n, unsigned char *out)
{
    if (n < 0 || n > SHAPE_TEXT_MAX)
        return -1;
    shape_init();
    Py_ssize_t i = 0, o = 0;
    while (i < n) {
        unsigned char c = text[i];
        switch (kinds[c]) {
        case K_COPY:
            out[o++] = c;
            i++;
            break;
        case K_IDENT: {
            Py_ssize_t j = i + 1;
            while (j < n && ident_char[text[j]])
                j++;
            if (j < n && text[j] == '\'')
                return -1;
            memcpy(out + o, text + i, (size_t)(j - i));
            o += j - i;
            i = j;
            break;
        }
        case K_DIGIT: {
            Py_ssize_t j = i + 1;
            while (j < n && IS_DIGIT(text[j]))
                j++;
            Py_ssize_t int_end = j;
            int is_float = 0;
            if (j < n && text[j] == '.') {
                is_float = 1;
                j++;
                while (j < n && IS_DIGIT(text[j]))
                    j++;
            }
            if (j < n && (text[j] == 'e' || text[j] == 'E')) {
                Py_ssize_t k = j + 1;
                if (k < n && (text[k] == '+' || text[k] == '-'))
                    k++;
                if (k < n && IS_DIGIT(text[k])) {
                    while (k < n && IS_DIGIT(text[k]))
                        k++;
                    j = k;
                    is_float = 1;
                }
                /* else the 'e' follows the number: aborts below */
            }
            if (j < n && (ident_char[text[j]] || text[j] == '.' || text[j] == '\''))
                return -1;
            if (!is_float) {
                Py_ssize_t s = i;
                while (s < int_end - 1 && text[s] == '0')
                    s++;
                Py_ssize_t len = int_end - s;
                is_float = len > 10 || (len == 10 && memcmp(text + s, "2147483647", 10) > 0);
            }
            out[o++] = is_float ? SHAPE_NUMERIC : SHAPE_INT;
            i = j;
            break;
        }
        case K_QUOTE: {
            Py_ssize_t j = quoted_end(text, n, i);
            if (j < 0)
                return -1;
            out[o++] = SHAPE_STRING;
            i = j;
            break;
        }
        case K_DQUOTE: {
            Py_ssize_t j = quoted_end(text, n, i);
            if (j < 0)
                return -1;
            memcpy(out + o, text + i, (size_t)(j - i));
            o += j - i;
            i = j;
            break;
        }
        case K_DOT:
            if (i + 1 < n && IS_DIGIT(text[i + 1]))
                return -1;
            out[o++] = c;
            i++;
            break;
        case K_DASH:
            if (i + 1 < n && text[i + 1] == '-')
                return -1;
            out[o++] = c;
            i++;
            break;
        case K_SLASH:
            if (i + 1 < n && text[i + 1] == '*')
                return -1;
            out[o++] = c;
            i++;
            break;
        case K_AMP:
            if (i + 1 < n && (text[i + 1] == '\'' || text[i + 1] == '"'))
                return -1;
            out[o++] = c;
            i++;
            break;
        default:
            return -1;
        }
    }
    return o;
}

/* shape_key(data) -> bytes | None: Python's way to the same key (see above). */
PyObject *
speedups_shape_key(PyObject *module, PyObject *arg)
{
    unsigned char out[SHAPE_TEXT_MAX + 1];
    Py_ssize_t len;
    if (PyBytes_Check(arg)) {
        len = shape_key_into((const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg),
                             out);
    } else {
        Py_buffer view;
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        len = shape_key_into((const unsigned char *)view.buf, view.len, out);
        PyBuffer_Release(&view);
    }
    if (len < 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)out, len);
}
