/* kern_attn_impl.h — the body of the attention kernel, written once against a small set of
 * vector macros and included by kern_attn.c once per ISA (AVX-512, AVX2, scalar C). Not a header
 * to include anywhere else. The including file defines:
 *   KA_SFX        name suffix of the generated functions
 *   KA_TGT        the target attribute (or nothing)
 *   VW            lanes per vector; vf the vector type
 *   V_LOAD/V_STORE/V_SET1/V_ZERO/V_ADD/V_SUB/V_MUL/V_FMA/V_MAX/V_EXP   the obvious operations
 *   V_NINF_IF_GT(s, a, b)   s with −inf in the lanes where a > b
 *   V_ZERO_IF_NINF(m)       m with 0 in the lanes that are −inf
 *   KA_NKEY, KA_NV          score tile: keys × row vectors
 *   KA_RG, KA_DV            value-sum tile: rows × head-dimension vectors
 *
 * Layout of a job's rows: row r = i·rep + g (query position i, head g), R = nq·rep rows padded
 * to RP, a multiple of VW. Scores are kept transposed, s[j][r], so that the score tile, the
 * masks and the online softmax are all vertical operations across rows: no horizontal sums.
 */

#define KA_CAT2(a, b) a##b
#define KA_CAT(a, b) KA_CAT2(a, b)
#define KA_FN(name) KA_CAT(name, KA_SFX)

/* s[k][v·VW ..] = Σ_d qt[d][v·VW ..] · kp[k][d] for k < NKEY keys, v < nv row vectors; only the
 * first nk keys are stored (kp is padded to NKEY with valid pointers). */
KS_INLINE KA_TGT void KA_FN(ka_score_)(const float *qt, int RP, int hd, const float *const *kp,
                                       int nk, float *s, const int nv)
{
    vf acc[KA_NKEY][KA_NV];
#pragma GCC unroll 16
    for (int k = 0; k < KA_NKEY; k++)
#pragma GCC unroll 4
        for (int v = 0; v < KA_NV; v++)
            acc[k][v] = V_ZERO;
    for (int d = 0; d < hd; d++) {
        vf qv[KA_NV];
#pragma GCC unroll 4
        for (int v = 0; v < KA_NV; v++)
            if (v < nv) qv[v] = V_LOAD(qt + (size_t)d * RP + v * VW);
#pragma GCC unroll 16
        for (int k = 0; k < KA_NKEY; k++) {
            vf kb = V_SET1(kp[k][d]);
#pragma GCC unroll 4
            for (int v = 0; v < KA_NV; v++)
                if (v < nv) acc[k][v] = V_FMA(qv[v], kb, acc[k][v]);
        }
    }
#pragma GCC unroll 16
    for (int k = 0; k < KA_NKEY; k++)
#pragma GCC unroll 4
        for (int v = 0; v < KA_NV; v++)
            if (k < nk && v < nv) V_STORE(s + (size_t)k * RP + v * VW, acc[k][v]);
}

/* o[rr][d0 + v·VW ..] = o[rr][..]·al[rr] + Σ_j p[j·pj + (r0 + rr)·pr] · vp[j][d0 + v·VW ..] for
 * rr < nr rows, v < nv head-dimension vectors (p is s[j][r]: pj = RP, pr = 1; or s[r][j]). */
KS_INLINE KA_TGT void KA_FN(ka_vsum_)(float *const *o, const float *al, const float *p, int pj,
                                      int pr, int r0, const float *const *vp, int nk, int d0,
                                      const int nr, const int nv)
{
    vf acc[KA_RG][KA_DV];
#pragma GCC unroll 8
    for (int rr = 0; rr < KA_RG; rr++)
#pragma GCC unroll 8
        for (int v = 0; v < KA_DV; v++)
            if (rr < nr && v < nv)
                acc[rr][v] = V_MUL(V_LOAD(o[rr] + d0 + v * VW), V_SET1(al[rr]));
    for (int j = 0; j < nk; j++) {
        vf vv[KA_DV];
#pragma GCC unroll 8
        for (int v = 0; v < KA_DV; v++)
            if (v < nv) vv[v] = V_LOAD(vp[j] + d0 + v * VW);
#pragma GCC unroll 8
        for (int rr = 0; rr < KA_RG; rr++) {
            if (rr >= nr) continue;
            vf pv = V_SET1(p[(size_t)j * pj + (size_t)(r0 + rr) * pr]);
#pragma GCC unroll 8
            for (int v = 0; v < KA_DV; v++)
                if (v < nv) acc[rr][v] = V_FMA(pv, vv[v], acc[rr][v]);
        }
    }
#pragma GCC unroll 8
    for (int rr = 0; rr < KA_RG; rr++)
#pragma GCC unroll 8
        for (int v = 0; v < KA_DV; v++)
            if (rr < nr && v < nv) V_STORE(o[rr] + d0 + v * VW, acc[rr][v]);
}

