/* Operator configuration: paper defaults (spec 1) and the rules of spec 10. */
#include "nsa_internal.h"

#include <math.h>

nsa_config nsa_config_default(void)
{
    nsa_config c;
    c.H = 64;
    c.G = 4;
    c.dk = 192;
    c.dv = 128;
    c.l = 32;
    c.d = 16;
    c.l_sel = 64;
    c.n = 16;
    c.n_init = 1;
    c.n_local = 2;
    c.w = 512;
    c.scale = 0.0f;
    c.mapping = NSA_MAPPING_OVERLAP;
    return c;
}

float nsa_config_scale(const nsa_config *cfg)
{
    if (!cfg)
        return 0.0f;
    if (cfg->scale > 0.0f)
        return cfg->scale;
    return cfg->dk > 0 ? (float)(1.0 / sqrt((double)cfg->dk)) : 0.0f;
}

nsa_status nsa_config_validate(const nsa_config *c, char *msg, size_t len)
{
    if (!c)
        return nsa_fail_buf(msg, len, NSA_ERR_NULL, "config is NULL");
    const struct {
        const char *name;
        int v;
    } pos[] = {{"H", c->H},   {"G", c->G},         {"dk", c->dk}, {"dv", c->dv},
               {"l", c->l},   {"d", c->d},         {"l'", c->l_sel}, {"n", c->n}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v < 1)
            return nsa_fail_buf(msg, len, NSA_ERR_ZERO_SIZE, "%s=%d must be >= 1",
                                pos[i].name, pos[i].v);
    if (c->n_init < 0)
        return nsa_fail_buf(msg, len, NSA_ERR_ZERO_SIZE, "n_init=%d must be >= 0", c->n_init);
    if (c->n_local < 0)
        return nsa_fail_buf(msg, len, NSA_ERR_ZERO_SIZE, "n_local=%d must be >= 0",
                            c->n_local);
    if (c->w < 1)
        return nsa_fail_buf(msg, len, NSA_ERR_WINDOW, "w=%d must be >= 1", c->w);
    if (c->H % c->G != 0)
        return nsa_fail_buf(msg, len, NSA_ERR_GQA, "G=%d must divide H=%d (H %% G == 0)",
                            c->G, c->H);
    if (c->l % c->d != 0)
        return nsa_fail_buf(msg, len, NSA_ERR_DIVISIBILITY, "d=%d must divide l=%d", c->d,
                            c->l);
    if (c->l_sel % c->d != 0)
        return nsa_fail_buf(msg, len, NSA_ERR_DIVISIBILITY, "d=%d must divide l'=%d", c->d,
                            c->l_sel);
    if ((long)c->n < (long)c->n_init + (long)c->n_local)
        return nsa_fail_buf(msg, len, NSA_ERR_FORCED,
                            "n=%d must be >= n_init + n_local = %d + %d", c->n, c->n_init,
                            c->n_local);
    if (!(c->scale >= 0.0f) || isinf(c->scale))
        return nsa_fail_buf(msg, len, NSA_ERR_SCALE,
                            "scale=%g must be finite and >= 0 (0 = 1/sqrt(dk))",
                            (double)c->scale);
    if (c->mapping != NSA_MAPPING_OVERLAP && c->mapping != NSA_MAPPING_PAPER)
        return nsa_fail_buf(msg, len, NSA_ERR_ENUM,
                            "mapping=%d must be NSA_MAPPING_OVERLAP or NSA_MAPPING_PAPER",
                            (int)c->mapping);
    if (msg && len)
        msg[0] = '\0';
    return NSA_OK;
}

int nsa_n_cmp(const nsa_config *cfg, int64_t t) { return cfg ? nsa_bm_n_cmp(cfg, t) : 0; }

int64_t nsa_cmp_tokens(const nsa_config *cfg, int64_t S)
{
    return (cfg && S > 0) ? nsa_bm_n_cmp(cfg, S - 1) : 0;
}
