// Atom-centred symmetry functions: see symmetry_functions.hpp for definitions and layouts.
//
// Derivatives. Per centre i, with a = r_ij, b = r_ik, unit vectors u, c = cos θ = u_a·u_b and
// w = (b − a)/r_jk = (r_b u_b − r_a u_a)/r_jk, every term T(a, b) of G4/G5 has its gradient in the
// plane of u_a and u_b:
//   ∂T/∂a = A_ab u_a + B_ab u_b,   ∂T/∂b = A_ba u_b + B_ba u_a.
// With T = P(c) H(r_a, r_b, r_jk), P = 2^{1−ζ}(1 + λc)^ζ, H = h(r_a) h(r_b) h(r_jk),
// h(r) = exp(−η r²) f_c(r) (G5: H = h(r_a) h(r_b)) and ∂c/∂a = (u_b − c u_a)/r_a:
//   A_ab = P (∂H/∂r_a + Q r_a) − P' H c / r_a,   B_ab = P' H / r_a − P Q r_b,   Q = (∂H/∂r_jk)/r_jk
// (and a ↔ b). The u_a coefficients of an edge are summed as scalars over its partners and
// multiplied by u_a once at the end; only the B terms need a vector accumulator. Radial terms lie
// along u_a.
//
// Speed. Per centre, the edges inside the angular cutoff are stored as arrays sorted by neighbour
// species. Row by row (edge a), the partners b are gathered into contiguous, zero-padded arrays —
// only those with r_jk < rc when every function is a G4 (f_c(r_jk) = 0 removes the others, about
// half the pairs in a dense solid) — and everything that depends on the pair only (cos θ, r_jk,
// f_c(r_jk), exp(−η r_jk²), the powers (1 ± cos θ)^ζ from shared squares) is computed in loops
// over b that the compiler vectorises (hence the branch-free exp, sin/cos and 1/√x below), and so
// is the accumulation over b, function by function. Descriptors alone visit each pair once
// (b > a). With stored derivatives a row visits every partner b ≠ a and accumulates only its own
// edge's terms (no partner-side stores). In chain-rule mode (gradient()) the functions of an
// (η, kind) group are first summed with their weights dE/dG, so the geometric terms are
// evaluated once per group instead of per function, and the partner-side terms of a row are
// added to the partners once at its end. On x86-64 with GCC the hot functions are also compiled
// for AVX2 + FMA and picked at load time (target_clones).
#include "symmetry_functions.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <utility>

// Floating-point selects (x < 1 ? x : 1) only vectorise when comparisons may not trap; mlpot never
// enables floating-point exceptions, so this changes nothing else.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MLPOT_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MLPOT_SIMD_CLONES
#endif

// The pass templates are inlined into the cloned functions, so that they are compiled per
// instruction set too (GCC stops inlining large functions otherwise).
#if defined(__GNUC__)
#define MLPOT_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define MLPOT_ALWAYS_INLINE inline
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define MLPOT_REASSOCIATE __attribute__((optimize("associative-math", "no-signed-zeros")))
#else
#define MLPOT_REASSOCIATE
#endif
#if defined(__clang__)
#define MLPOT_CLANG_REASSOCIATE _Pragma("clang fp reassociate(on)")
#else
#define MLPOT_CLANG_REASSOCIATE
#endif

