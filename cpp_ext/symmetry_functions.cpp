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
// Speed. Per centre, the edges inside the angular cutoff are stored as arrays (sorted by neighbour
// species, zero-padded to a multiple of 4); for each edge a, everything that depends on the pair
// (a, b) only (cos θ, r_jk, f_c(r_jk), exp(−η r_jk²), the powers (1 ± cos θ)^ζ) is computed for
// all partners b > a in loops over b that the compiler vectorises (hence the branch-free exp,
// sin/cos and 1/√x below), and so is the accumulation over b, function by function. In
// chain-rule mode (gradient()), the functions of an (η, kind) group are first summed with their
// weights dE/dG, so the geometric terms are evaluated once per group instead of per function.
// On x86-64 with GCC the hot functions are also compiled for AVX2 + FMA and picked at load time
// (target_clones).
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

// Everything the angular accumulation needs, as raw arrays (see SymmetryFunctions::Workspace).
// Angular slots are sorted by neighbour species: species t occupies [run[t], run[t + 1]).
struct AngularArrays {
    int n;                                   // edges inside the angular cutoff
    std::size_t stride;                      // ≥ n + 3: per-partner arrays are zero beyond n
    const double *r, *inv_r, *ux, *uy, *uz;  // [n]
    const double *vx, *vy, *vz;              // [n] edge vectors
    const int* species;                      // [n]
    const int* run;                          // [S + 1]
    int num_species;
    const double *h, *dh;                    // [n_eta][n]
    // Pair quantities of the current row a, indexed by the partner b.
    double *c_ra, *c_rb, *rjk, *inv_rjk, *fcjk, *dfcjk;  // [n]
    double *H, *Da, *Db, *Qa, *Qb;                        // [n_groups][n]; Qa = Q r_a, Qb = Q r_b
    double *P, *dP, *x;                                   // [n_powers][n], [n]
    // Accumulators, internal function order; k = pair × n_angular + f.
    double* G;  // [k]
    double* A;  // [k][n] or null
    double* B;  // [3][k][n] or null
    // Chain-rule mode (A, B null): weights W[k] = dE/dG (internal order) and, per angular slot,
    // the gradient's component along u (along[n]) and the rest (gx, gy, gz [n]); scratch WP, WdP.
    const double* W;
    double *along, *gx, *gy, *gz, *WP, *WdP;
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
    double rc, inv_rc;
};

// P = scale · x^(m+1) and dP = dscale · x^m for x = max(1 + λ cos θ, 0), integer m < 2^Bits,
// by binary powering unrolled over the bits of m (one vectorised pass over the partners).
template <int Bits>
inline void integer_power(int b0, int n, double lambda, int m, double scale, double dscale,
                          const double* __restrict c, double* __restrict P,
                          double* __restrict dP) {
    for (int b = b0; b < n; ++b) {
        double x = 1.0 + lambda * c[b];
        x = x > 0.0 ? x : 0.0;
        double power = 1.0, square = x;
        for (int k = 0; k < Bits; ++k) {
            power = ((m >> k) & 1) ? power * square : power;
            square = square * square;
        }
        P[b] = scale * power * x;
        dP[b] = dscale * power;
    }
}

// The same for a non-integer ζ (std::pow; not vectorised).
inline void general_power(int b0, int n, double lambda, double zeta, double scale, double dscale,
                          const double* __restrict c, double* __restrict P,
                          double* __restrict dP) {
    for (int b = b0; b < n; ++b) {
        double x = 1.0 + lambda * c[b];
        x = x > 0.0 ? x : 0.0;
        const double power = std::pow(x, zeta - 1.0);
        P[b] = scale * power * x;
        dP[b] = dscale * power;
    }
}

