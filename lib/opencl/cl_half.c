/* fp32 <-> fp16 / bf16 bit conversions for K/V storage on the device,
 * rounding to nearest even (what vstore_half_rte would do). */
#include "cl_internal.h"

#include <string.h>

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t nsa_cl_f32_to_bf16(float f)
{
    uint32_t u = bits_of(f);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))
        return (uint16_t)((u >> 16) | 0x0040u); /* keep NaN a NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float nsa_cl_bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

uint16_t nsa_cl_f32_to_f16(float f)
{
    uint32_t u = bits_of(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t ex = (u >> 23) & 0xffu, man = u & 0x007fffffu;
    if (ex == 0xffu) /* Inf, NaN */
        return (uint16_t)(sign | 0x7c00u | (man ? 0x0200u : 0u));
    int e = (int)ex - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u); /* overflow to Inf */
    if (e <= 0) {
        /* subnormal or zero: shift the full mantissa into place */
        if (e < -10)
            return sign;
        man |= 0x00800000u;
        int shift = 14 - e;
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1u), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u)))
        half++; /* a carry into the exponent is still right (up to Inf) */
    return (uint16_t)(sign | half);
}

float nsa_cl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, ex = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (ex == 0x1fu)
        return float_of(sign | 0x7f800000u | (man << 13));
    if (ex == 0) {
        if (!man)
            return float_of(sign);
        /* subnormal: value man * 2^-24 */
        float f = (float)man * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    return float_of(sign | ((ex - 15 + 127) << 23) | (man << 13));
}