namespace mlpot {
namespace {

constexpr double PI = 3.141592653589793238462643383279502884;

// Integer ζ up to this use the shared squares (x^(ζ−1) is a product of at most
// MAX_SQUARE_FACTORS of them); larger or non-integer ζ use std::pow.
constexpr int MAX_INTEGER_ZETA = 64;
constexpr int MAX_SQUARE_FACTORS = 6;
static_assert((1 << MAX_SQUARE_FACTORS) >= MAX_INTEGER_ZETA,
              "x^(ζ−1) for ζ ≤ MAX_INTEGER_ZETA needs at most MAX_SQUARE_FACTORS squares");

std::string str(double value) {
    std::ostringstream out;
    out.precision(17);
    out << value;
    return out.str();
}

[[noreturn]] void invalid(const std::string& message) {
    throw std::invalid_argument("symmetry functions: " + message);
}

constexpr double inverse_factorial(int n) {
    double result = 1.0;
    for (int k = 2; k <= n; ++k) result /= k;
    return result;
}

// sin(t) and cos(t) for |t| ≤ π/2 from their Taylor series to t¹⁹ / t²⁰ (error < 3e-16).
inline void sin_cos_half_range(double t, double& sine, double& cosine) {
    const double t2 = t * t;
    double s = -inverse_factorial(19);
    double c = inverse_factorial(20);
    s = s * t2 + inverse_factorial(17);
    c = c * t2 - inverse_factorial(18);
    s = s * t2 - inverse_factorial(15);
    c = c * t2 + inverse_factorial(16);
    s = s * t2 + inverse_factorial(13);
    c = c * t2 - inverse_factorial(14);
    s = s * t2 - inverse_factorial(11);
    c = c * t2 + inverse_factorial(12);
    s = s * t2 + inverse_factorial(9);
    c = c * t2 - inverse_factorial(10);
    s = s * t2 - inverse_factorial(7);
    c = c * t2 + inverse_factorial(8);
    s = s * t2 + inverse_factorial(5);
    c = c * t2 - inverse_factorial(6);
    s = s * t2 - inverse_factorial(3);
    c = c * t2 + inverse_factorial(4);
    s = s * t2 + 1.0;
    c = c * t2 - inverse_factorial(2);
    sine = s * t;
    cosine = c * t2 + 1.0;
}

// exp(x) for x ≤ 0, branch-free (vectorisable), within 2 ulp of std::exp; x < −708 gives
// ≈ 2e-308 instead of the (even smaller) true value.
inline double exp_nonpositive(double x) {
    x = x > -708.0 ? x : -708.0;
    constexpr double magic = 6755399441055744.0;  // 1.5 · 2^52: adding it rounds to an integer
    const double t = x * 1.4426950408889634074 + magic;
    const double n = t - magic;
    double r = x - n * 6.93147180369123816490e-01;  // Cody–Waite: ln 2 = hi + lo
    r = r - n * 1.90821492927058770002e-10;         // |r| ≤ ln 2 / 2
    double p = inverse_factorial(13);                // Taylor to r¹³: error < 1e-17
    p = p * r + inverse_factorial(12);
    p = p * r + inverse_factorial(11);
    p = p * r + inverse_factorial(10);
    p = p * r + inverse_factorial(9);
    p = p * r + inverse_factorial(8);
    p = p * r + inverse_factorial(7);
    p = p * r + inverse_factorial(6);
    p = p * r + inverse_factorial(5);
    p = p * r + inverse_factorial(4);
    p = p * r + inverse_factorial(3);
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    std::int64_t bits;
    std::memcpy(&bits, &t, sizeof bits);  // the low mantissa bits of t hold n
    bits = (bits - 0x4338000000000000LL + 1023) << 52;
    double scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// 1/√x and √x for x > 0, branch-free (std::sqrt is not vectorised unless errno is switched off
// for the whole program): bit-trick estimate, four Newton steps for 1/√x, one residual
// correction for √x; both within 2 ulp.
inline void inverse_sqrt_and_sqrt(double x, double& inverse, double& root) {
    std::uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits = 0x5FE6EB50C7B537A9ULL - (bits >> 1);
    double y;
    std::memcpy(&y, &bits, sizeof y);
    const double half_x = 0.5 * x;
    y = y * (1.5 - half_x * y * y);
    y = y * (1.5 - half_x * y * y);
    y = y * (1.5 - half_x * y * y);
    y = y * (1.5 - half_x * y * y);
    double s = x * y;
    s = s + 0.5 * (x - s * s) * y;
    inverse = y;
    root = s;
}

// f_c and df_c/dr at x = r / rc ∈ [0, 1] (both vanish at x = 1).
inline void cosine_cutoff(double x, double inv_rc, double& fc, double& dfc) {
    double sine, cosine;  // cos(π x) = −sin(t), sin(π x) = cos(t), t = π (x − ½)
    sin_cos_half_range(PI * (x - 0.5), sine, cosine);
    fc = 0.5 - 0.5 * sine;
    dfc = -0.5 * PI * inv_rc * cosine;
}

inline void polynomial_cutoff(double x, double inv_rc, double& fc, double& dfc) {
    const double x2 = x * x, one_minus = 1.0 - x;
    fc = 1.0 + x2 * x * (-10.0 + x * (15.0 - 6.0 * x));
    dfc = -30.0 * x2 * one_minus * one_minus * inv_rc;
}

// ---- Hot loops (free functions so that they can be cloned per instruction set). ----

// Radial functions of n edges (r, neighbour species) into G[S × n_radial] and, if A is not null,
// dG/dr into A[edge, S × n_radial] (zeroed by the caller).
MLPOT_SIMD_CLONES
void radial_block(int n, const double* __restrict r, const int* __restrict species, int n_radial,
                  int n_features, const double* __restrict eta, const double* __restrict r_s,
                  bool cosine, double inv_rc, double* __restrict G, double* __restrict A,
                  double* __restrict tmp) {
    for (int s = 0; s < n; ++s) {
        const double x = r[s] * inv_rc;
        double fc, dfc;
        if (cosine) {
            cosine_cutoff(x, inv_rc, fc, dfc);
        } else {
            polynomial_cutoff(x, inv_rc, fc, dfc);
        }
        const int offset = species[s] * n_radial;
        double* __restrict g = G + offset;
        for (int f = 0; f < n_radial; ++f) {
            const double d = r[s] - r_s[f];
            tmp[f] = exp_nonpositive(-eta[f] * d * d);
        }
        for (int f = 0; f < n_radial; ++f) g[f] += tmp[f] * fc;
        if (A) {
            double* __restrict dA = A + static_cast<std::size_t>(s) * n_features + offset;
            for (int f = 0; f < n_radial; ++f) {
                const double d = r[s] - r_s[f];
                dA[f] = tmp[f] * (dfc - 2.0 * eta[f] * d * fc);
            }
        }
    }
}

// h = exp(−η r²) f_c(r) and dh/dr of n edges for each η: h[q · n + a].
MLPOT_SIMD_CLONES
void edge_factors(int n, std::size_t stride, const double* __restrict r, int n_eta,
                  const double* __restrict eta, bool cosine, double inv_rc, double* __restrict h,
                  double* __restrict dh, double* __restrict fc_tmp, double* __restrict dfc_tmp) {
    if (cosine) {
        for (int a = 0; a < n; ++a) cosine_cutoff(r[a] * inv_rc, inv_rc, fc_tmp[a], dfc_tmp[a]);
    } else {
        for (int a = 0; a < n; ++a) {
            polynomial_cutoff(r[a] * inv_rc, inv_rc, fc_tmp[a], dfc_tmp[a]);
        }
    }
    for (int q = 0; q < n_eta; ++q) {
        const double e = eta[q];
        double* __restrict hq = h + static_cast<std::size_t>(q) * stride;
        double* __restrict dhq = dh + static_cast<std::size_t>(q) * stride;
        for (int a = 0; a < n; ++a) {
            const double ex = exp_nonpositive(-e * r[a] * r[a]);
            hq[a] = ex * fc_tmp[a];
            dhq[a] = ex * (dfc_tmp[a] - 2.0 * e * r[a] * fc_tmp[a]);
        }
    }
}

// What a pass over the angular block produces: descriptors only (half rows), stored derivatives
// (full rows, each row its own edge's terms) or the chain rule (half rows, both edges' terms).
// Each pass computes only the pair factors it reads.
enum class Pass { descriptors, derivatives, chain_rule };

// Everything the angular accumulation needs, as raw arrays (see SymmetryFunctions::Workspace).
// Angular slots are sorted by neighbour species: species t occupies [run[t], run[t + 1]).
struct AngularArrays {
    int n;                                            // edges inside the angular cutoff
    const double *r, *inv_r, *ux, *uy, *uz;           // [n + 1]: slot n is zero (padding)
    const double *vx, *vy, *vz;                       // [n] edge vectors
    const int* species;                               // [n]
    const int* run;                                   // [S + 1]
    int num_species;
    int n_eta;
    std::size_t h_stride;
    const double *h, *dh;                             // [n_eta][h_stride ≥ n + 1], zero at n
    // A batch of rows: their partners, gathered one after the other (see gather_partners),
    // with the row's own values beside each entry; cap ≥ n + 4 S entries.
    std::size_t cap;
    int* partner;                                     // [cap]: angular slot, or n for padding
    int* row_run;                                     // [rows of the batch][S + 1]
    double *r_a, *inv_r_a, *ux_a, *uy_a, *uz_a;       // [cap]
    double *r_b, *inv_r_b, *ux_b, *uy_b, *uz_b, *rjk2;  // [cap]
    double *h_a, *dh_a, *h_b, *dh_b;                  // [n_eta][cap]
    double *cos_theta, *c_ra, *c_rb, *rjk, *inv_rjk, *fcjk, *dfcjk;  // [cap]
    double *H, *Da, *Db, *Qa, *Qb;                    // [n_groups][cap]; Qa = Q r_a, Qb = Q r_b
    double *P, *dP, *x, *squares;                     // [n_powers][cap], [cap], [bits − 1][cap]
    // Accumulators, internal function order; k = pair × n_angular + f.
    double* G;  // [k]
    double* A;  // [angular slot][k] or null
    double* B;  // [angular slot][k][3] or null
    // Chain-rule mode (A, B null): weights W[k] = dE/dG (internal order) and, per angular slot,
    // the gradient's component along u (along) and the rest (gx, gy, gz) [n + 1: slot n takes
    // the padding's zeros]; the batch's partner-side terms (b_along, b_gx, b_gy, b_gz [cap]);
    // scratch WP, WdP [cap].
    const double* W;
    double *along, *gx, *gy, *gz, *b_along, *b_gx, *b_gy, *b_gz, *WP, *WdP;
};

struct AngularPlan {
    int n_groups, n_powers, n_angular, n_features;  // n_features = n_pairs × n_angular
    const double* group_eta;
    const int *group_g4, *group_begin, *group_end, *group_eta_index;
    const double *power_lambda, *power_zeta, *power_scale, *power_dscale;
    const int* power_exponent;
    const int* function_power;
    int ladder_bits;
    bool cosine;
    bool all_g4;  // every function has the f_c(r_jk) factor: partners with r_jk ≥ rc are dropped
    double rc, inv_rc;
};

inline void gather(int begin, int end, const int* __restrict index,
                   const double* __restrict source, double* __restrict target) {
    for (int j = begin; j < end; ++j) target[j] = source[index[j]];
}

inline void broadcast(int begin, int end, double value, double* __restrict target) {
    for (int j = begin; j < end; ++j) target[j] = value;
}

// Row a's partners b ≥ first (b ≠ a), appended to the batch from entry m, species run by species
// run (run[t] … run[t + 1]), each run zero-padded to a multiple of 4 so that the vector loops
// need no remainders (padding points at the zero slot n, where h = dh = u = r = 0, with
// r_jk = rc: every term it enters is exactly zero). When every function is a G4, partners with r_jk ≥ rc are left out: f_c(r_jk) = 0 makes
// their terms vanish, and in a dense solid that is about half of the pairs. Returns the new end.
template <Pass pass>
MLPOT_ALWAYS_INLINE int gather_partners(const AngularPlan& p, const AngularArrays& w, int a, int first, int m,
                           int* run) {
    const double vxa = w.vx[a], vya = w.vy[a], vza = w.vz[a];
    const double rc2 = p.rc * p.rc;
    const int begin = m;
    run[0] = m;
    for (int t = 0; t < w.num_species; ++t) {
        for (int b = std::max(first, w.run[t]); b < w.run[t + 1]; ++b) {
            const double dx = w.vx[b] - vxa, dy = w.vy[b] - vya, dz = w.vz[b] - vza;
            const double r2 = dx * dx + dy * dy + dz * dz;
            w.partner[m] = b;
            w.rjk2[m] = r2;
            m += (b != a) & (!p.all_g4 | (r2 < rc2));  // branch-free compaction
        }
        for (; (m - begin) & 3; ++m) {
            w.partner[m] = w.n;  // the zero slot
            w.rjk2[m] = rc2;
        }
        run[t + 1] = m;
    }
    gather(begin, m, w.partner, w.ux, w.ux_b);
    gather(begin, m, w.partner, w.uy, w.uy_b);
    gather(begin, m, w.partner, w.uz, w.uz_b);
    broadcast(begin, m, w.ux[a], w.ux_a);
    broadcast(begin, m, w.uy[a], w.uy_a);
    broadcast(begin, m, w.uz[a], w.uz_a);
    if constexpr (pass != Pass::descriptors) {
        gather(begin, m, w.partner, w.r, w.r_b);
        broadcast(begin, m, w.r[a], w.r_a);
        broadcast(begin, m, w.inv_r[a], w.inv_r_a);
    }
    if constexpr (pass == Pass::chain_rule) gather(begin, m, w.partner, w.inv_r, w.inv_r_b);
    for (int q = 0; q < w.n_eta; ++q) {
        const double* h = w.h + q * w.h_stride;
        const double* dh = w.dh + q * w.h_stride;
        gather(begin, m, w.partner, h, w.h_b + q * w.cap);
        broadcast(begin, m, h[a], w.h_a + q * w.cap);
        if constexpr (pass != Pass::descriptors) broadcast(begin, m, dh[a], w.dh_a + q * w.cap);
        if constexpr (pass == Pass::chain_rule) gather(begin, m, w.partner, dh, w.dh_b + q * w.cap);
    }
    return m;
}

// cos θ (and cos θ / r_a, cos θ / r_b), r_jk, 1/r_jk, f_c(r_jk), f_c'(r_jk) of the gathered
// partners; r_jk ≥ rc gives f_c = f_c' = 1/r_jk = 0.
template <bool Cosine, Pass pass>
inline void pair_geometry(int m, const double* __restrict ux, const double* __restrict uy,
                          const double* __restrict uz, const double* __restrict inv_r,
                          const double* __restrict rjk2, const double* __restrict uxa,
                          const double* __restrict uya, const double* __restrict uza,
                          const double* __restrict inv_ra, double rc2, double inv_rc,
                          double* __restrict cos_theta,
                          double* __restrict c_ra, double* __restrict c_rb,
                          double* __restrict rjk_out, double* __restrict inv_rjk,
                          double* __restrict fcjk, double* __restrict dfcjk) {
    for (int b = 0; b < m; ++b) {
        const double c = uxa[b] * ux[b] + uya[b] * uy[b] + uza[b] * uz[b];
        cos_theta[b] = c;
        if constexpr (pass != Pass::descriptors) c_ra[b] = c * inv_ra[b];
        if constexpr (pass == Pass::chain_rule) c_rb[b] = c * inv_r[b];
        const double in = rjk2[b] < rc2 ? 1.0 : 0.0;
        double inverse, rjk;
        inverse_sqrt_and_sqrt(rjk2[b] < rc2 ? rjk2[b] : rc2, inverse, rjk);
        double fc, dfc;
        if (Cosine) {
            cosine_cutoff(rjk * inv_rc, inv_rc, fc, dfc);
        } else {
            polynomial_cutoff(rjk * inv_rc, inv_rc, fc, dfc);
        }
        rjk_out[b] = rjk;
        fcjk[b] = in * fc;
        if constexpr (pass != Pass::descriptors) {
            inv_rjk[b] = in * inverse;
            dfcjk[b] = in * dfc;
        }
    }
}

// G4 distance factor H = h(r_a) h(r_b) h(r_jk) and its pieces (see the file header):
// Da = ∂H/∂r_a + Q r_a, Db = ∂H/∂r_b + Q r_b, Qa = Q r_a, Qb = Q r_b.
template <Pass pass>
inline void g4_factors(int m, double eta, const double* __restrict ra,
                       const double* __restrict hb, const double* __restrict dhb,
                       const double* __restrict rb, const double* __restrict ha,
                       const double* __restrict dha, const double* __restrict rjk,
                       const double* __restrict inv_rjk, const double* __restrict fcjk,
                       const double* __restrict dfcjk, double* __restrict H,
                       double* __restrict Da, double* __restrict Db, double* __restrict Qa,
                       double* __restrict Qb) {
    for (int b = 0; b < m; ++b) {
        const double ex = exp_nonpositive(-eta * rjk[b] * rjk[b]);
        const double hjk = ex * fcjk[b];
        const double hab = ha[b] * hb[b];
        H[b] = hab * hjk;
        if constexpr (pass == Pass::descriptors) continue;
        const double dhjk = ex * (dfcjk[b] - 2.0 * eta * rjk[b] * fcjk[b]);
        const double Q = hab * dhjk * inv_rjk[b];
        Qb[b] = Q * rb[b];
        Da[b] = dha[b] * hb[b] * hjk + Q * ra[b];
        if constexpr (pass != Pass::chain_rule) continue;
        Qa[b] = Q * ra[b];
        Db[b] = ha[b] * dhb[b] * hjk + Q * rb[b];
    }
}

// G5 distance factor H = h(r_a) h(r_b) (no r_jk term: Q = 0).
template <Pass pass>
inline void g5_factors(int m, const double* __restrict hb, const double* __restrict dhb,
                       const double* __restrict ha, const double* __restrict dha,
                       double* __restrict H, double* __restrict Da,
                       double* __restrict Db, double* __restrict Qa, double* __restrict Qb) {
    for (int b = 0; b < m; ++b) {
        H[b] = ha[b] * hb[b];
        if constexpr (pass == Pass::descriptors) continue;
        Da[b] = dha[b] * hb[b];
        Qb[b] = 0.0;
        if constexpr (pass != Pass::chain_rule) continue;
        Db[b] = ha[b] * dhb[b];
        Qa[b] = 0.0;
    }
}

// P = scale · x^(e+1) and dP = dscale · x^e over m entries, where x^e is the product of the N
// squares x^(2^k) that the bits of e select, in one pass (one pass per factor, each storing its
// partial product, cost more than the arithmetic).
template <int N, Pass pass>
MLPOT_ALWAYS_INLINE void power_from_squares(int m, const double* const* factors,
                                            const double* __restrict x, double scale,
                                            double dscale, double* __restrict P,
                                            double* __restrict dP) {
    for (int b = 0; b < m; ++b) {
        double xe = 1.0;
        for (int k = 0; k < N; ++k) xe *= factors[k][b];
        P[b] = scale * xe * x[b];
        if constexpr (pass != Pass::descriptors) dP[b] = dscale * xe;
    }
}

// P and dP for x = max(1 + λ cos θ, 0) and every power of the set. The squares x^(2^k) are
// computed once per λ and shared by all integer ζ ≤ MAX_INTEGER_ZETA (at most
// MAX_SQUARE_FACTORS factors).
template <Pass pass>
MLPOT_ALWAYS_INLINE void angular_powers(const AngularPlan& p, const AngularArrays& w, int m) {
    for (const double lambda : {1.0, -1.0}) {
        int bits = 0;
        bool used = false;
        for (int q = 0; q < p.n_powers; ++q) {
            if (p.power_lambda[q] != lambda) continue;
            used = true;
            for (int e = p.power_exponent[q], k = 0; e > 0; e >>= 1, ++k) bits = std::max(bits, k + 1);
        }
        if (!used) continue;
        double* __restrict x = w.x;
        for (int b = 0; b < m; ++b) {
            const double value = 1.0 + lambda * w.cos_theta[b];
            x[b] = value > 0.0 ? value : 0.0;
        }
        for (int k = 1; k < bits; ++k) {  // x^(2^k) at squares[k − 1]
            const double* __restrict previous = k == 1 ? x : w.squares + (k - 2) * w.cap;
            double* __restrict square = w.squares + (k - 1) * w.cap;
            for (int b = 0; b < m; ++b) square[b] = previous[b] * previous[b];
        }
        for (int q = 0; q < p.n_powers; ++q) {
            if (p.power_lambda[q] != lambda) continue;
            double* __restrict P = w.P + q * w.cap;
            double* __restrict dP = w.dP + q * w.cap;
            const double scale = p.power_scale[q], dscale = p.power_dscale[q];
            const int e = p.power_exponent[q];
            if (e < 0) {  // non-integer ζ: std::pow (not vectorised)
                for (int b = 0; b < m; ++b) {
                    const double xe = std::pow(x[b], p.power_zeta[q] - 1.0);
                    P[b] = scale * xe * x[b];
                    dP[b] = dscale * xe;
                }
                continue;
            }
            const double* factors[MAX_SQUARE_FACTORS];
            int n = 0;
            for (int k = 0; (e >> k) > 0; ++k) {
                if ((e >> k) & 1) factors[n++] = k == 0 ? x : w.squares + (k - 1) * w.cap;
            }
            switch (n) {
                case 0: power_from_squares<0, pass>(m, factors, x, scale, dscale, P, dP); break;
                case 1: power_from_squares<1, pass>(m, factors, x, scale, dscale, P, dP); break;
                case 2: power_from_squares<2, pass>(m, factors, x, scale, dscale, P, dP); break;
                case 3: power_from_squares<3, pass>(m, factors, x, scale, dscale, P, dP); break;
                case 4: power_from_squares<4, pass>(m, factors, x, scale, dscale, P, dP); break;
                case 5: power_from_squares<5, pass>(m, factors, x, scale, dscale, P, dP); break;
                default: power_from_squares<6, pass>(m, factors, x, scale, dscale, P, dP); break;
            }
        }
    }
}

// Geometry, distance factors and angular factors of the batch's m entries, in long vector loops.
template <Pass pass>
MLPOT_ALWAYS_INLINE void batch_factors(const AngularPlan& p, const AngularArrays& w, int m) {
    const double rc2 = p.rc * p.rc;
    if (p.cosine) {
        pair_geometry<true, pass>(m, w.ux_b, w.uy_b, w.uz_b, w.inv_r_b, w.rjk2, w.ux_a, w.uy_a, w.uz_a,
                            w.inv_r_a, rc2, p.inv_rc, w.cos_theta, w.c_ra, w.c_rb, w.rjk,
                            w.inv_rjk, w.fcjk, w.dfcjk);
    } else {
        pair_geometry<false, pass>(m, w.ux_b, w.uy_b, w.uz_b, w.inv_r_b, w.rjk2, w.ux_a, w.uy_a,
                             w.uz_a, w.inv_r_a, rc2, p.inv_rc, w.cos_theta, w.c_ra, w.c_rb,
                             w.rjk, w.inv_rjk, w.fcjk, w.dfcjk);
    }
    for (int g = 0; g < p.n_groups; ++g) {
        const std::size_t qo = static_cast<std::size_t>(p.group_eta_index[g]) * w.cap;
        const std::size_t go = static_cast<std::size_t>(g) * w.cap;
        if (p.group_g4[g]) {
            g4_factors<pass>(m, p.group_eta[g], w.r_a, w.h_b + qo, w.dh_b + qo, w.r_b, w.h_a + qo,
                       w.dh_a + qo, w.rjk, w.inv_rjk, w.fcjk, w.dfcjk, w.H + go, w.Da + go,
                       w.Db + go, w.Qa + go, w.Qb + go);
        } else {
            g5_factors<pass>(m, w.h_b + qo, w.dh_b + qo, w.h_a + qo, w.dh_a + qo, w.H + go, w.Da + go,
                       w.Db + go, w.Qa + go, w.Qb + go);
        }
    }
    angular_powers<pass>(p, w, m);
}

// Index of the unordered species pair (s, t) in the angular block.
inline int species_pair(int s, int t) {
    return s >= t ? s * (s + 1) / 2 + t : t * (t + 1) / 2 + s;
}

// The terms of one function on row a's side for partners [lo, hi): G, A_a, B_a in sums[0 … 4].
// (restrict-qualified parameters: GCC ignores restrict on local pointers.)
MLPOT_REASSOCIATE inline void row_terms(int lo, int hi, const double* __restrict P,
                                        const double* __restrict dP, const double* __restrict H,
                                        const double* __restrict Da, const double* __restrict Qb,
                                        const double* __restrict c_ra,
                                        const double* __restrict ux, const double* __restrict uy,
                                        const double* __restrict uz, double inv_ra,
                                        double* __restrict sums) {
    double sG = 0.0, sA = 0.0, sx = 0.0, sy = 0.0, sz = 0.0;
    for (int b = lo; b < hi; ++b) {
        const double Pb = P[b];
        const double dPH = dP[b] * H[b];
        sG += Pb * H[b];
        sA += Pb * Da[b] - dPH * c_ra[b];
        const double Bab = dPH * inv_ra - Pb * Qb[b];
        sx += Bab * ux[b];
        sy += Bab * uy[b];
        sz += Bab * uz[b];
    }
    sums[0] = sG;
    sums[1] = sA;
    sums[2] = sx;
    sums[3] = sy;
    sums[4] = sz;
}

// Row a with derivatives: the row holds every partner b ≠ a (both orders of each pair), so the
// row accumulates only its own edge's A and B and G counts each pair twice (hence ½). Storing
// the partner-side terms instead would need a scatter per function and pair, which costs more
// than evaluating each pair twice.
MLPOT_SIMD_CLONES MLPOT_REASSOCIATE
void derivative_row(const AngularPlan& p, const AngularArrays& w, int a, const int* run) {
    MLPOT_CLANG_REASSOCIATE
    const std::size_t NF = static_cast<std::size_t>(p.n_features);
    double* A = w.A + a * NF;
    double* B = w.B + 3 * a * NF;
    for (int t = 0; t < w.num_species; ++t) {
        const int lo = run[t], hi = run[t + 1];
        if (lo >= hi) continue;
        const int base = species_pair(w.species[a], t) * p.n_angular;
        for (int g = 0; g < p.n_groups; ++g) {
            const std::size_t go = static_cast<std::size_t>(g) * w.cap;
            for (int f = p.group_begin[g]; f < p.group_end[g]; ++f) {
                const std::size_t qo = static_cast<std::size_t>(p.function_power[f]) * w.cap;
                const std::size_t k = static_cast<std::size_t>(base + f);
                double sums[5];
                row_terms(lo, hi, w.P + qo, w.dP + qo, w.H + go, w.Da + go, w.Qb + go, w.c_ra,
                          w.ux_b, w.uy_b, w.uz_b, w.inv_r[a], sums);
                w.G[k] += 0.5 * sums[0];
                A[k] += sums[1];
                B[3 * k] += sums[2];
                B[3 * k + 1] += sums[3];
                B[3 * k + 2] += sums[4];
            }
        }
    }
}

// Row a of the descriptors only: every function, over the gathered partners b > a.
MLPOT_SIMD_CLONES MLPOT_REASSOCIATE
void descriptor_row(const AngularPlan& p, const AngularArrays& w, int a, const int* run) {
    MLPOT_CLANG_REASSOCIATE
    for (int t = 0; t < w.num_species; ++t) {
        const int lo = run[t], hi = run[t + 1];
        if (lo >= hi) continue;
        const int base = species_pair(w.species[a], t) * p.n_angular;
        for (int g = 0; g < p.n_groups; ++g) {
            const double* __restrict H = w.H + static_cast<std::size_t>(g) * w.cap;
            for (int f = p.group_begin[g]; f < p.group_end[g]; ++f) {
                const double* __restrict P =
                    w.P + static_cast<std::size_t>(p.function_power[f]) * w.cap;
                double sum = 0.0;
                for (int b = lo; b < hi; ++b) sum += P[b] * H[b];
                w.G[base + f] += sum;
            }
        }
    }
}

// Chain-rule terms of one group for partners b ∈ [lo, hi): with WP = Σ_f w_f P_f and
// WdP = Σ_f w_f P'_f over the group's functions, the weighted A and B coefficients (see the file
// header) go to along[b], g[b] (b side) and into sums (a side: along, x, y, z).
MLPOT_REASSOCIATE inline void weighted_terms(
    int lo, int hi, const double* __restrict WP, const double* __restrict WdP,
    const double* __restrict H, const double* __restrict Da, const double* __restrict Db,
    const double* __restrict Qa, const double* __restrict Qb, const double* __restrict c_ra,
    const double* __restrict c_rb, const double* __restrict inv_r, const double* __restrict ux,
    const double* __restrict uy, const double* __restrict uz, double inv_ra, double uxa,
    double uya, double uza, double* __restrict along, double* __restrict gx,
    double* __restrict gy, double* __restrict gz, double* __restrict sums) {
    double sA = 0.0, sx = 0.0, sy = 0.0, sz = 0.0;
    for (int b = lo; b < hi; ++b) {
        const double P = WP[b];
        const double dPH = WdP[b] * H[b];
        sA += P * Da[b] - dPH * c_ra[b];
        along[b] += P * Db[b] - dPH * c_rb[b];
        const double Bab = dPH * inv_ra - P * Qb[b];
        const double Bba = dPH * inv_r[b] - P * Qa[b];
        sx += Bab * ux[b];
        sy += Bab * uy[b];
        sz += Bab * uz[b];
        gx[b] += Bba * uxa;
        gy[b] += Bba * uya;
        gz[b] += Bba * uza;
    }
    sums[0] = sA;
    sums[1] = sx;
    sums[2] = sy;
    sums[3] = sz;
}

// Σ_f w_f P_f and Σ_f w_f P'_f over partners [lo, hi) for one function. (Every helper called
// from a MLPOT_REASSOCIATE function carries the attribute too, or GCC does not inline it.)
MLPOT_REASSOCIATE inline void weighted_powers(int lo, int hi, double weight,
                                              const double* __restrict P,
                                              const double* __restrict dP,
                                              double* __restrict WP, double* __restrict WdP) {
    for (int b = lo; b < hi; ++b) {
        WP[b] += weight * P[b];
        WdP[b] += weight * dP[b];
    }
}

// Row a in chain-rule mode, over the gathered partners b > a: the partner-side terms are summed
// over the groups in b_along, b_g* (added to the partners' slots at the end of the batch).
MLPOT_SIMD_CLONES MLPOT_REASSOCIATE
void chain_rule_row(const AngularPlan& p, const AngularArrays& w, int a, const int* run) {
    MLPOT_CLANG_REASSOCIATE
    const double inv_ra = w.inv_r[a];
    const double uxa = w.ux[a], uya = w.uy[a], uza = w.uz[a];
    for (int t = 0; t < w.num_species; ++t) {
        const int lo = run[t], hi = run[t + 1];
        if (lo >= hi) continue;
        const int base = species_pair(w.species[a], t) * p.n_angular;
        for (int g = 0; g < p.n_groups; ++g) {
            const std::size_t go = static_cast<std::size_t>(g) * w.cap;
            std::fill(w.WP + lo, w.WP + hi, 0.0);
            std::fill(w.WdP + lo, w.WdP + hi, 0.0);
            bool any = false;
            for (int f = p.group_begin[g]; f < p.group_end[g]; ++f) {
                const double weight = w.W[base + f];
                if (weight == 0.0) continue;
                any = true;
                const std::size_t qo = static_cast<std::size_t>(p.function_power[f]) * w.cap;
                weighted_powers(lo, hi, weight, w.P + qo, w.dP + qo, w.WP, w.WdP);
            }
            if (!any) continue;
            double sums[4];
            weighted_terms(lo, hi, w.WP, w.WdP, w.H + go, w.Da + go, w.Db + go, w.Qa + go,
                           w.Qb + go, w.c_ra, w.c_rb, w.inv_r_b, w.ux_b, w.uy_b, w.uz_b, inv_ra,
                           uxa, uya, uza, w.b_along, w.b_gx, w.b_gy, w.b_gz, sums);
            w.along[a] += sums[0];
            w.gx[a] += sums[1];
            w.gy[a] += sums[2];
            w.gz[a] += sums[3];
        }
    }
}

// The angular block of one centre: rows in batches of up to cap gathered entries, so that the
// pair factors are computed in long loops (rows hold only ~10–40 partners each).
template <Pass pass>
MLPOT_ALWAYS_INLINE void angular_batches(const AngularPlan& p, const AngularArrays& w) {
    const std::size_t row_entries = w.n + 4 * static_cast<std::size_t>(w.num_species);
    const int S1 = w.num_species + 1;
    for (int a = 0; a < w.n;) {
        const int first_row = a;
        int m = 0;
        while (a < w.n && (a == first_row || m + row_entries <= w.cap)) {
            m = gather_partners<pass>(p, w, a, pass == Pass::derivatives ? 0 : a + 1, m,
                                      w.row_run + (a - first_row) * S1);
            ++a;
        }
        if (m == 0) continue;
        batch_factors<pass>(p, w, m);
        if constexpr (pass == Pass::chain_rule) {
            std::fill(w.b_along, w.b_along + m, 0.0);
            std::fill(w.b_gx, w.b_gx + m, 0.0);
            std::fill(w.b_gy, w.b_gy + m, 0.0);
            std::fill(w.b_gz, w.b_gz + m, 0.0);
        }
        for (int row = first_row; row < a; ++row) {
            const int* run = w.row_run + (row - first_row) * S1;
            if constexpr (pass == Pass::derivatives) {
                derivative_row(p, w, row, run);
            } else if constexpr (pass == Pass::chain_rule) {
                chain_rule_row(p, w, row, run);
            } else {
                descriptor_row(p, w, row, run);
            }
        }
        if constexpr (pass == Pass::chain_rule) {
            for (int j = 0; j < m; ++j) {
                const int b = w.partner[j];  // padding adds zeros to the spare slot n
                w.along[b] += w.b_along[j];
                w.gx[b] += w.b_gx[j];
                w.gy[b] += w.b_gy[j];
                w.gz[b] += w.b_gz[j];
            }
        }
    }
}

MLPOT_SIMD_CLONES void descriptor_block(const AngularPlan& p, const AngularArrays& w) {
    angular_batches<Pass::descriptors>(p, w);
}

MLPOT_SIMD_CLONES void derivative_block(const AngularPlan& p, const AngularArrays& w) {
    angular_batches<Pass::derivatives>(p, w);
}

MLPOT_SIMD_CLONES void chain_rule_block(const AngularPlan& p, const AngularArrays& w) {
    angular_batches<Pass::chain_rule>(p, w);
}

void angular_block(const AngularPlan& p, const AngularArrays& w) {
    if (w.A) {
        derivative_block(p, w);
    } else if (w.W) {
        chain_rule_block(p, w);
    } else {
        descriptor_block(p, w);
    }
}

template <typename T>
T* sized(std::vector<T>& buffer, std::size_t size) {
    if (buffer.size() < size) buffer.resize(size);
    return buffer.data();
}

template <typename T>
T* zeroed(std::vector<T>& buffer, std::size_t size) {
    T* data = sized(buffer, size);
    std::fill(data, data + size, T(0));
    return data;
}

}  // namespace

CutoffFunction parse_cutoff_function(const std::string& name) {
    if (name == "cosine") return CutoffFunction::cosine;
    if (name == "polynomial") return CutoffFunction::polynomial;
    invalid("unknown cutoff function '" + name + "'; use 'cosine' or 'polynomial'");
}

const char* cutoff_function_name(CutoffFunction function) {
    return function == CutoffFunction::cosine ? "cosine" : "polynomial";
}

// Scratch of one call, reused for every centre.
struct SymmetryFunctions::Workspace {
    // Edges of the current centre inside the cutoff ("slots"), in edge order.
    std::vector<std::int64_t> slot_edge;
    std::vector<double> slot_r, slot_inv_r, slot_ux, slot_uy, slot_uz;
    std::vector<int> slot_species;
    int n_slots = 0;
    std::vector<double> radial_tmp;
    std::vector<double> radial_A;  // [slot, S × n_radial]
    // Slots inside the angular cutoff ("angular slots"), sorted by neighbour species.
    int n_angular = 0;
    std::vector<int> angular_of_slot;  // slot → angular slot, or −1
    std::vector<int> run;              // [S + 1] species runs of the angular slots
    std::vector<double> ar, ainv, aux, auy, auz, avx, avy, avz;
    std::vector<int> aspecies;
    std::vector<double> h, dh, fc_tmp, dfc_tmp;
    std::vector<int> partner, row_run;  // the gathered partners of a batch of rows
    std::vector<double> pair_scratch;   // per-entry arrays of the batch
    std::vector<double> angular_G;  // [n_pairs × n_angular] (internal order)
    std::vector<double> angular_A;  // [angular slot][n_pairs × n_angular]
    std::vector<double> angular_B;  // [angular slot][n_pairs × n_angular][3]
    std::vector<double> descriptor, weight;  // gradient() only
    std::vector<double> along, gx, gy, gz, WP, WdP;  // chain-rule mode
};

SymmetryFunctions::SymmetryFunctions(SymmetryFunctionParameters parameters)
    : parameters_(std::move(parameters)) {
    const auto& p = parameters_;
    if (p.num_species < 1) invalid("the set needs at least one species");
    if (!(p.cutoff > 0.0) || !std::isfinite(p.cutoff)) {
        invalid("cutoff must be a positive, finite distance in Å, got " + str(p.cutoff));
    }
    if (!(p.angular_cutoff > 0.0) || !(p.angular_cutoff <= p.cutoff)) {
        invalid("angular_cutoff must be positive and at most the cutoff (" + str(p.cutoff) +
                " Å), got " + str(p.angular_cutoff) + " Å; leave it out to use the cutoff");
    }
    if (p.radial.empty() && p.angular.empty()) {
        invalid("the set has no functions; give at least one radial (G2) or angular (G4/G5) entry");
    }
    for (std::size_t k = 0; k < p.radial.size(); ++k) {
        const auto& f = p.radial[k];
        if (!(f.eta >= 0.0) || !std::isfinite(f.eta)) {
            invalid("radial function " + std::to_string(k) + ": eta must be ≥ 0, got " +
                    str(f.eta) + " (exp(−η (r − r_s)²) with η < 0 grows with distance)");
        }
        if (!std::isfinite(f.r_s)) {
            invalid("radial function " + std::to_string(k) + ": r_s must be finite, got " +
                    str(f.r_s));
        }
    }
    for (std::size_t k = 0; k < p.angular.size(); ++k) {
        const auto& f = p.angular[k];
        const std::string name = "angular function " + std::to_string(k) + ": ";
        if (!(f.eta >= 0.0) || !std::isfinite(f.eta)) {
            invalid(name + "eta must be ≥ 0, got " + str(f.eta) +
                    " (exp(−η r²) with η < 0 grows with distance)");
        }
        if (!(f.zeta >= 1.0) || !std::isfinite(f.zeta)) {
            invalid(name + "zeta must be ≥ 1, got " + str(f.zeta) +
                    " ((1 + λ cos θ)^ζ with ζ < 1 has an infinite derivative at cos θ = −λ)");
        }
        if (f.lambda != 1.0 && f.lambda != -1.0) {
            invalid(name + "lambda must be -1 or +1, got " + str(f.lambda));
        }
    }

    num_species_ = p.num_species;
    num_radial_ = static_cast<int>(p.radial.size());
    num_angular_ = static_cast<int>(p.angular.size());
    num_pairs_ = num_species_ * (num_species_ + 1) / 2;
    num_features_ = num_species_ * num_radial_ + num_pairs_ * num_angular_;
    for (const auto& f : p.radial) {
        radial_eta_.push_back(f.eta);
        radial_r_s_.push_back(f.r_s);
    }

    // Group angular functions by (η, kind), groups in order of first appearance.
    std::vector<std::pair<double, int>> keys;
    std::vector<int> group_of(num_angular_);
    for (int k = 0; k < num_angular_; ++k) {
        const std::pair<double, int> key{p.angular[k].eta,
                                         p.angular[k].kind == AngularSymmetryFunction::Kind::G4};
        auto found = std::find(keys.begin(), keys.end(), key);
        group_of[k] = static_cast<int>(found - keys.begin());
        if (found == keys.end()) keys.push_back(key);
    }
    for (int g = 0; g < static_cast<int>(keys.size()); ++g) {
        group_eta_.push_back(keys[g].first);
        group_g4_.push_back(keys[g].second);
        group_begin_.push_back(static_cast<int>(angular_order_.size()));
        for (int k = 0; k < num_angular_; ++k) {
            if (group_of[k] == g) angular_order_.push_back(k);
        }
        group_end_.push_back(static_cast<int>(angular_order_.size()));
        auto found = std::find(distinct_eta_.begin(), distinct_eta_.end(), keys[g].first);
        group_eta_index_.push_back(static_cast<int>(found - distinct_eta_.begin()));
        if (found == distinct_eta_.end()) distinct_eta_.push_back(keys[g].first);
    }
    for (int internal = 0; internal < num_angular_; ++internal) {
        const auto& f = p.angular[angular_order_[internal]];
        int index = -1;
        for (int q = 0; q < static_cast<int>(power_zeta_.size()); ++q) {
            if (power_zeta_[q] == f.zeta && power_lambda_[q] == f.lambda) index = q;
        }
        if (index < 0) {
            const bool is_integer = f.zeta == std::floor(f.zeta) && f.zeta <= MAX_INTEGER_ZETA;
            const double scale = std::pow(2.0, 1.0 - f.zeta);
            power_zeta_.push_back(f.zeta);
            power_lambda_.push_back(f.lambda);
            power_scale_.push_back(scale);
            power_dscale_.push_back(scale * f.zeta * f.lambda);
            power_exponent_.push_back(is_integer ? static_cast<int>(f.zeta) - 1 : -1);
            index = static_cast<int>(power_zeta_.size()) - 1;
        }
        function_power_.push_back(index);
    }
    all_g4_ = std::all_of(group_g4_.begin(), group_g4_.end(), [](int g4) { return g4 != 0; });
    for (const int exponent : power_exponent_) {
        for (int m = exponent, k = 0; m > 0; m >>= 1, ++k) {
            ladder_bits_ = std::max(ladder_bits_, k + 1);
        }
    }
}

void SymmetryFunctions::compute_centre(const EdgeList& edges, const std::int64_t* edge_ids,
                                       std::int64_t n_edges, Workspace& w, double* descriptor,
                                       bool derivatives, const double* angular_weights) const {
    const auto& p = parameters_;
    const double rc2 = p.cutoff * p.cutoff;
    const double rca = p.angular_cutoff;
    const bool cosine = p.cutoff_function == CutoffFunction::cosine;
    const int n_rad_features = num_species_ * num_radial_;
    const int n_ang_features = num_pairs_ * num_angular_;
    const auto n_max = static_cast<std::size_t>(n_edges);

    std::fill(descriptor, descriptor + num_features_, 0.0);

    // Edges inside the cutoff.
    std::int64_t* slot_edge = sized(w.slot_edge, n_max);
    double* r = sized(w.slot_r, n_max);
    double* inv_r = sized(w.slot_inv_r, n_max);
    double* ux = sized(w.slot_ux, n_max);
    double* uy = sized(w.slot_uy, n_max);
    double* uz = sized(w.slot_uz, n_max);
    int* species = sized(w.slot_species, n_max);
    int n_slots = 0, n_ang = 0;
    for (std::int64_t t = 0; t < n_edges; ++t) {
        const std::int64_t e = edge_ids[t];
        const double* v = edges.vectors + 3 * e;
        const double r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        if (!(r2 < rc2)) {
            if (std::isnan(r2)) {
                invalid("edge " + std::to_string(e) + " has a NaN vector; check the positions");
            }
            continue;
        }
        if (r2 == 0.0) {
            invalid("edge " + std::to_string(e) + " (atom " + std::to_string(edges.centre[e]) +
                    " → atom " + std::to_string(edges.neighbour[e]) +
                    ") has zero length: overlapping atoms; fix the structure");
        }
        const int s = n_slots++;
        const double rs = std::sqrt(r2), inv = 1.0 / rs;
        slot_edge[s] = e;
        r[s] = rs;
        inv_r[s] = inv;
        ux[s] = v[0] * inv;
        uy[s] = v[1] * inv;
        uz[s] = v[2] * inv;
        species[s] = static_cast<int>(edges.species[edges.neighbour[e]]);
        if (rs < rca) ++n_ang;
    }
    w.n_slots = n_slots;

    double* radial_A = nullptr;
    if (derivatives) {
        const std::size_t size = static_cast<std::size_t>(n_slots) * n_rad_features;
        radial_A = sized(w.radial_A, size);
        std::fill(radial_A, radial_A + size, 0.0);
    }
    if (num_radial_ > 0 && n_slots > 0) {
        radial_block(n_slots, r, species, num_radial_, n_rad_features, radial_eta_.data(),
                     radial_r_s_.data(), cosine, 1.0 / p.cutoff, descriptor, radial_A,
                     sized(w.radial_tmp, num_radial_));
    }
    if (num_angular_ == 0) return;

    // Angular slots, sorted by neighbour species (counting sort, stable).
    const auto na = static_cast<std::size_t>(n_ang);
    int* run = sized(w.run, num_species_ + 1);
    std::fill(run, run + num_species_ + 1, 0);
    for (int s = 0; s < n_slots; ++s) {
        if (r[s] < rca) ++run[species[s] + 1];
    }
    for (int t = 0; t < num_species_; ++t) run[t + 1] += run[t];
    int* angular_of_slot = sized(w.angular_of_slot, std::max(n_slots, 1));
    double* ar = zeroed(w.ar, na + 1);  // slot na stays zero: the padding partner
    double* ainv = zeroed(w.ainv, na + 1);
    double* aux = zeroed(w.aux, na + 1);
    double* auy = zeroed(w.auy, na + 1);
    double* auz = zeroed(w.auz, na + 1);
    double* avx = sized(w.avx, na);
    double* avy = sized(w.avy, na);
    double* avz = sized(w.avz, na);
    int* aspecies = sized(w.aspecies, na);
    for (int s = 0; s < n_slots; ++s) angular_of_slot[s] = -1;
    std::vector<int> next(run, run + num_species_);
    for (int s = 0; s < n_slots; ++s) {
        if (!(r[s] < rca)) continue;
        const int a = next[species[s]]++;
        const double* v = edges.vectors + 3 * slot_edge[s];
        angular_of_slot[s] = a;
        ar[a] = r[s];
        ainv[a] = inv_r[s];
        aux[a] = ux[s];
        auy[a] = uy[s];
        auz[a] = uz[s];
        avx[a] = v[0];
        avy[a] = v[1];
        avz[a] = v[2];
        aspecies[a] = species[s];
    }
    AngularArrays arrays{};
    arrays.n = n_ang;
    arrays.r = ar;
    arrays.inv_r = ainv;
    arrays.ux = aux;
    arrays.uy = auy;
    arrays.uz = auz;
    arrays.vx = avx;
    arrays.vy = avy;
    arrays.vz = avz;
    arrays.species = aspecies;
    arrays.run = run;
    arrays.num_species = num_species_;
    const int n_eta = static_cast<int>(distinct_eta_.size());
    const int n_groups = static_cast<int>(group_eta_.size());
    const int n_pow = static_cast<int>(power_zeta_.size());
    arrays.n_eta = n_eta;
    arrays.h_stride = na + 1;
    double* h = zeroed(w.h, arrays.h_stride * n_eta);
    double* dh = zeroed(w.dh, arrays.h_stride * n_eta);
    if (n_ang > 0) {
        edge_factors(n_ang, arrays.h_stride, ar, n_eta, distinct_eta_.data(), cosine, 1.0 / rca,
                     h, dh, sized(w.fc_tmp, na), sized(w.dfc_tmp, na));
    }
    arrays.h = h;
    arrays.dh = dh;
    // Batch scratch: the gathered partners of a batch of rows and everything per pair (see
    // angular_block); ~1000 entries keep it within a core's L2 cache for the usual sets. The
    // array length is not a multiple of 512 bytes, so that the arrays that one loop reads at
    // the same index fall into different L1 cache sets.
    const std::size_t row_entries = na + 4 * static_cast<std::size_t>(num_species_) + 4;
    const std::size_t cap = std::max<std::size_t>(1000, row_entries) | 8;
    arrays.cap = cap;
    arrays.partner = sized(w.partner, cap);
    arrays.row_run = sized(w.row_run, std::max<std::size_t>(na, 1) * (num_species_ + 1));
    double* pair_scratch = sized(w.pair_scratch, cap * (25 + 4 * n_eta + 5 * n_groups +
                                                        2 * n_pow + std::max(ladder_bits_ - 1, 0)));
    double** next_array = &pair_scratch;
    auto take = [&](std::size_t count) {
        double* begin = *next_array;
        *next_array += count * cap;
        return begin;
    };
    arrays.r_a = take(1);
    arrays.inv_r_a = take(1);
    arrays.ux_a = take(1);
    arrays.uy_a = take(1);
    arrays.uz_a = take(1);
    arrays.r_b = take(1);
    arrays.inv_r_b = take(1);
    arrays.ux_b = take(1);
    arrays.uy_b = take(1);
    arrays.uz_b = take(1);
    arrays.rjk2 = take(1);
    arrays.cos_theta = take(1);
    arrays.c_ra = take(1);
    arrays.c_rb = take(1);
    arrays.rjk = take(1);
    arrays.inv_rjk = take(1);
    arrays.fcjk = take(1);
    arrays.dfcjk = take(1);
    arrays.x = take(1);
    arrays.b_along = take(1);
    arrays.b_gx = take(1);
    arrays.b_gy = take(1);
    arrays.b_gz = take(1);
    arrays.WP = take(1);
    arrays.WdP = take(1);
    arrays.h_a = take(n_eta);
    arrays.dh_a = take(n_eta);
    arrays.h_b = take(n_eta);
    arrays.dh_b = take(n_eta);
    arrays.H = take(n_groups);
    arrays.Da = take(n_groups);
    arrays.Db = take(n_groups);
    arrays.Qa = take(n_groups);
    arrays.Qb = take(n_groups);
    arrays.P = take(n_pow);
    arrays.dP = take(n_pow);
    arrays.squares = take(std::max(ladder_bits_ - 1, 0));  // x^(2^k), k ≥ 1
    arrays.G = sized(w.angular_G, n_ang_features);
    std::fill(arrays.G, arrays.G + n_ang_features, 0.0);
    arrays.A = arrays.B = nullptr;
    arrays.W = angular_weights;
    if (angular_weights) {  // chain-rule mode: no per-function derivative arrays
        arrays.along = zeroed(w.along, na + 1);
        arrays.gx = zeroed(w.gx, na + 1);
        arrays.gy = zeroed(w.gy, na + 1);
        arrays.gz = zeroed(w.gz, na + 1);
    } else if (derivatives) {
        arrays.A = zeroed(w.angular_A, na * n_ang_features);
        arrays.B = zeroed(w.angular_B, na * 3 * n_ang_features);
    }
    w.n_angular = n_ang;

    if (n_ang > 1) {
        const AngularPlan plan{n_groups,
                               n_pow,
                               num_angular_,
                               n_ang_features,
                               group_eta_.data(),
                               group_g4_.data(),
                               group_begin_.data(),
                               group_end_.data(),
                               group_eta_index_.data(),
                               power_lambda_.data(),
                               power_zeta_.data(),
                               power_scale_.data(),
                               power_dscale_.data(),
                               power_exponent_.data(),
                               function_power_.data(),
                               ladder_bits_,
                               cosine,
                               all_g4_,
                               rca,
                               1.0 / rca};
        angular_block(plan, arrays);
    }
    // Angular descriptors back to the user order.
    double* out = descriptor + n_rad_features;
    for (int pair = 0; pair < num_pairs_; ++pair) {
        const int base = pair * num_angular_;
        for (int f = 0; f < num_angular_; ++f) out[base + angular_order_[f]] = arrays.G[base + f];
    }
}

namespace {

// Edge ids grouped by centre (counting sort; stable), after checking the indices.
void group_by_centre(const EdgeList& edges, int num_species, std::vector<std::int64_t>& offsets,
                     std::vector<std::int64_t>& order) {
    const std::int64_t n = edges.num_atoms, m = edges.num_edges;
    if (n < 0 || m < 0) invalid("negative number of atoms or edges");
    for (std::int64_t a = 0; a < n; ++a) {
        const std::int64_t s = edges.species[a];
        if (s < 0 || s >= num_species) {
            invalid("atom " + std::to_string(a) + " has species index " + std::to_string(s) +
                    ", but the set has " + std::to_string(num_species) +
                    " species (indices 0 … " + std::to_string(num_species - 1) +
                    "); map elements with the set's species list");
        }
    }
    offsets.assign(n + 1, 0);
    for (std::int64_t e = 0; e < m; ++e) {
        const std::int64_t i = edges.centre[e], j = edges.neighbour[e];
        if (i < 0 || i >= n || j < 0 || j >= n) {
            invalid("edge " + std::to_string(e) + " joins atoms " + std::to_string(i) + " and " +
                    std::to_string(j) + ", outside 0 … " + std::to_string(n - 1));
        }
        ++offsets[i + 1];
    }
    for (std::int64_t a = 0; a < n; ++a) offsets[a + 1] += offsets[a];
    order.resize(m);
    std::vector<std::int64_t> next(offsets.begin(), offsets.end() - 1);
    for (std::int64_t e = 0; e < m; ++e) order[next[edges.centre[e]]++] = e;
}

void check_centres(const std::int64_t* centres, std::int64_t n_centres, std::int64_t n_atoms,
                   std::vector<std::int64_t>* row_of_atom) {
    if (n_centres < 0) invalid("negative number of centres");
    if (row_of_atom) row_of_atom->assign(n_atoms, -1);
    for (std::int64_t c = 0; c < n_centres; ++c) {
        const std::int64_t i = centres[c];
        if (i < 0 || i >= n_atoms) {
            invalid("centre " + std::to_string(i) + " is not an atom index (0 … " +
                    std::to_string(n_atoms - 1) + ")");
        }
        if (row_of_atom) {
            if ((*row_of_atom)[i] >= 0) {
                invalid("atom " + std::to_string(i) + " appears twice in the centres");
            }
            (*row_of_atom)[i] = c;
        }
    }
}

}  // namespace

void SymmetryFunctions::compute(const EdgeList& edges, const std::int64_t* centres,
                                std::int64_t n_centres, double* descriptors,
                                double* derivatives) const {
    std::vector<std::int64_t> offsets, order;
    group_by_centre(edges, num_species_, offsets, order);
    check_centres(centres, n_centres, edges.num_atoms, nullptr);
    const int F = num_features_;
    const int n_rad_features = num_species_ * num_radial_;
    const int n_ang_features = num_pairs_ * num_angular_;
    Workspace w;

    std::vector<char> written;
    if (derivatives) written.assign(edges.num_edges, 0);
    for (std::int64_t c = 0; c < n_centres; ++c) {
        const std::int64_t i = centres[c];
        const std::int64_t* ids = order.data() + offsets[i];
        const std::int64_t n = offsets[i + 1] - offsets[i];
        compute_centre(edges, ids, n, w, descriptors + c * F, derivatives != nullptr);
        if (!derivatives) continue;
        // dG[e, f, :] = A u + B for the centre's edges inside the cutoff, zero for the others.
        int s = 0;
        for (std::int64_t t = 0; t < n; ++t) {
            const std::int64_t e = ids[t];
            double* out = derivatives + static_cast<std::size_t>(e) * F * 3;
            written[e] = 1;
            if (s >= w.n_slots || w.slot_edge[s] != e) {
                std::fill(out, out + static_cast<std::size_t>(F) * 3, 0.0);
                continue;
            }
            const double u0 = w.slot_ux[s], u1 = w.slot_uy[s], u2 = w.slot_uz[s];
            const double* A = w.radial_A.data() + static_cast<std::size_t>(s) * n_rad_features;
            for (int f = 0; f < n_rad_features; ++f) {
                out[3 * f] = A[f] * u0;
                out[3 * f + 1] = A[f] * u1;
                out[3 * f + 2] = A[f] * u2;
            }
            double* out_ang = out + 3 * n_rad_features;
            const int a = num_angular_ > 0 ? w.angular_of_slot[s] : -1;
            ++s;
            if (num_angular_ == 0) continue;
            if (a < 0) {
                std::fill(out_ang, out_ang + 3 * static_cast<std::size_t>(n_ang_features), 0.0);
                continue;
            }
            const double* AA = w.angular_A.data() + static_cast<std::size_t>(a) * n_ang_features;
            const double* BB =
                w.angular_B.data() + 3 * static_cast<std::size_t>(a) * n_ang_features;
            for (int pair = 0; pair < num_pairs_; ++pair) {
                const int base = pair * num_angular_;
                for (int f = 0; f < num_angular_; ++f) {
                    const int k = base + f;
                    double* o = out_ang + 3 * (base + angular_order_[f]);
                    o[0] = AA[k] * u0 + BB[3 * k];
                    o[1] = AA[k] * u1 + BB[3 * k + 1];
                    o[2] = AA[k] * u2 + BB[3 * k + 2];
                }
            }
        }
    }
    if (derivatives) {
        for (std::int64_t e = 0; e < edges.num_edges; ++e) {
            if (!written[e]) {
                double* out = derivatives + static_cast<std::size_t>(e) * F * 3;
                std::fill(out, out + static_cast<std::size_t>(F) * 3, 0.0);
            }
        }
    }
}

void SymmetryFunctions::contract(const EdgeList& edges, const std::int64_t* centres,
                                 std::int64_t n_centres, const double* derivatives,
                                 const double* dE_dG, double* gradient) const {
    for (std::int64_t e = 0; e < edges.num_edges; ++e) {
        const std::int64_t i = edges.centre[e];
        if (i < 0 || i >= edges.num_atoms) {
            invalid("edge " + std::to_string(e) + " has centre " + std::to_string(i) +
                    ", outside 0 … " + std::to_string(edges.num_atoms - 1));
        }
    }
    std::vector<std::int64_t> row_of_atom;
    check_centres(centres, n_centres, edges.num_atoms, &row_of_atom);
    const int F = num_features_;
    for (std::int64_t e = 0; e < edges.num_edges; ++e) {
        const std::int64_t row = row_of_atom[edges.centre[e]];
        double g0 = 0.0, g1 = 0.0, g2 = 0.0;
        if (row >= 0) {
            const double* d = derivatives + static_cast<std::size_t>(e) * F * 3;
            const double* wgt = dE_dG + static_cast<std::size_t>(row) * F;
            for (int f = 0; f < F; ++f) {
                g0 += wgt[f] * d[3 * f];
                g1 += wgt[f] * d[3 * f + 1];
                g2 += wgt[f] * d[3 * f + 2];
            }
        }
        gradient[3 * e] = g0;
        gradient[3 * e + 1] = g1;
        gradient[3 * e + 2] = g2;
    }
}

void SymmetryFunctions::gradient(const EdgeList& edges, const std::int64_t* centres,
                                 std::int64_t n_centres, const double* dE_dG,
                                 double* gradient) const {
    std::vector<std::int64_t> offsets, order;
    group_by_centre(edges, num_species_, offsets, order);
    std::vector<std::int64_t> row_of_atom;
    check_centres(centres, n_centres, edges.num_atoms, &row_of_atom);
    std::fill(gradient, gradient + 3 * static_cast<std::size_t>(edges.num_edges), 0.0);
    const int F = num_features_;
    const int n_rad_features = num_species_ * num_radial_;
    const int n_ang_features = num_pairs_ * num_angular_;
    Workspace w;
    double* descriptor = sized(w.descriptor, F);
    double* W = sized(w.weight, std::max(n_ang_features, 1));
    for (std::int64_t c = 0; c < n_centres; ++c) {
        const std::int64_t i = centres[c];
        const std::int64_t* ids = order.data() + offsets[i];
        const std::int64_t n = offsets[i + 1] - offsets[i];
        const double* wgt = dE_dG + static_cast<std::size_t>(c) * F;
        const double* wgt_ang = wgt + n_rad_features;
        for (int pair = 0; pair < num_pairs_; ++pair) {
            const int base = pair * num_angular_;
            for (int f = 0; f < num_angular_; ++f) W[base + f] = wgt_ang[base + angular_order_[f]];
        }
        compute_centre(edges, ids, n, w, descriptor, true, W);
        for (int s = 0; s < w.n_slots; ++s) {
            const std::int64_t e = w.slot_edge[s];
            const double* A = w.radial_A.data() + static_cast<std::size_t>(s) * n_rad_features;
            double along = 0.0, b0 = 0.0, b1 = 0.0, b2 = 0.0;
            for (int f = 0; f < n_rad_features; ++f) along += wgt[f] * A[f];
            const int a = num_angular_ > 0 ? w.angular_of_slot[s] : -1;
            if (a >= 0) {
                along += w.along[a];
                b0 = w.gx[a];
                b1 = w.gy[a];
                b2 = w.gz[a];
            }
            gradient[3 * e] = along * w.slot_ux[s] + b0;
            gradient[3 * e + 1] = along * w.slot_uy[s] + b1;
            gradient[3 * e + 2] = along * w.slot_uz[s] + b2;
        }
    }
}

}  // namespace mlpot