// cos θ (and cos θ / r_a, cos θ / r_b), r_jk, 1/r_jk, f_c(r_jk), f_c'(r_jk) for partners
// b ∈ [b0, n)// of edge a; r_jk ≥ rc gives f_c = f_c' = 1/r_jk = 0.
template <bool Cosine>
inline void pair_geometry(int b0, int n, const double* __restrict ux, const double* __restrict uy,
                          const double* __restrict uz, const double* __restrict vx,
                          const double* __restrict vy, const double* __restrict vz,
                          const double* __restrict inv_r, double uxa, double uya, double uza,
                          double vxa, double vya, double vza, double inv_ra, double rc2,
                          double inv_rc, double* __restrict cos_theta, double* __restrict c_ra,
                          double* __restrict c_rb, double* __restrict rjk_out,
                          double* __restrict inv_rjk, double* __restrict fcjk,
                          double* __restrict dfcjk) {
    for (int b = b0; b < n; ++b) {
        const double c = uxa * ux[b] + uya * uy[b] + uza * uz[b];
        cos_theta[b] = c;
        c_ra[b] = c * inv_ra;
        c_rb[b] = c * inv_r[b];
        const double dx = vx[b] - vxa, dy = vy[b] - vya, dz = vz[b] - vza;
        const double rjk2 = dx * dx + dy * dy + dz * dz;
        const double in = rjk2 < rc2 ? 1.0 : 0.0;
        double inverse, rjk;
        inverse_sqrt_and_sqrt(rjk2 < rc2 ? rjk2 : rc2, inverse, rjk);
        double fc, dfc;
        if (Cosine) {
            cosine_cutoff(rjk * inv_rc, inv_rc, fc, dfc);
        } else {
            polynomial_cutoff(rjk * inv_rc, inv_rc, fc, dfc);
        }
        rjk_out[b] = rjk;
        inv_rjk[b] = in * inverse;
        fcjk[b] = in * fc;
        dfcjk[b] = in * dfc;
    }
}

// G4 distance factor H = h(r_a) h(r_b) h(r_jk) and its pieces (see the file header):
// Da = ∂H/∂r_a + Q r_a, Db = ∂H/∂r_b + Q r_b, Qa = Q r_a, Qb = Q r_b.
inline void g4_factors(int b0, int n, double eta, double ra, const double* __restrict hb,
                       const double* __restrict dhb, const double* __restrict rb, double ha,
                       double dha, const double* __restrict rjk,
                       const double* __restrict inv_rjk, const double* __restrict fcjk,
                       const double* __restrict dfcjk, double* __restrict H,
                       double* __restrict Da, double* __restrict Db, double* __restrict Qa,
                       double* __restrict Qb) {
    for (int b = b0; b < n; ++b) {
        const double ex = exp_nonpositive(-eta * rjk[b] * rjk[b]);
        const double hjk = ex * fcjk[b];
        const double dhjk = ex * (dfcjk[b] - 2.0 * eta * rjk[b] * fcjk[b]);
        const double hab = ha * hb[b];
        const double Q = hab * dhjk * inv_rjk[b];
        H[b] = hab * hjk;
        Qa[b] = Q * ra;
        Qb[b] = Q * rb[b];
        Da[b] = dha * hb[b] * hjk + Q * ra;
        Db[b] = ha * dhb[b] * hjk + Q * rb[b];
    }
}

// G5 distance factor H = h(r_a) h(r_b) (no r_jk term: Q = 0).
inline void g5_factors(int b0, int n, const double* __restrict hb, const double* __restrict dhb,
                       double ha, double dha, double* __restrict H, double* __restrict Da,
                       double* __restrict Db, double* __restrict Qa, double* __restrict Qb) {
    for (int b = b0; b < n; ++b) {
        H[b] = ha * hb[b];
        Da[b] = dha * hb[b];
        Db[b] = ha * dhb[b];
        Qa[b] = 0.0;
        Qb[b] = 0.0;
    }
}

