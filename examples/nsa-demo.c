/* nsa-demo: one NSA layer over a synthetic sequence, and what it attended to.
 *
 * Builds a layer with seeded random weights (or loads one), runs a prefill
 * over a seeded synthetic input, then reports the gate means, how many
 * tokens each branch read per query against dense attention, checks the
 * selection against the spec's rules and one decode step against the
 * prefill, and draws the selection map of one group as a PNG and as text.
 * Only the public API (nsa.h) is used. The weights are random, so the
 * selection shows what the mechanism does, not what a trained model would
 * pick. doc/demo.md explains the output. */
#include "config.h"
#include "nsa.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef NSA_HAVE_PNG
#include <png.h>
#endif

/* ------------------------------------------------------------ options */
typedef struct preset {
    const char *name;
    const char *about;
    int H, G, dk, dv, D;
    int l, d, l_sel, n, w;
    int64_t S;
} preset;

/* small/paper keep the paper's block sizes (l=32 d=16 l'=64 n=16 w=512);
 * tiny shrinks everything so tests run in milliseconds. */
static const preset presets[] = {
    {"small", "paper block sizes, small heads: seconds on 2 cores", 4, 1, 32, 32, 128, 32,
     16, 64, 16, 512, 2048},
    {"paper", "the paper's configuration (section 4.1): minutes on the reference", 64, 4,
     192, 128, 2048, 32, 16, 64, 16, 512, 4096},
    {"tiny", "for tests: a few blocks, milliseconds", 4, 2, 8, 8, 16, 8, 4, 8, 4, 16, 96},
};
#define N_PRESETS ((int)(sizeof presets / sizeof presets[0]))

typedef struct options {
    const preset *pre;
    int64_t S; /* 0 = the preset's */
    uint64_t seed;
    const char *backend;
    const char *weights, *save_weights, *png;
    int group, quiet;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nsa-demo [options]\n"
            "Runs one NSA layer (random weights) over a synthetic sequence and\n"
            "shows which blocks the selected-attention branch read.\n\n"
            "  --config NAME       preset: small (default), paper, tiny\n"
            "  --seq S             sequence length (default: the preset's)\n"
            "  --seed N            seed for weights and input (default 1)\n"
            "  --backend NAME      backend (default auto; NSA_BACKEND overrides auto)\n"
            "  --weights FILE      load the layer from FILE (safetensors) instead\n"
            "  --save-weights FILE write the layer's weights to FILE\n"
            "  --png FILE          selection map image (default nsa-selection.png;\n"
            "                      '-' writes none)\n"
            "  --group g           which key/value group to draw (default 0)\n"
            "  --quiet             no progress and no text map, just the summary\n"
            "  --backends          list the backends and whether each runs here\n"
            "  --help              this text\n\npresets:\n");
    for (int i = 0; i < N_PRESETS; i++) {
        const preset *p = &presets[i];
        fprintf(f, "  %-6s H=%d G=%d dk=%d dv=%d D=%d l=%d d=%d l'=%d n=%d w=%d S=%lld\n",
                p->name, p->H, p->G, p->dk, p->dv, p->D, p->l, p->d, p->l_sel, p->n, p->w,
                (long long)p->S);
        fprintf(f, "         %s\n", p->about);
    }
}