/* The value sum of one chunk for rows r0 .. r0+nr−1 (nr = KA_RG, or 1 for the leftover rows):
 * full tiles of KA_DV vectors, then single vectors, then the scalar tail of the head dimension
 * (same operation order as the tiles: o·al, then the products in key order). */
KS_INLINE KA_TGT void KA_FN(ka_vsum_rows_)(float *const *o, const float *al, const float *p,
                                           int pj, int pr, int r0, const float *const *vp, int nk,
                                           int hd, const int nr)
{
    int d0 = 0;
    for (; d0 + KA_DV * VW <= hd; d0 += KA_DV * VW)
        KA_FN(ka_vsum_)(o, al, p, pj, pr, r0, vp, nk, d0, nr, KA_DV);
    for (; d0 + VW <= hd; d0 += VW)
        KA_FN(ka_vsum_)(o, al, p, pj, pr, r0, vp, nk, d0, nr, 1);
    for (; d0 < hd; d0++) {
        for (int rr = 0; rr < nr; rr++) {
            float acc = o[rr][d0] * al[rr];
            for (int j = 0; j < nk; j++)
                acc = acc + p[(size_t)j * pj + (size_t)(r0 + rr) * pr] * vp[j][d0];
            o[rr][d0] = acc;
        }
    }
}

/* The value sum for 1 <= n <= KA_RG rows from r0, each count with its own unrolled tile. */
KS_INLINE KA_TGT void KA_FN(ka_vsum_n_)(float *const *o, const float *al, const float *p, int pj,
                                        int pr, int r0, const float *const *vp, int nk, int hd,
                                        int n)
{
    if (n == KA_RG)
        KA_FN(ka_vsum_rows_)(o, al, p, pj, pr, r0, vp, nk, hd, KA_RG);
    else if (n == 3)
        KA_FN(ka_vsum_rows_)(o, al, p, pj, pr, r0, vp, nk, hd, 3);
    else if (n == 2)
        KA_FN(ka_vsum_rows_)(o, al, p, pj, pr, r0, vp, nk, hd, 2);
    else
        KA_FN(ka_vsum_rows_)(o, al, p, pj, pr, r0, vp, nk, hd, 1);
}