// The terms of one function for partners b ∈ [lo, hi) of edge a: b-side contributions go to
// Ab, Bbx, Bby, Bbz [b]; the a-side sums (G, A_a, B_a) are returned in sums[0 … 4].
// (restrict-qualified parameters: GCC ignores restrict on local pointers.)
MLPOT_REASSOCIATE inline void pair_terms(int lo, int hi, const double* __restrict P,
                       const double* __restrict dP,
                       const double* __restrict H, const double* __restrict Da,
                       const double* __restrict Db, const double* __restrict Qa,
                       const double* __restrict Qb, const double* __restrict c_ra,
                       const double* __restrict c_rb, const double* __restrict inv_r,
                       const double* __restrict ux, const double* __restrict uy,
                       const double* __restrict uz, double inv_ra, double uxa, double uya,
                       double uza, double* __restrict Ab, double* __restrict Bbx,
                       double* __restrict Bby, double* __restrict Bbz, double* __restrict sums) {
    double sG = 0.0, sA = 0.0, sx = 0.0, sy = 0.0, sz = 0.0;
    for (int b = lo; b < hi; ++b) {
        const double Pb = P[b];
        const double dPH = dP[b] * H[b];
        sG += Pb * H[b];
        sA += Pb * Da[b] - dPH * c_ra[b];
        Ab[b] += Pb * Db[b] - dPH * c_rb[b];
        const double Bab = dPH * inv_ra - Pb * Qb[b];
        const double Bba = dPH * inv_r[b] - Pb * Qa[b];
        sx += Bab * ux[b];
        sy += Bab * uy[b];
        sz += Bab * uz[b];
        Bbx[b] += Bba * uxa;
        Bby[b] += Bba * uya;
        Bbz[b] += Bba * uza;
    }
    sums[0] = sG;
    sums[1] = sA;
    sums[2] = sx;
    sums[3] = sy;
    sums[4] = sz;
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

// Row a in chain-rule mode.
MLPOT_SIMD_CLONES MLPOT_REASSOCIATE
void chain_rule_row(const AngularPlan& p, const AngularArrays& w, int a) {
    MLPOT_CLANG_REASSOCIATE
    const std::size_t sn = w.stride;
    const double inv_ra = w.inv_r[a];
    const double uxa = w.ux[a], uya = w.uy[a], uza = w.uz[a];
    const int species_a = w.species[a];
    for (int t = 0; t < w.num_species; ++t) {
        const int lo = std::max(a + 1, w.run[t]);
        int hi = w.run[t + 1];
        if (lo >= hi) continue;
        if (hi == w.n) hi = lo + ((hi - lo + 3) & ~3);  // zero padding, see accumulate_row
        const int pair = species_a >= t ? species_a * (species_a + 1) / 2 + t
                                        : t * (t + 1) / 2 + species_a;
        const int base = pair * p.n_angular;
        for (int g = 0; g < p.n_groups; ++g) {
            const std::size_t go = static_cast<std::size_t>(g) * sn;
            std::fill(w.WP + lo, w.WP + hi, 0.0);
            std::fill(w.WdP + lo, w.WdP + hi, 0.0);
            bool any = false;
            for (int f = p.group_begin[g]; f < p.group_end[g]; ++f) {
                const double weight = w.W[base + f];
                if (weight == 0.0) continue;
                any = true;
                const std::size_t qo = static_cast<std::size_t>(p.function_power[f]) * sn;
                weighted_powers(lo, hi, weight, w.P + qo, w.dP + qo, w.WP, w.WdP);
            }
            if (!any) continue;
            double sums[4];
            weighted_terms(lo, hi, w.WP, w.WdP, w.H + go, w.Da + go, w.Db + go, w.Qa + go,
                           w.Qb + go, w.c_ra, w.c_rb, w.inv_r, w.ux, w.uy, w.uz, inv_ra, uxa, uya,
                           uza, w.along, w.gx, w.gy, w.gz, sums);
            w.along[a] += sums[0];
            w.gx[a] += sums[1];
            w.gy[a] += sums[2];
            w.gz[a] += sums[3];
        }
    }
}

// Row a of the accumulation: every function, over the partners b > a of each neighbour species.
// The sums over b are reassociated so that they vectorise (the results differ from a sequential
// sum by rounding only); nothing in this function relies on the evaluation order.
MLPOT_SIMD_CLONES MLPOT_REASSOCIATE
void accumulate_row(const AngularPlan& p, const AngularArrays& w, int a) {
    MLPOT_CLANG_REASSOCIATE
    const std::size_t sn = w.stride;
    const std::size_t NF = static_cast<std::size_t>(p.n_features);
    const double inv_ra = w.inv_r[a];
    const double uxa = w.ux[a], uya = w.uy[a], uza = w.uz[a];
    const int species_a = w.species[a];
    for (int t = 0; t < w.num_species; ++t) {
        const int lo = std::max(a + 1, w.run[t]);
        int hi = w.run[t + 1];
        if (lo >= hi) continue;
        // The last run may read on into the zero padding: a multiple of 4 partners, so that the
        // vector loops need no scalar remainder (padding partners contribute exactly zero).
        if (hi == w.n) hi = lo + ((hi - lo + 3) & ~3);
        const int pair = species_a >= t ? species_a * (species_a + 1) / 2 + t
                                        : t * (t + 1) / 2 + species_a;
        const int base = pair * p.n_angular;
        for (int g = 0; g < p.n_groups; ++g) {
            const std::size_t go = static_cast<std::size_t>(g) * sn;
            const double* __restrict H = w.H + go;
            for (int f = p.group_begin[g]; f < p.group_end[g]; ++f) {
                const std::size_t qo = static_cast<std::size_t>(p.function_power[f]) * sn;
                const double* __restrict P = w.P + qo;
                const std::size_t k = static_cast<std::size_t>(base + f);
                if (!w.A) {
                    double sum = 0.0;
                    for (int b = lo; b < hi; ++b) sum += P[b] * H[b];
                    w.G[k] += sum;
                    continue;
                }
                double sums[5];
                pair_terms(lo, hi, P, w.dP + qo, H, w.Da + go, w.Db + go, w.Qa + go, w.Qb + go,
                           w.c_ra, w.c_rb, w.inv_r, w.ux, w.uy, w.uz, inv_ra, uxa, uya, uza,
                           w.A + k * sn, w.B + k * sn, w.B + (NF + k) * sn,
                           w.B + (2 * NF + k) * sn, sums);
                w.G[k] += sums[0];
                w.A[k * sn + a] += sums[1];
                w.B[k * sn + a] += sums[2];
                w.B[(NF + k) * sn + a] += sums[3];
                w.B[(2 * NF + k) * sn + a] += sums[4];
            }
        }
    }
}

MLPOT_SIMD_CLONES
void angular_block(const AngularPlan& p, const AngularArrays& w) {
    const int n = w.n;
    const std::size_t sn = w.stride;
    const double rc2 = p.rc * p.rc;
    for (int a = 0; a + 1 < n; ++a) {
        const int b0 = a + 1;
        const double ra = w.r[a], inv_ra = w.inv_r[a];
        const double uxa = w.ux[a], uya = w.uy[a], uza = w.uz[a];
        const double vxa = w.vx[a], vya = w.vy[a], vza = w.vz[a];

        // Pair geometry for all partners b > a (w.x receives cos θ).
        if (p.cosine) {
            pair_geometry<true>(b0, n, w.ux, w.uy, w.uz, w.vx, w.vy, w.vz, w.inv_r, uxa, uya, uza,
                                vxa, vya, vza, inv_ra, rc2, p.inv_rc, w.x, w.c_ra, w.c_rb, w.rjk,
                                w.inv_rjk, w.fcjk, w.dfcjk);
        } else {
            pair_geometry<false>(b0, n, w.ux, w.uy, w.uz, w.vx, w.vy, w.vz, w.inv_r, uxa, uya, uza,
                                 vxa, vya, vza, inv_ra, rc2, p.inv_rc, w.x, w.c_ra, w.c_rb, w.rjk,
                                 w.inv_rjk, w.fcjk, w.dfcjk);
        }
        // Distance factors H and their derivatives, per (η, kind) group.
        for (int g = 0; g < p.n_groups; ++g) {
            const std::size_t q = static_cast<std::size_t>(p.group_eta_index[g]) * sn;
            const std::size_t go = static_cast<std::size_t>(g) * sn;
            if (p.group_g4[g]) {
                g4_factors(b0, n, p.group_eta[g], ra, w.h + q, w.dh + q, w.r, w.h[q + a],
                           w.dh[q + a], w.rjk, w.inv_rjk, w.fcjk, w.dfcjk, w.H + go, w.Da + go,
                           w.Db + go, w.Qa + go, w.Qb + go);
            } else {
                g5_factors(b0, n, w.h + q, w.dh + q, w.h[q + a], w.dh[q + a], w.H + go, w.Da + go,
                           w.Db + go, w.Qa + go, w.Qb + go);
            }
        }
        // Angular factors P = 2^{1−ζ} x^ζ and dP/dc = ζ λ 2^{1−ζ} x^{ζ−1}, x = max(1 + λc, 0)
        // (w.x holds c = cos θ).
        for (int q = 0; q < p.n_powers; ++q) {
            double* P = w.P + static_cast<std::size_t>(q) * sn;
            double* dP = w.dP + static_cast<std::size_t>(q) * sn;
            const double lambda = p.power_lambda[q];
            const double scale = p.power_scale[q], dscale = p.power_dscale[q];
            const int m = p.power_exponent[q];
            switch (m < 0 ? 0 : p.ladder_bits) {
                case 0: general_power(b0, n, lambda, p.power_zeta[q], scale, dscale, w.x, P, dP);
                    break;
                case 1: integer_power<1>(b0, n, lambda, m, scale, dscale, w.x, P, dP); break;
                case 2: integer_power<2>(b0, n, lambda, m, scale, dscale, w.x, P, dP); break;
                case 3: integer_power<3>(b0, n, lambda, m, scale, dscale, w.x, P, dP); break;
                case 4: integer_power<4>(b0, n, lambda, m, scale, dscale, w.x, P, dP); break;
                case 5: integer_power<5>(b0, n, lambda, m, scale, dscale, w.x, P, dP); break;
                default: integer_power<6>(b0, n, lambda, m, scale, dscale, w.x, P, dP); break;
            }
        }

        if (w.W) {
            chain_rule_row(p, w, a);
        } else {
            accumulate_row(p, w, a);
        }
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
    std::size_t angular_stride = 0;  // row length of the angular arrays (≥ n_angular + 3)
    std::vector<int> angular_of_slot;  // slot → angular slot, or −1
    std::vector<int> run;              // [S + 1] species runs of the angular slots
    std::vector<double> ar, ainv, aux, auy, auz, avx, avy, avz;
    std::vector<int> aspecies;
    std::vector<double> h, dh, fc_tmp, dfc_tmp;
    std::vector<double> c_ra, c_rb, rjk, inv_rjk, fcjk, dfcjk, H, Da, Db, Qa, Qb, P, dP, x;
    std::vector<double> angular_G;  // [n_pairs × n_angular] (internal order)
    std::vector<double> angular_A;  // [n_pairs × n_angular][angular slot]
    std::vector<double> angular_B;  // [3][n_pairs × n_angular][angular slot]
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
            const bool is_integer = f.zeta == std::floor(f.zeta) && f.zeta <= 64.0;
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
    // Per-partner arrays have a zero-filled tail (see accumulate_row).
    const std::size_t ns = ((na + 3) & ~static_cast<std::size_t>(3)) + 4;
    int* run = sized(w.run, num_species_ + 1);
    std::fill(run, run + num_species_ + 1, 0);
    for (int s = 0; s < n_slots; ++s) {
        if (r[s] < rca) ++run[species[s] + 1];
    }
    for (int t = 0; t < num_species_; ++t) run[t + 1] += run[t];
    int* angular_of_slot = sized(w.angular_of_slot, std::max(n_slots, 1));
    double* ar = zeroed(w.ar, ns);
    double* ainv = zeroed(w.ainv, ns);
    double* aux = zeroed(w.aux, ns);
    double* auy = zeroed(w.auy, ns);
    double* auz = zeroed(w.auz, ns);
    double* avx = zeroed(w.avx, ns);
    double* avy = zeroed(w.avy, ns);
    double* avz = zeroed(w.avz, ns);
    int* aspecies = sized(w.aspecies, ns);
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
    arrays.stride = ns;
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
    double* h = zeroed(w.h, ns * n_eta);
    double* dh = zeroed(w.dh, ns * n_eta);
    if (n_ang > 0) {
        edge_factors(n_ang, ns, ar, n_eta, distinct_eta_.data(), cosine, 1.0 / rca, h, dh,
                     sized(w.fc_tmp, na), sized(w.dfc_tmp, na));
    }
    arrays.h = h;
    arrays.dh = dh;
    arrays.c_ra = zeroed(w.c_ra, ns);
    arrays.c_rb = zeroed(w.c_rb, ns);
    arrays.rjk = zeroed(w.rjk, ns);
    arrays.inv_rjk = zeroed(w.inv_rjk, ns);
    arrays.fcjk = zeroed(w.fcjk, ns);
    arrays.dfcjk = zeroed(w.dfcjk, ns);
    arrays.H = zeroed(w.H, ns * n_groups);
    arrays.Da = zeroed(w.Da, ns * n_groups);
    arrays.Db = zeroed(w.Db, ns * n_groups);
    arrays.Qa = zeroed(w.Qa, ns * n_groups);
    arrays.Qb = zeroed(w.Qb, ns * n_groups);
    arrays.P = zeroed(w.P, ns * n_pow);
    arrays.dP = zeroed(w.dP, ns * n_pow);
    arrays.x = zeroed(w.x, ns);
    arrays.G = sized(w.angular_G, n_ang_features);
    std::fill(arrays.G, arrays.G + n_ang_features, 0.0);
    arrays.A = arrays.B = nullptr;
    arrays.W = angular_weights;
    if (angular_weights) {  // chain-rule mode: no per-function derivative arrays
        arrays.along = zeroed(w.along, ns);
        arrays.gx = zeroed(w.gx, ns);
        arrays.gy = zeroed(w.gy, ns);
        arrays.gz = zeroed(w.gz, ns);
        arrays.WP = sized(w.WP, ns);
        arrays.WdP = sized(w.WdP, ns);
    } else if (derivatives) {
        arrays.A = zeroed(w.angular_A, ns * n_ang_features);
        arrays.B = zeroed(w.angular_B, ns * 3 * n_ang_features);
    }
    w.n_angular = n_ang;
    w.angular_stride = ns;

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
        const std::size_t na = w.angular_stride;
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
            const double* AA = w.angular_A.data() + a;
            const double* Bx = w.angular_B.data() + a;
            const double* By = Bx + n_ang_features * na;
            const double* Bz = By + n_ang_features * na;
            for (int pair = 0; pair < num_pairs_; ++pair) {
                const int base = pair * num_angular_;
                for (int f = 0; f < num_angular_; ++f) {
                    const std::size_t k = static_cast<std::size_t>(base + f) * na;
                    double* o = out_ang + 3 * (base + angular_order_[f]);
                    o[0] = AA[k] * u0 + Bx[k];
                    o[1] = AA[k] * u1 + By[k];
                    o[2] = AA[k] * u2 + Bz[k];
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