static int parse_int(const char *opt, const char *s, long long lo, long long hi,
                     long long *out)
{
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) {
        fprintf(stderr, "nsa-demo: %s wants an integer in [%lld, %lld], got '%s'\n", opt,
                lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

/* 0: run; 1: exit 0 (help); 2: usage error. */
static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->pre = &presets[0];
    o->seed = 1;
    o->backend = "auto";
    o->png = "nsa-selection.png";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--backends")) {
            /* registered backends, best first: name, available here, why */
            for (int b = 0; b < nsa_backend_count(); b++) {
                nsa_backend_info info;
                if (nsa_backend_get_info(b, &info) == NSA_OK)
                    printf("%-8s %-3s %s\n", info.name, info.available ? "yes" : "no",
                           info.reason);
            }
            return 1;
        }
        /* Every other option takes a value: "--opt value" or "--opt=value". */
        const char *val = NULL;
        char name[32];
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (strncmp(a, "--", 2) != 0 || nl >= sizeof name) {
            fprintf(stderr, "nsa-demo: unknown argument '%s' (try --help)\n", a);
            return 2;
        }
        memcpy(name, a, nl);
        name[nl] = '\0';
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            fprintf(stderr, "nsa-demo: %s needs a value (try --help)\n", name);
            return 2;
        }
        long long v;
        if (!strcmp(name, "--config")) {
            o->pre = NULL;
            for (int k = 0; k < N_PRESETS; k++)
                if (!strcmp(val, presets[k].name))
                    o->pre = &presets[k];
            if (!o->pre) {
                fprintf(stderr, "nsa-demo: unknown config '%s' (small, paper, tiny)\n", val);
                return 2;
            }
        } else if (!strcmp(name, "--seq")) {
            if (!parse_int(name, val, 1, INT32_MAX, &v))
                return 2;
            o->S = v;
        } else if (!strcmp(name, "--seed")) {
            if (!parse_int(name, val, 0, INT64_MAX, &v))
                return 2;
            o->seed = (uint64_t)v;
        } else if (!strcmp(name, "--group")) {
            if (!parse_int(name, val, 0, 1 << 20, &v))
                return 2;
            o->group = (int)v;
        } else if (!strcmp(name, "--backend")) {
            o->backend = val;
        } else if (!strcmp(name, "--weights")) {
            o->weights = val;
        } else if (!strcmp(name, "--save-weights")) {
            o->save_weights = val;
        } else if (!strcmp(name, "--png")) {
            o->png = strcmp(val, "-") ? val : NULL;
        } else {
            fprintf(stderr, "nsa-demo: unknown option '%s' (try --help)\n", name);
            return 2;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ helpers */
static double now_s(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int g_quiet;
static double g_phase_start;

static void phase_begin(const char *what)
{
    g_phase_start = now_s();
    fflush(stdout); /* keep the summary and the progress lines in order */
    if (!g_quiet) {
        fprintf(stderr, "[demo] %s ...\n", what);
        fflush(stderr);
    }
}

static double phase_end(const char *what)
{
    double dt = now_s() - g_phase_start;
    fflush(stdout);
    if (!g_quiet)
        fprintf(stderr, "[demo] %s: done in %.2f s\n", what, dt);
    return dt;
}

/* splitmix64: a small seeded generator for the input (the weights come from
 * nsa_layer_init_random). */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s) /* in [-1, 1) */
{
    return (float)((double)(rng_next(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* The input: a component shared by all tokens (real hidden states have
 * such common directions; through RoPE it makes scores depend on distance),
 * a motif of P tokens repeated along the sequence, and noise. P is not a
 * multiple of l', so repeats land at shifting offsets inside the selection
 * blocks. Returns P, or 0 when out of memory. */
static int make_input(float *x, int64_t S, int D, int l_sel, uint64_t seed)
{
    int P = 3 * l_sel + l_sel / 2 + 1;
    uint64_t s = seed ^ 0xD1B54A32D192ED03ull;
    float *motif = malloc(((size_t)P + 1) * (size_t)D * sizeof *motif);
    if (!motif)
        return 0;
    float *common = motif + (size_t)P * D;
    for (size_t i = 0; i < (size_t)P * (size_t)D; i++)
        motif[i] = 1.5f * rng_uniform(&s);
    for (int i = 0; i < D; i++)
        common[i] = 3.0f * rng_uniform(&s);
    for (int64_t t = 0; t < S; t++)
        for (int i = 0; i < D; i++)
            x[t * D + i] = common[i] + motif[(t % P) * D + i] + 0.3f * rng_uniform(&s);
    free(motif);
    return P;
}

/* ------------------------------------------------------ selection map */
enum { CELL_HIDDEN = 0, CELL_SKIPPED = 1, CELL_SELECTED = 2, CELL_FORCED = 3, CELL_KINDS };

/* Forced blocks of spec 3: the n_init first and the n_local ending at t's. */
static int is_forced(const nsa_config *a, int64_t t, int j)
{
    int64_t cur = t / a->l_sel;
    return j < a->n_init || (j <= cur && j > cur - a->n_local);
}

/* How many of the blocks 0..cur are forced for a query in block cur. */
static int forced_count(const nsa_config *a, int64_t cur)
{
    int64_t init = a->n_init < cur + 1 ? a->n_init : cur + 1;
    int64_t lo = cur - a->n_local + 1; /* local blocks lo..cur, minus init */
    if (lo < init)
        lo = init;
    return (int)(init + (cur >= lo ? cur - lo + 1 : 0));
}

/* Checks every selection row against the rules of spec 3: indices visible
 * and strictly ascending, -1 only as trailing padding, min(n, visible)
 * entries, every forced block present. Returns the number of bad rows. */
static int64_t selection_check(const nsa_config *a, const int32_t *sel, int64_t S)
{
    int64_t bad = 0;
    for (int64_t t = 0; t < S; t++) {
        int64_t vis = t / a->l_sel + 1;
        for (int g = 0; g < a->G; g++) {
            const int32_t *row = sel + ((size_t)t * a->G + g) * a->n;
            int count = 0, forced = 0, ok = 1;
            for (int k = 0; k < a->n; k++) {
                if (row[k] < 0) {
                    ok &= k + 1 == a->n || row[k + 1] < 0;
                    continue;
                }
                ok &= row[k] < vis && (k == 0 || row[k - 1] < row[k]);
                count++;
                forced += is_forced(a, t, row[k]);
            }
            ok &= count == (vis < a->n ? vis : a->n) && forced == forced_count(a, vis - 1);
            bad += !ok;
        }
    }
    return bad;
}

/* The selection map of one group, binned: cols x rows bins over queries
 * (x) and selection blocks (y), each with the count of its cells of each
 * kind. Its size is bounded by the bins, not by S x blocks. */
typedef struct selgrid {
    int cols, rows;
    int64_t *k; /* [rows][cols][CELL_KINDS] */
} selgrid;

static int selgrid_build(selgrid *m, const nsa_config *a, const int32_t *sel, int64_t S,
                         int g, int max_cols, int max_rows)
{
    int nb = (int)((S + a->l_sel - 1) / a->l_sel);
    m->cols = S < max_cols ? (int)S : max_cols;
    m->rows = nb < max_rows ? nb : max_rows;
    m->k = calloc((size_t)m->cols * m->rows * CELL_KINDS, sizeof *m->k);
    int *first = malloc(((size_t)m->rows + 1) * sizeof *first); /* row r: blocks first[r].. */
    if (!m->k || !first) {
        free(first);
        return 0;
    }
    for (int r = 0; r <= m->rows; r++)
        first[r] = (int)(((int64_t)r * nb + m->rows - 1) / m->rows);
    for (int64_t t = 0; t < S; t++) {
        int64_t *col = m->k + (size_t)(t * m->cols / S) * CELL_KINDS;
        int vis = (int)(t / a->l_sel) + 1;
        for (int r = 0; r < m->rows; r++) {
            int64_t *cell = col + (size_t)r * m->cols * CELL_KINDS;
            int in = vis - first[r], size = first[r + 1] - first[r];
            in = in < 0 ? 0 : in > size ? size : in;
            cell[CELL_HIDDEN] += size - in;
            cell[CELL_SKIPPED] += in;
        }
        const int32_t *row = sel + ((size_t)t * a->G + g) * a->n;
        for (int k = 0; k < a->n; k++) {
            if (row[k] < 0)
                continue;
            int r = (int)((int64_t)row[k] * m->rows / nb);
            int64_t *cell = col + (size_t)r * m->cols * CELL_KINDS;
            cell[CELL_SKIPPED]--;
            cell[is_forced(a, t, row[k]) ? CELL_FORCED : CELL_SELECTED]++;
        }
    }
    free(first);
    return 1;
}

static const int64_t *selgrid_at(const selgrid *m, int r, int c)
{
    return m->k + ((size_t)r * m->cols + c) * CELL_KINDS;
}

static void print_text_map(const selgrid *m, int g, int64_t S, int nb)
{
    printf("\nselection map, group %d: %d blocks (%d rows, block 0 on top) x %lld queries "
           "(%d columns)\n",
           g, nb, m->rows, (long long)S, m->cols);
    printf("  '=' forced; share of the cell selected by score: '#' >= 3/4, '+' >= 1/2,\n"
           "  ':' >= 1/4, '.' less; ' ' block not yet visible\n");
    for (int r = 0; r < m->rows; r++) {
        printf("  %4d |", (int)(((int64_t)r * nb + m->rows - 1) / m->rows));
        for (int c = 0; c < m->cols; c++) {
            const int64_t *k = selgrid_at(m, r, c);
            int64_t all = k[0] + k[1] + k[2] + k[3], vis = all - k[CELL_HIDDEN];
            char ch;
            if (2 * k[CELL_HIDDEN] > all)
                ch = ' ';
            else if (2 * k[CELL_FORCED] >= vis)
                ch = '=';
            else if (4 * k[CELL_SELECTED] >= 3 * vis)
                ch = '#';
            else if (2 * k[CELL_SELECTED] >= vis)
                ch = '+';
            else if (4 * k[CELL_SELECTED] >= vis)
                ch = ':';
            else
                ch = '.';
            putchar(ch);
        }
        printf("|\n");
    }
    printf("        query position 0 .. %lld ->\n", (long long)S - 1);
}

#ifdef NSA_HAVE_PNG
/* The image of a grid of at most 1024 x 512 bins: each pixel mixes the
 * colours of its bin's cells; small grids are scaled up. Returns an RGB
 * buffer of *w x *h pixels (NULL when out of memory). */
static unsigned char *render_map(const selgrid *m, int *w, int *h)
{
    static const double colour[CELL_KINDS][3] = {
        {215, 215, 215}, /* not yet visible: light grey */
        {255, 255, 255}, /* visible, not selected: white */
        {20, 30, 90},    /* selected by score: dark blue */
        {205, 95, 20},   /* forced (initial / local): orange */
    };
    int xrep = m->cols < 1024 ? 1024 / m->cols : 1;
    int yrep = m->rows < 512 ? 512 / m->rows : 1;
    if (yrep > 16)
        yrep = 16;
    size_t W = (size_t)m->cols * xrep, stride = W * 3;
    unsigned char *img = malloc(stride * (size_t)m->rows * yrep);
    if (!img)
        return NULL;
    for (int r = 0; r < m->rows; r++) {
        unsigned char *line = img + stride * (size_t)r * yrep;
        for (int c = 0; c < m->cols; c++) {
            const int64_t *k = selgrid_at(m, r, c);
            double all = (double)(k[0] + k[1] + k[2] + k[3]);
            for (int ch = 0; ch < 3; ch++) {
                double v = 0;
                for (int kind = 0; kind < CELL_KINDS; kind++)
                    v += colour[kind][ch] * (double)k[kind] / all;
                for (int x = 0; x < xrep; x++)
                    line[((size_t)c * xrep + x) * 3 + ch] = (unsigned char)lround(v);
            }
        }
        for (int y = 1; y < yrep; y++)
            memcpy(line + stride * y, line, stride);
    }
    *w = (int)W;
    *h = m->rows * yrep;
    return img;
}

/* libpng reports errors by longjmp, so this function keeps no state of its
 * own that changes after setjmp. */
static int write_png(const char *path, const unsigned char *rgb, int w, int h)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
        fclose(f);
        return 0;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return fclose(f) == 0;
}
#endif

/* ------------------------------------------------------ the summary */
/* Tokens each branch reads for query t of group g (the units of spec 7). */
static int64_t slc_tokens(const nsa_config *a, const int32_t *row, int64_t t)
{
    int64_t sum = 0;
    for (int k = 0; k < a->n; k++) {
        if (row[k] < 0)
            continue;
        int64_t lo = (int64_t)row[k] * a->l_sel, hi = lo + a->l_sel;
        if (hi > t + 1)
            hi = t + 1;
        if (hi > lo)
            sum += hi - lo;
    }
    return sum;
}

typedef struct counts {
    double cmp, slc, win, dense;
} counts;

static void print_counts_row(const char *label, counts c)
{
    double nsa = c.cmp + c.slc + c.win;
    printf("  %-18s %9.1f %9.1f %9.1f %9.1f %9.1f %8.2fx\n", label, c.cmp, c.slc, c.win,
           nsa, c.dense, c.dense / nsa);
}

/* Averages over all queries and the last position; slc is averaged over the
 * groups. A progress line appears only once the count takes over a second
 * (millions of queries). */
static void summarize_counts(const nsa_config *a, const int32_t *sel, int64_t S)
{
    counts mean = {0, 0, 0, 0}, last = {0, 0, 0, 0};
    int shown = 0;
    double t0 = now_s();
    for (int64_t t = 0; t < S; t++) {
        counts c;
        c.cmp = nsa_n_cmp(a, t);
        c.slc = 0;
        for (int g = 0; g < a->G; g++)
            c.slc += (double)slc_tokens(a, sel + ((size_t)t * a->G + g) * a->n, t);
        c.slc /= a->G;
        c.win = (double)(t + 1 < a->w ? t + 1 : a->w);
        c.dense = (double)(t + 1);
        mean.cmp += c.cmp;
        mean.slc += c.slc;
        mean.win += c.win;
        mean.dense += c.dense;
        last = c;
        if (!g_quiet && t % 65536 == 65535 && (shown || now_s() - t0 > 1.0)) {
            fprintf(stderr, "\r[demo] counting tokens read: %lld / %lld queries",
                    (long long)t + 1, (long long)S);
            shown = 1;
        }
    }
    if (shown)
        fprintf(stderr, "\r[demo] counting tokens read: %lld / %lld queries in %.1f s\n",
                (long long)S, (long long)S, now_s() - t0);
    mean.cmp /= (double)S;
    mean.slc /= (double)S;
    mean.win /= (double)S;
    mean.dense /= (double)S;
    printf("\ntokens read per query and key/value group (slc: mean over groups)\n");
    printf("  %-18s %9s %9s %9s %9s %9s %9s\n", "", "cmp", "slc", "win", "nsa", "dense",
           "dense/nsa");
    print_counts_row("mean over queries", mean);
    char label[40];
    snprintf(label, sizeof label, "last (t=%lld)", (long long)S - 1);
    print_counts_row(label, last);
    /* Longer contexts are where the sparsity pays: the same counts from the
     * formulas alone, every selected block complete (not from a run). */
    const int64_t far = 65536;
    if (S < far) {
        int64_t nsel = far / a->l_sel < a->n ? far / a->l_sel : a->n;
        counts f = {(double)nsa_n_cmp(a, far - 1), (double)(nsel * a->l_sel),
                    (double)(a->w < far ? a->w : far), (double)far};
        snprintf(label, sizeof label, "t=%lld (formula)", (long long)far - 1);
        print_counts_row(label, f);
    }
    printf("  (cmp = compressed tokens n_cmp(t); slc = tokens of the selected blocks\n"
           "   <= t; win = min(w, t+1); dense = t+1, what full attention reads)\n");
}

static void print_gate_means(const float *gates, int64_t S, int H)
{
    double m[3] = {0, 0, 0};
    for (int64_t i = 0; i < S * H; i++)
        for (int c = 0; c < 3; c++)
            m[c] += gates[i * 3 + c];
    printf("gate means        : cmp %.3f  slc %.3f  win %.3f  (over %lld tokens x %d "
           "heads)\n",
           m[0] / (double)(S * H), m[1] / (double)(S * H), m[2] / (double)(S * H),
           (long long)S, H);
}

/* Rough GFLOP of one prefill (2 per multiply-add of the projections and of
 * the attention), to tell the user what is coming. */
static double prefill_gflop(const nsa_layer_config *lc, int64_t S)
{
    const nsa_config *a = &lc->attn;
    double proj = (double)lc->D * ((double)a->H * a->dk + (double)a->H * a->dv +
                                   (lc->shared_kv ? 1.0 : 3.0) * a->G * (a->dk + a->dv));
    double per_tok = (double)a->n * a->l_sel + a->w;
    double attn = 0;
    for (int64_t t = 0; t < S; t += 64) {
        double len = (double)(t + 1);
        double r = nsa_n_cmp(a, t) + (per_tok < len ? per_tok : len);
        attn += 64.0 * r * a->H * (a->dk + a->dv);
    }
    return 2.0 * ((double)S * proj + attn) * 1e-9;
}

static int fail(nsa_context *ctx, const char *what, nsa_status s)
{
    fprintf(stderr, "nsa-demo: %s failed: %s (%s)\n", what, nsa_strerror(s),
            ctx ? nsa_context_last_error(ctx) : "");
    return 1;
}

/* Which token the decode check steps to: by n l' + w every branch reads
 * its full share, and a step that emits a compressed token is the harder
 * case of spec 7; later tokens would only make the check slower. */
static int64_t decode_check_position(const nsa_config *a, int64_t S)
{
    int64_t t = (int64_t)a->n * a->l_sel + a->w - 1;
    if (t > S - 1)
        t = S - 1;
    int64_t e = t;
    while (e >= a->l - 1 && (e + 1 - a->l) % a->d != 0)
        e--;
    return e >= a->l - 1 ? e : t;
}

/* Spec 7's invariant at position t: a decode step after a prefill of the
 * first t tokens gives the prefill's output row t (within spec 9), and the
 * library's read counters match the ones counted here from the prefill's
 * selection. Returns 0 when both hold. */
static int decode_check(nsa_context *ctx, nsa_layer *layer, const float *x, const float *y,
                        const int32_t *sel, int64_t t)
{
    const nsa_layer_config *lc = nsa_layer_get_config(layer);
    const nsa_config *a = &lc->attn;
    const int D = lc->D;
    nsa_decode_state *st = NULL;
    float *yt = malloc((size_t)D * sizeof *yt);
    int rc = 1;
    nsa_status s = yt ? nsa_decode_create(layer, 1, t + 1, &st) : NSA_ERR_NOMEM;
    if (s == NSA_OK && t > 0)
        s = nsa_decode_prefill(st, 0, x, t, NULL); /* caches only */
    if (s == NSA_OK)
        s = nsa_decode_step(layer, st, x + (size_t)t * D, yt, NULL);
    if (s != NSA_OK) {
        fail(ctx, "decode", s);
        goto out;
    }
    double num = 0, den = 0;
    for (int i = 0; i < D; i++) {
        double e = (double)yt[i] - (double)y[(size_t)t * D + i];
        num += e * e;
        den += (double)y[(size_t)t * D + i] * y[(size_t)t * D + i];
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    int counters_ok = 1;
    nsa_decode_counters c;
    for (int g = 0; g < a->G; g++) {
        s = nsa_decode_get_counters(st, 0, g, &c);
        if (s != NSA_OK) {
            fail(ctx, "nsa_decode_get_counters", s);
            goto out;
        }
        int64_t slc = slc_tokens(a, sel + ((size_t)t * a->G + g) * a->n, t);
        if (c.t != t || c.cmp != nsa_n_cmp(a, t) || c.slc != slc ||
            c.win != (t + 1 < a->w ? t + 1 : a->w) || c.dense != t + 1) {
            fprintf(stderr,
                    "nsa-demo: group %d: decode counters t=%lld cmp=%lld slc=%lld win=%lld "
                    "dense=%lld; the prefill's selection gives slc=%lld\n",
                    g, (long long)c.t, (long long)c.cmp, (long long)c.slc, (long long)c.win,
                    (long long)c.dense, (long long)slc);
            counters_ok = 0;
        }
    }
    /* Decode and prefill must agree like two backends do (spec 7, 9). */
    int out_ok = rel <= 1e-5;
    int emits = t + 1 >= a->l && (t + 1 - a->l) % a->d == 0;
    printf("decode check      : a step to t=%lld%s after a %lld-token prefill:\n"
           "                    relative L2 %.1e from the prefill's row (%s 1e-5), "
           "counters %s\n",
           (long long)t, emits ? " (emits a compressed token)" : "", (long long)t, rel,
           out_ok ? "<=" : "ABOVE", counters_ok ? "agree" : "DIFFER");
    rc = !(out_ok && counters_ok);
out:
    nsa_decode_free(st);
    free(yt);
    return rc;
}

/* ------------------------------------------------------------ main */
int main(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    g_quiet = o.quiet;

    nsa_context *ctx = NULL;
    nsa_layer *layer = NULL;
    float *x = NULL, *y = NULL, *gates = NULL;
    int32_t *sel = NULL;
    selgrid text = {0, 0, NULL}, image = {0, 0, NULL};
    char msg[256];
    int status = 1;
    nsa_status s;

    s = nsa_context_create(o.backend, &ctx, msg, sizeof msg);
    if (s != NSA_OK) {
        fprintf(stderr, "nsa-demo: backend '%s': %s\n", o.backend, msg);
        return 1;
    }

    if (o.weights) {
        phase_begin("loading weights");
        s = nsa_layer_load(ctx, o.weights, &layer);
        if (s != NSA_OK) {
            fail(ctx, "nsa_layer_load", s);
            goto out;
        }
        phase_end("loading weights");
    } else {
        nsa_layer_config lc = nsa_layer_config_default();
        const preset *p = o.pre;
        lc.attn.H = p->H;
        lc.attn.G = p->G;
        lc.attn.dk = p->dk;
        lc.attn.dv = p->dv;
        lc.attn.l = p->l;
        lc.attn.d = p->d;
        lc.attn.l_sel = p->l_sel;
        lc.attn.n = p->n;
        lc.attn.w = p->w;
        lc.D = p->D;
        lc.rope_dim = p->dk;
        if (nsa_layer_config_validate(&lc, msg, sizeof msg) != NSA_OK) {
            fprintf(stderr, "nsa-demo: preset '%s' is invalid: %s\n", p->name, msg);
            goto out;
        }
        phase_begin("creating the layer (random weights)");
        s = nsa_layer_create(ctx, &lc, &layer);
        if (s == NSA_OK)
            s = nsa_layer_init_random(layer, o.seed);
        if (s != NSA_OK) {
            fail(ctx, "creating the layer", s);
            goto out;
        }
        phase_end("creating the layer (random weights)");
    }
    if (o.save_weights) {
        phase_begin("saving weights");
        s = nsa_layer_save(layer, o.save_weights);
        if (s != NSA_OK) {
            fail(ctx, "nsa_layer_save", s);
            goto out;
        }
        phase_end("saving weights");
    }

    const nsa_layer_config *lc = nsa_layer_get_config(layer);
    const nsa_config *a = &lc->attn;
    int64_t S = o.S ? o.S : o.pre->S;
    if (o.group >= a->G) {
        fprintf(stderr, "nsa-demo: --group %d: the layer has G=%d groups (0..%d)\n", o.group,
                a->G, a->G - 1);
        status = 2;
        goto out;
    }

    printf("libnsa %s demo\n", nsa_version_string());
    printf("backend           : %s\n", nsa_context_backend(ctx));
    printf("config            : %s: H=%d G=%d dk=%d dv=%d D=%d l=%d d=%d l'=%d n=%d "
           "(n_init %d, n_local %d) w=%d\n",
           o.weights ? o.weights : o.pre->name, a->H, a->G, a->dk, a->dv, lc->D, a->l, a->d,
           a->l_sel, a->n, a->n_init, a->n_local, a->w);

    size_t xs = (size_t)S * (size_t)lc->D;
    x = malloc(xs * sizeof *x);
    y = malloc(xs * sizeof *y);
    gates = malloc((size_t)S * a->H * 3 * sizeof *gates);
    sel = malloc((size_t)S * a->G * a->n * sizeof *sel);
    if (!x || !y || !gates || !sel) {
        fprintf(stderr, "nsa-demo: out of memory for S=%lld\n", (long long)S);
        goto out;
    }
    int P = make_input(x, S, lc->D, a->l_sel, o.seed);
    if (!P) {
        fprintf(stderr, "nsa-demo: out of memory\n");
        goto out;
    }
    printf("input             : S=%lld tokens, seed %llu: a shared component, a %d-token "
           "motif repeated, noise\n",
           (long long)S, (unsigned long long)o.seed, P);

    double gf = prefill_gflop(lc, S);
    if (!o.quiet)
        fprintf(stderr, "[demo] prefill: about %.1f GFLOP; it is one library call, so "
                        "there is no progress inside it\n",
                gf);
    /* A long prefill is one silent call: time a short prefix first and
     * extrapolate by the work estimate, so the wait has a rough end. */
    const int64_t calib = 256;
    if (!o.quiet && gf > 20.0 && S > 4 * calib) {
        phase_begin("calibration: prefill of the first 256 tokens");
        s = nsa_layer_forward(layer, x, calib, NULL, 1, y, NULL);
        if (s != NSA_OK) {
            fail(ctx, "nsa_layer_forward", s);
            goto out;
        }
        double tc = phase_end("calibration: prefill of the first 256 tokens");
        double est = tc * gf / prefill_gflop(lc, calib);
        time_t end = time(NULL) + (time_t)est;
        char when[16];
        strftime(when, sizeof when, "%H:%M:%S", localtime(&end));
        fprintf(stderr, "[demo] the full prefill should take roughly %.0f s (until about %s)\n",
                est, when);
    }
    nsa_layer_aux aux;
    memset(&aux, 0, sizeof aux); /* only the gates and the selection */
    aux.gates = gates;
    aux.selection = sel;
    phase_begin("prefill (nsa_layer_forward)");
    s = nsa_layer_forward(layer, x, S, NULL, 1, y, &aux);
    if (s != NSA_OK) {
        fail(ctx, "nsa_layer_forward", s);
        goto out;
    }
    double dt = phase_end("prefill (nsa_layer_forward)");
    printf("prefill           : %.2f s (%.1f GFLOP/s by the estimate above)\n", dt,
           dt > 0 ? gf / dt : 0.0);

    size_t nonfinite = 0;
    for (size_t i = 0; i < xs; i++)
        nonfinite += !isfinite(y[i]);
    if (nonfinite) {
        fprintf(stderr, "nsa-demo: the output has %zu non-finite values\n", nonfinite);
        goto out;
    }
    print_gate_means(gates, S, a->H);
    summarize_counts(a, sel, S);

    int64_t bad = selection_check(a, sel, S);
    if (bad) {
        fprintf(stderr, "nsa-demo: %lld selection rows break the rules of spec 3\n",
                (long long)bad);
        goto out;
    }
    printf("selection check   : %lld rows (queries x groups) follow spec 3\n",
           (long long)S * a->G);
    phase_begin("decode check (a prefill into caches, one step)");
    if (decode_check(ctx, layer, x, y, sel, decode_check_position(a, S)))
        goto out;
    phase_end("decode check (a prefill into caches, one step)");
    int nb = (int)((S + a->l_sel - 1) / a->l_sel);
    if (!o.quiet) {
        if (!selgrid_build(&text, a, sel, S, o.group, 64, 32)) {
            fprintf(stderr, "nsa-demo: out of memory for the selection map\n");
            goto out;
        }
        print_text_map(&text, o.group, S, nb);
    }
    if (o.png) {
#ifdef NSA_HAVE_PNG
        int W = 0, Hh = 0;
        unsigned char *img = NULL;
        if (selgrid_build(&image, a, sel, S, o.group, 1024, 512))
            img = render_map(&image, &W, &Hh);
        int ok = img && write_png(o.png, img, W, Hh);
        free(img);
        if (!ok) {
            fprintf(stderr, "nsa-demo: could not write %s\n", o.png);
            goto out;
        }
        printf("png               : %s (%d x %d; x = query, y = block; dark blue selected, "
               "orange forced, grey not yet visible)\n",
               o.png, W, Hh);
#else
        printf("png               : disabled (built without libpng)\n");
#endif
    }
    status = 0;
out:
    free(text.k);
    free(image.k);
    free(x);
    free(y);
    free(gates);
    free(sel);
    nsa_layer_free(layer);
    nsa_context_free(ctx);
    return status;
}