static KA_TGT void KA_FN(ka_run_)(const kern_attn_job *a, float *scratch)
{
    const int rep = a->rep, hd = a->hd, R = a->nq * rep;
    const int RP = (R + VW - 1) / VW * VW;
    float *qt = scratch;                        // (hd, RP) scaled queries, transposed
    float *s = qt + (size_t)hd * (size_t)RP;    // (KERN_ATTN_CHUNK, RP) scores, then e^(s − m)
    float *mrow = s + (size_t)KERN_ATTN_CHUNK * RP; // (RP) running max per row
    float *lrow = mrow + RP;                    // (RP) running Σ e^(s − m) per row
    float *al = lrow + RP;                      // (RP) e^(m_old − m_new) of the current chunk
    float *pf = al + RP;                        // (RP) row position, as float (exact below 2^24)
    float *lof = pf + RP;                       // (RP) first visible key of the row, as float

    for (int r = 0; r < RP; r++) {
        int i = r < R ? r / rep : a->nq - 1, g = r % rep;
        const float *qr = a->q + (size_t)i * (size_t)a->ldq + (size_t)g * (size_t)hd;
        for (int d = 0; d < hd; d++)
            qt[(size_t)d * RP + r] = r < R ? qr[d] * a->scale : 0.0f;
        int p = a->pos0 + i;
        pf[r] = (float)p;
        lof[r] = a->window > 0 ? (float)(p - a->window + 1) : -1.0f;
        mrow[r] = -INFINITY;
        lrow[r] = 0.0f;
    }
    for (int r = 0; r < R; r++)
        memset(a->out + (size_t)(r / rep) * (size_t)a->ldo + (size_t)(r % rep) * (size_t)hd, 0,
               sizeof(float) * (size_t)hd);

    const int hi = a->pos0 + a->nq; /* keys [.., hi) */
    int lo = a->window > 0 ? a->pos0 - a->window + 1 : 0;
    if (lo < 0) lo = 0;
    for (int c0 = lo / KERN_ATTN_CHUNK * KERN_ATTN_CHUNK; c0 < hi; c0 += KERN_ATTN_CHUNK) {
        const int nk = hi - c0 < KERN_ATTN_CHUNK ? hi - c0 : KERN_ATTN_CHUNK;
        const float *kp[KERN_ATTN_CHUNK + KA_NKEY], *vp[KERN_ATTN_CHUNK];
        ka_rows(a, c0, nk, kp, vp);
        for (int j = nk; j < nk + KA_NKEY; j++)
            kp[j] = kp[0];

        // Scores, tile by tile: KA_NKEY keys × KA_NV row vectors (or 1 for the leftover one).
        for (int v0 = 0; v0 < RP; v0 += KA_NV * VW) {
            const int left = (RP - v0) / VW;
            for (int j = 0; j < nk; j += KA_NKEY) {
                int n = nk - j < KA_NKEY ? nk - j : KA_NKEY;
                if (left >= KA_NV)
                    KA_FN(ka_score_)(qt + v0, RP, hd, kp + j, n, s + (size_t)j * RP + v0, KA_NV);
                else
                    for (int v = 0; v < left; v++)
                        KA_FN(ka_score_)(qt + v0 + v * VW, RP, hd, kp + j, n,
                                         s + (size_t)j * RP + v0 + v * VW, 1);
            }
        }

        // Masks: keys after the row's position, and before its window.
        const int mask_hi = c0 + nk - 1 > a->pos0;
        const int mask_lo = a->window > 0 && c0 < hi - a->window; /* last row's first key */
        if (mask_hi || mask_lo) {
            for (int j = 0; j < nk; j++) {
                const vf jv = V_SET1((float)(c0 + j));
                for (int v = 0; v < RP; v += VW) {
                    float *sp = s + (size_t)j * RP + v;
                    vf x = V_LOAD(sp);
                    if (mask_hi) x = V_NINF_IF_GT(x, jv, V_LOAD(pf + v));
                    if (mask_lo) x = V_NINF_IF_GT(x, V_LOAD(lof + v), jv);
                    V_STORE(sp, x);
                }
            }
        }

        // Online softmax: new running max, rescale factor, e^(s − m) in place, running sum.
        for (int v = 0; v < RP; v += VW) {
            vf mold = V_LOAD(mrow + v), m = mold;
            for (int j = 0; j < nk; j++)
                m = V_MAX(m, V_LOAD(s + (size_t)j * RP + v));
            /* A row that has seen only masked keys keeps m = −inf; subtracting 0 instead keeps
             * e^(−inf − m) = 0 rather than NaN. */
            const vf mu = V_ZERO_IF_NINF(m);
            vf sum = V_ZERO;
            for (int j = 0; j < nk; j++) {
                float *sp = s + (size_t)j * RP + v;
                vf e = V_EXP(V_SUB(V_LOAD(sp), mu));
                V_STORE(sp, e);
                sum = V_ADD(sum, e);
            }
            const vf alpha = V_EXP(V_SUB(mold, mu));
            V_STORE(lrow + v, V_ADD(V_MUL(V_LOAD(lrow + v), alpha), sum));
            V_STORE(mrow + v, m);
            V_STORE(al + v, alpha);
        }

        // Value sum into the output rows, KA_RG rows at a time.
        for (int r0 = 0; r0 < R; r0 += KA_RG) {
            int n = R - r0 < KA_RG ? R - r0 : KA_RG;
            float *o[KA_RG];
            for (int rr = 0; rr < n; rr++)
                o[rr] = a->out + (size_t)((r0 + rr) / rep) * (size_t)a->ldo +
                        (size_t)((r0 + rr) % rep) * (size_t)hd;
            KA_FN(ka_vsum_n_)(o, al + r0, s, RP, 1, r0, vp, nk, hd, n);
        }
    }

    // Normalise: every row saw at least its own key, so its sum is >= 1.
    for (int r = 0; r < R; r++) {
        float *o = a->out + (size_t)(r / rep) * (size_t)a->ldo + (size_t)(r % rep) * (size_t)hd;
        float inv = 1.0f / lrow[r];
        for (int d = 0; d < hd; d++)
            o[d] *= inv;
    }
}

#undef KA_FN
#undef KA_CAT
#undef KA_CAT2
