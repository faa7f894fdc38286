// Atom-centred symmetry functions: see symmetry_functions.hpp for definitions and layouts.
//
// Derivatives. Per centre i, with edge vectors a = r_ij, b = r_ik, lengths r_a, r_b,
// c = cos θ = a·b / (r_a r_b), d = b − a and r_jk = |d|, every term T(a, b) = P(c) H(r_a, r_b,
// r_jk) of G4/G5, P = 2^{1−ζ}(1 + λc)^ζ, H = h(r_a) h(r_b) h(r_jk), h(r) = exp(−η r²) f_c(r)
// (G5: H = h(r_a) h(r_b)), has its gradient in the plane of a and b, with one shared coefficient:
//   ∂T/∂a = A_a a + β d,   ∂T/∂b = A_b b − β d,
//   A_a = P′ (Z − Y_a) + P H dlog_a,   β = P′ Z − P Q,
//   Z = H / (r_a r_b),   Y_a = H c / r_a²,   Q = (∂H/∂r_jk) / r_jk,
//   dlog = (dh/dr) / (r h) = (f_c′/f_c − 2ηr) / r
// (and a ↔ b), from ∂c/∂a = b/(r_a r_b) − c a/r_a², b = a + d and ∂r_jk/∂a = −d/r_jk. An edge's
// A terms are summed as scalars over its partners and multiplied by its vector once at the end;
// only the β terms need a vector accumulator. Radial terms lie along a / r_a.
//
// Speed. Per centre, the edges inside the angular cutoff are stored as arrays sorted by neighbour
// species, and the unordered pairs (a, b > a) are listed once (several candidates at a time where
// the CPU has vectors: the kept ones packed by a permute, or AVX-512's compress, with d) — only
// those with r_jk < rc when every function is a G4 (f_c(r_jk) = 0 removes the others, about half
// the pairs in a dense solid). In batches of 128 pairs, everything that depends on the pair only
// (cos θ by the law of cosines, f_c(r_jk) as a series in r_jk², and per (η, kind) group one
// exponential, or the k-th power of another group's where η is k times its η, and the distance
// factors) is computed in loops over pairs that the compiler vectorises (hence the branch-free exp
// and series below, summed so that their dependency chains stay short). The angular functions
// themselves are evaluated eight at a time, one per vector lane ("chunks" of a group), W lanes per
// vector register (W = 4 with AVX2, else 8): the powers (1 + λ cos θ)^ζ of all lanes per pair
// (with AVX2, lanes whose ζ are powers of two from chains of squares, two pairs at a time:
// square_part), G as Σ P H over runs of pairs of one species block, and per pair and chunk the A
// and β terms of row a (kept in registers over its partners) and of the partner (added in its
// accumulator) as 12 vector multiply-adds per W lanes, so each pair is visited once for both of
// its edges. The derivatives are written with streaming stores.
// gradient() is compute() with derivatives contracted centre by centre. On x86-64 with GCC the hot
// functions are compiled for AVX-512, AVX2 + FMA and baseline x86-64 and picked at load time
// (target_clones); the code uses GCC/clang vector extensions.
#include "symmetry_functions.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>
#include <stdexcept>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>  // _mm_stream_pd, _mm_sfence
#endif
// Floating-point selects (x < 1 ? x : 1) only vectorise when comparisons may not trap; mlpot never
// enables floating-point exceptions, so this changes nothing else.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

// GCC on x86-64 Linux picks an instruction set at load time: the hot functions are cloned per
// target, and the pair list has an AVX-512 version of its own (build_pairs_avx512).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MLPOT_X86_DISPATCH 1
#include <immintrin.h>
#define MLPOT_SIMD_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLPOT_X86_DISPATCH 0
#define MLPOT_SIMD_CLONES
#endif

// The pair loops read and write distinct arrays cut from one scratch buffer, which the compiler
// cannot prove (GCC ignores restrict on local pointers): this says so, so that they vectorise.
#if defined(__clang__)
#define MLPOT_INDEPENDENT _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define MLPOT_INDEPENDENT _Pragma("GCC ivdep")
#else
#define MLPOT_INDEPENDENT
#endif

// The pass templates are inlined into the cloned functions, so that they are compiled per
// instruction set too (GCC stops inlining large functions otherwise).
#if defined(__GNUC__)
#define MLPOT_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define MLPOT_ALWAYS_INLINE inline
#endif

namespace mlpot {
namespace {

constexpr double PI = 3.141592653589793238462643383279502884;

// exp(−k η x) as the k-th power of exp(−η x) for k up to this (see group_factors): within about
// k + 2 ulp.
constexpr int MAX_SHARED_POWER = 16;

// Lanes with ζ = 2^k, k up to this, may take x^ζ from a chain of squares (see square_part).
constexpr int MAX_SQUARE_K = 4;

// Integer ζ up to this use binary powering (ζ − 1 has at most MAX_EXPONENT_BITS bits); larger
// or non-integer ζ use std::pow.
constexpr int MAX_INTEGER_ZETA = 64;
constexpr int MAX_EXPONENT_BITS = 6;
static_assert((1 << MAX_EXPONENT_BITS) >= MAX_INTEGER_ZETA,
              "ζ − 1 for ζ ≤ MAX_INTEGER_ZETA needs at most MAX_EXPONENT_BITS bits");

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

// sin(t) and cos(t) for |t| ≤ π/2 from their Taylor series to t²¹ / t²⁰ (truncation < 3e-17;
// with rounding, measured < 4.5e-16), summed in Estrin's order (pairs of terms, then pairs of
// pairs): a dependency chain of five multiply-adds instead of ten, so that vectorised loops are
// not bound by their latency.
MLPOT_ALWAYS_INLINE void sin_cos_half_range(double t, double& sine, double& cosine) {
    const double y = t * t, y2 = y * y, y4 = y2 * y2, y8 = y4 * y4;
    // sin t / t = Σ_k (−1)^k y^k / (2k + 1)!,  cos t = Σ_k (−1)^k y^k / (2k)!
    const auto s = [](int k) { return (k % 2 ? -1.0 : 1.0) * inverse_factorial(2 * k + 1); };
    const auto c = [](int k) { return (k % 2 ? -1.0 : 1.0) * inverse_factorial(2 * k); };
    const double s01 = s(0) + s(1) * y, s23 = s(2) + s(3) * y, s45 = s(4) + s(5) * y,
                 s67 = s(6) + s(7) * y, s89 = s(8) + s(9) * y;
    const double c01 = c(0) + c(1) * y, c23 = c(2) + c(3) * y, c45 = c(4) + c(5) * y,
                 c67 = c(6) + c(7) * y, c89 = c(8) + c(9) * y;
    const double s03 = s01 + s23 * y2, s47 = s45 + s67 * y2, s8a = s89 + s(10) * y2;
    const double c03 = c01 + c23 * y2, c47 = c45 + c67 * y2, c8a = c89 + c(10) * y2;
    sine = t * ((s03 + s47 * y4) + s8a * y8);
    cosine = (c03 + c47 * y4) + c8a * y8;
}

// exp(x) for x ≤ 0, branch-free (vectorisable), within about 1 ulp of std::exp; x < −708 gives
// ≈ 3.3e-308 instead of the (even smaller) true value. Taylor series of e^r to r¹³ (error
// < 1e-17) for |r| ≤ ln 2 / 2: 1 + (r + r² q(r)) with q in Estrin's order (see
// sin_cos_half_range); adding the 1 last keeps the rounding of the small terms out of the result.
MLPOT_ALWAYS_INLINE double exp_nonpositive(double x) {
    x = x > -708.0 ? x : -708.0;
    constexpr double magic = 6755399441055744.0;  // 1.5 · 2^52: adding it rounds to an integer
    const double t = x * 1.4426950408889634074 + magic;
    const double n = t - magic;
    double r = x - n * 6.93147180369123816490e-01;  // Cody–Waite: ln 2 = hi + lo
    r = r - n * 1.90821492927058770002e-10;         // |r| ≤ ln 2 / 2
    const auto a = [](int k) { return inverse_factorial(k + 2); };  // q = Σ_k r^k / (k + 2)!
    const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
    const double q01 = a(0) + a(1) * r, q23 = a(2) + a(3) * r, q45 = a(4) + a(5) * r,
                 q67 = a(6) + a(7) * r, q89 = a(8) + a(9) * r, qab = a(10) + a(11) * r;
    const double q03 = q01 + q23 * r2, q47 = q45 + q67 * r2, q8b = q89 + qab * r2;
    const double q = (q03 + q47 * r4) + q8b * r8;
    const double p = 1.0 + (r + r2 * q);
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
MLPOT_ALWAYS_INLINE void inverse_sqrt_and_sqrt(double x, double& inverse, double& root) {
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

// f_c and df_c/dr at x = r / rc ∈ [0, 1] (both vanish at x = 1), written in 1 − x so that f_c
// keeps its relative accuracy up to the cutoff: the angular pass divides by it (see dlog).
MLPOT_ALWAYS_INLINE void cosine_cutoff(double x, double inv_rc, double& fc, double& dfc) {
    // ½ (1 + cos π x) = sin² u and −(π / 2rc) sin π x = −(π / rc) sin u cos u, u = π (1 − x) / 2
    double sine, cosine;
    sin_cos_half_range(0.5 * PI * (1.0 - x), sine, cosine);
    fc = sine * sine;
    dfc = -PI * inv_rc * sine * cosine;
}

// Coefficients of ½ (1 + cos(π √s)) = Σ_k a_k s^k: a_0 = 1, a_k = ½ (−1)^k π^{2k} / (2k)!.
constexpr double cosine_cutoff_coefficient(int k) {
    double a = 1.0;
    for (int i = 1; i <= 2 * k; ++i) a *= PI / i;
    return k == 0 ? 1.0 : (k % 2 ? -0.5 : 0.5) * a;
}

// Σ_{k<15} c(k) s^k in Estrin's order, given s², s⁴ and s⁸.
template <typename Coefficient>
MLPOT_ALWAYS_INLINE double estrin15(Coefficient c, double s, double s2, double s4, double s8) {
    return ((c(0) + c(1) * s) + (c(2) + c(3) * s) * s2 +
            ((c(4) + c(5) * s) + (c(6) + c(7) * s) * s2) * s4) +
           (((c(8) + c(9) * s) + (c(10) + c(11) * s) * s2) +
            ((c(12) + c(13) * s) + c(14) * s2) * s4) * s8;
}

// f_c = ½ (1 + cos π x) and (df_c/dr) / r from s = x² = r² / rc² ∈ [0, 1], no square root: the
// series to s¹⁴ (terms after it < 2e-18); absolute error ≈ 6e-16 (the terms reach π²/4), so for
// factors of pair terms only, not where f_c′/f_c is needed (f_c is clamped at 0 just inside rc).
MLPOT_ALWAYS_INLINE void cosine_cutoff_of_square(double s, double inv_rc2, double& fc,
                                                 double& dfc_over_r) {
    const auto value = [](int k) { return cosine_cutoff_coefficient(k); };
    const auto slope = [](int k) { return (k + 1) * cosine_cutoff_coefficient(k + 1); };  // d/ds
    const double s2 = s * s, s4 = s2 * s2, s8 = s4 * s4;
    const double f = estrin15(value, s, s2, s4, s8);
    fc = f > 0.0 ? f : 0.0;
    dfc_over_r = 2.0 * inv_rc2 * estrin15(slope, s, s2, s4, s8);  // df_c/dr = (df_c/ds) 2r/rc²
}

MLPOT_ALWAYS_INLINE void polynomial_cutoff(double x, double inv_rc, double& fc, double& dfc) {
    const double one_minus = 1.0 - x, square = one_minus * one_minus;
    fc = square * one_minus * (1.0 + x * (3.0 + 6.0 * x));  // = 1 − 10x³ + 15x⁴ − 6x⁵
    dfc = -30.0 * x * x * square * inv_rc;
}

// The hand-written parts of the kernel come in three versions: the pair list with AVX-512
// compress, with AVX2 permutes, or one candidate at a time; the pair terms summed W = 8 lanes at
// a time (AVX-512; portable: left to the compiler) or 4 (AVX2). The best one the CPU runs is
// taken, or a lower one named by MLPOT_SIMD ("avx2" or "portable"; a higher one than the CPU runs
// gives its best), read once per process, so that the tests check every version on one machine
// (an AVX2 CPU runs both widths). The results agree up to rounding.
enum class VectorPath { portable, avx2, avx512 };
constexpr const char* VECTOR_PATH_NAMES[] = {"portable", "avx2", "avx512"};

VectorPath vector_path() {
    static const VectorPath path = [] {
#if MLPOT_X86_DISPATCH
        const VectorPath best = __builtin_cpu_supports("x86-64-v4")   ? VectorPath::avx512
                                : __builtin_cpu_supports("x86-64-v3") ? VectorPath::avx2
                                                                      : VectorPath::portable;
#else
        const VectorPath best = VectorPath::portable;
#endif
        const char* asked = std::getenv("MLPOT_SIMD");
        if (!asked || !*asked) return best;
        for (int k = 0; k < 3; ++k) {
            if (std::strcmp(asked, VECTOR_PATH_NAMES[k]) == 0) {
                return std::min(best, static_cast<VectorPath>(k));
            }
        }
        invalid(std::string("MLPOT_SIMD must be portable, avx2 or avx512 (a path no better than "
                            "the CPU's), got '") + asked + "'; unset it to use the CPU's best");
    }();
    return path;
}

}  // namespace

const char* simd_path() { return VECTOR_PATH_NAMES[static_cast<int>(vector_path())]; }

namespace {

// ---- Hot loops (free functions so that they can be cloned per instruction set). ----

// Radial functions of n edges (r, neighbour species) into G[S × n_radial] and, if A is not null,
// dG/dr into A[edge, S × n_radial] (zeroed by the caller). tmp holds 2 n + n_radial doubles: the
// cutoff functions of all edges first, in a loop that vectorises.
MLPOT_SIMD_CLONES
void radial_block(int n, const double* __restrict r, const int* __restrict species, int n_radial,
                  int n_features, const double* __restrict eta, const double* __restrict r_s,
                  bool cosine, double inv_rc, double* __restrict G, double* __restrict A,
                  double* __restrict tmp) {
    double* __restrict fc = tmp + n_radial;
    double* __restrict dfc = fc + n;
    if (cosine) {
        for (int s = 0; s < n; ++s) cosine_cutoff(r[s] * inv_rc, inv_rc, fc[s], dfc[s]);
    } else {
        for (int s = 0; s < n; ++s) polynomial_cutoff(r[s] * inv_rc, inv_rc, fc[s], dfc[s]);
    }
    for (int s = 0; s < n; ++s) {
        const int offset = species[s] * n_radial;
        double* __restrict g = G + offset;
        for (int f = 0; f < n_radial; ++f) {
            const double d = r[s] - r_s[f];
            tmp[f] = exp_nonpositive(-eta[f] * d * d);
        }
        for (int f = 0; f < n_radial; ++f) g[f] += tmp[f] * fc[s];
        if (A) {
            double* __restrict dA = A + static_cast<std::size_t>(s) * n_features + offset;
            for (int f = 0; f < n_radial; ++f) {
                const double d = r[s] - r_s[f];
                dA[f] = tmp[f] * (dfc[s] - 2.0 * eta[f] * d * fc[s]);
            }
        }
    }
}

// f_c(r) and dlog_c = f_c′ / (f_c r) of n edges (finite where f_c = 0: every term it multiplies
// has the factor f_c). With exp(−η r²), dlog = (dh/dr) / (r h) of h = exp(−η r²) f_c is
// dlog_c − 2η: every η-dependent factor is left to the pair loops.
MLPOT_SIMD_CLONES
void edge_cutoffs(int n, const double* __restrict r, const double* __restrict inv_r, bool cosine,
                  double inv_rc, double* __restrict fc, double* __restrict dlog_c) {
    if (cosine) {
        for (int a = 0; a < n; ++a) cosine_cutoff(r[a] * inv_rc, inv_rc, fc[a], dlog_c[a]);
    } else {
        for (int a = 0; a < n; ++a) polynomial_cutoff(r[a] * inv_rc, inv_rc, fc[a], dlog_c[a]);
    }
    for (int a = 0; a < n; ++a) dlog_c[a] = fc[a] > 0.0 ? dlog_c[a] / fc[a] * inv_r[a] : 0.0;
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

// ---- Angular functions, LANES at a time ----

// One vector of doubles (an AVX-512 register; two AVX2 or four SSE2 registers elsewhere): the
// angular functions of one chunk, evaluated side by side. GCC and clang vector extensions.
constexpr int LANES = 8;
// (Aligned explicitly: GCC otherwise aligns them only as far as the baseline target's vectors.)
typedef double lanes __attribute__((vector_size(LANES * sizeof(double)), aligned(64)));
typedef std::int64_t lane_mask
    __attribute__((vector_size(LANES * sizeof(std::int64_t)), aligned(64)));

// Storage for lanes, aligned (std::vector<lanes> is not: GCC drops a type's attributes in
// template arguments).
class LaneBuffer {
public:
    LaneBuffer() = default;
    LaneBuffer(const LaneBuffer&) = delete;
    LaneBuffer& operator=(const LaneBuffer&) = delete;
    ~LaneBuffer() { release(); }

    /// At least n lanes (contents undefined after growing).
    lanes* sized(std::size_t n) {
        if (n > size_) {
            release();
            data_ = static_cast<lanes*>(::operator new(n * sizeof(lanes), alignment));
            size_ = n;
        }
        return data_;
    }
    lanes* zeroed(std::size_t n) {
        lanes* data = sized(n);
        std::fill(data, data + n, lanes{});
        return data;
    }
    lanes* data() const { return data_; }

private:
    static constexpr std::align_val_t alignment{alignof(lanes)};
    void release() {
        if (data_) ::operator delete(data_, alignment);
        data_ = nullptr;
        size_ = 0;
    }
    lanes* data_ = nullptr;
    std::size_t size_ = 0;
};

MLPOT_ALWAYS_INLINE void load_lanes(lanes& target, const double* source) {
    std::memcpy(&target, source, sizeof target);
}

// The angular part of the set as raw arrays (SymmetryFunctions' members, see the header).
struct LanePlan {
    int num_species, n_blocks, n_chunks, n_groups, n_patterns;
    const int *chunk_group, *chunk_pattern;                // [chunk]
    const double* group_eta;                               // [group]
    const int* group_g4;                                   // [group]
    const int *group_base, *group_power;                   // [group]: see the header
    const double *lambda, *scale, *dscale, *zeta;          // [pattern × LANES]
    const int* exponent;                                   // [pattern × LANES]: ζ − 1, or −1
    const int* pattern_fractional;                         // [pattern]
    const int* square_parts;                               // [pattern × 2]
    bool cosine;
    bool all_g4;  // every function has the f_c(r_jk) factor: pairs with r_jk ≥ rc are dropped
    VectorPath path;
    double rc, inv_rc;
};

// The centre's edges inside the angular cutoff ("angular slots"), sorted by neighbour species:
// species t occupies [run[t], run[t + 1]).
struct AngularEdges {
    int n;
    const double *vx, *vy, *vz;              // [n + LANES]: the edge vector, zeros past n (the
                                             // pair lists read several candidates at a time)
    const double *inv_r, *r2, *fc, *dlog_c;  // [n]: 1/r, r², f_c(r) and f_c′ / (f_c r)
    const int* species;                      // [n]
    const int* run;                          // [S + 1]
};

// Row a's partners of species t at the batch's entries [lo, hi), in the angular block `block`.
struct Segment {
    int a, block, lo, hi;
};

// Scratch of the angular pass, and its results for one centre.
struct AngularScratch {
    std::vector<int> pair_b;           // partners b > a of the pairs (a, b), row a by row a
    std::vector<int> row_run;          // [slot][S + 1]: row a's partners of species t start here
    std::vector<double> pair_values;   // [PairValue][pair_stride]
    std::size_t pair_stride = 0;
    std::vector<double> factors;       // [pair factor][STRIDE] of a batch of pairs
    std::vector<Segment> segments;     // the batch's pairs, row by row (with derivatives)
    std::vector<Segment> blocks;       // the same, consecutive segments of one block joined
                                       // (only block, lo and hi are used)
    std::vector<char> row_stored;      // [slot][block]: the row's sums are in acc already
    LaneBuffer powers;                // [batch pair][pattern][P, P′]
    LaneBuffer G;                     // [block][chunk]: the descriptors (internal order)
    LaneBuffer acc;                   // [slot][block][chunk][A, Bx, By, Bz]: see the file header
};

// Pairs per batch: the batch's pair factors (≈ 30–50 arrays of CAP doubles) stay in L1/L2, and
// its powers (CAP × 16 doubles per pattern) beside the accumulators in L1 (on a Zen 3 core, 128
// was 3% faster than 256 for the Behler set; 64, 96 and 160 were slower than 128).
constexpr int CAP = 128;
// Distance between the batch's per-pair arrays: not a multiple of 512 bytes, so that arrays
// read or written at the same index fall into different L1 cache sets (2 kB spacing made the
// packing 1.5× slower).
constexpr int STRIDE = CAP + LANES;

// Per-pair arrays of a batch ([factor][STRIDE]): row a's values beside each of its pairs, the
// partner's, the geometry, then per group the distance factors.
// W_A = 1/(r_a r_b) − cos θ / r_a² (and W_B), so that Z − Y_a = H W_A; DFC_JK is
// (df_c/dr_jk) / r_jk; RJK and INV_RJK only for the polynomial cutoff.
enum PairFactor {
    INV_RA, R2_A, FC_A, DLOG_C_A,
    R2_B, FC_B, DLOG_C_B, INV_RB,
    COS_THETA, RJK2, RJK, INV_RJK, FC_JK, DFC_JK, W_A, W_B, INV_RARB, R2_AB, FC_AB,
    NUM_PAIR_FACTORS
};
// d = r_b − r_a for every pair of the centre, packed with the pair list ([value][pair_stride]).
// (The partner's other values are gathered per batch: packing them cost more.)
enum PairValue { P_DX, P_DY, P_DZ, NUM_PAIR_VALUES };
// Per group, with derivatives (without: H only); see the file header. ZY_A = Z − Y_a,
// HD_A = H dlog_a (and b).
enum GroupFactor { H_, Q_, Z_, ZY_A, ZY_B, HD_A, HD_B, NUM_GROUP_FACTORS };

// The arrays of build_pairs, sized for all candidate pairs of the centre.
struct PairArrays {
    int* pb;               // partner
    double *dx, *dy, *dz;  // the PairValue arrays
    int* row_run;          // [slot][S + 1]
};

MLPOT_ALWAYS_INLINE PairArrays pair_arrays(const LanePlan& p, const AngularEdges& e,
                                           AngularScratch& s) {
    const int n = e.n, S = p.num_species;
    const std::size_t candidates = static_cast<std::size_t>(n) * (n - 1) / 2 + LANES;
    // (a stride ≡ 8 mod 16 doubles: the arrays do not share L1 cache sets)
    const std::size_t ps = s.pair_stride = ((candidates + LANES - 1) / LANES * LANES) | LANES;
    double* values = sized(s.pair_values, ps * NUM_PAIR_VALUES);
    return {sized(s.pair_b, candidates), values + P_DX * ps, values + P_DY * ps,
            values + P_DZ * ps,
            sized(s.row_run, static_cast<std::size_t>(n) * (S + 1))};
}

// Unordered pairs (a, b > a) of angular slots, row by row, partners in slot order, so that row
// a's partners of species t are [row_run[a][t], row_run[a][t + 1]). When every function is a G4,
// pairs with r_jk ≥ rc are left out: f_c(r_jk) = 0 makes their terms vanish, and in a dense
// solid that is about half of the pairs. Each candidate is stored at the end of the list, which
// advances only if it is kept (no branch). Returns the number of pairs. The portable version;
// build_pairs_avx2 and build_pairs_avx512 pack several candidates at a time.
MLPOT_ALWAYS_INLINE int build_pairs(const LanePlan& p, const AngularEdges& e, AngularScratch& s) {
    const int n = e.n, S = p.num_species;
    const PairArrays arrays = pair_arrays(p, e, s);
    int* __restrict pb = arrays.pb;
    double* __restrict dx = arrays.dx;
    double* __restrict dy = arrays.dy;
    double* __restrict dz = arrays.dz;
    const double limit = p.all_g4 ? p.rc * p.rc : HUGE_VAL;
    int m = 0;
    for (int a = 0; a < n; ++a) {
        const double vxa = e.vx[a], vya = e.vy[a], vza = e.vz[a];
        int* run = arrays.row_run + a * (S + 1);
        for (int t = 0; t < S; ++t) {
            run[t] = m;
            for (int b = std::max(a + 1, e.run[t]); b < e.run[t + 1]; ++b) {
                const double x = e.vx[b] - vxa, y = e.vy[b] - vya, z = e.vz[b] - vza;
                const double r2 = x * x + y * y + z * z;
                pb[m] = b;
                dx[m] = x;
                dy[m] = y;
                dz[m] = z;
                m += r2 < limit;
            }
        }
        run[S] = m;
    }
    return m;
}

#if MLPOT_X86_DISPATCH
// For each 4-bit keep-mask, the 32-bit lanes that move the kept doubles to the front, and the
// kept lanes themselves.
struct PackTable {
    std::int32_t index[16][8];
    std::int32_t lane[16][4];
    constexpr PackTable() : index{}, lane{} {
        for (int mask = 0; mask < 16; ++mask) {
            int n = 0;
            for (int l = 0; l < 4; ++l) {
                if (mask & (1 << l)) {
                    index[mask][2 * n] = 2 * l;
                    index[mask][2 * n + 1] = 2 * l + 1;
                    lane[mask][n] = l;
                    ++n;
                }
            }
        }
    }
};
constexpr PackTable PACK{};

// build_pairs with AVX2, four candidates at a time: their r_jk² in a register, the kept ones
// moved to the front by one permute from a 16-entry table and stored at the end of the list,
// which advances by the number kept (the arrays have room for four more).
__attribute__((target("arch=x86-64-v3"))) int build_pairs_avx2(const LanePlan& p,
                                                                const AngularEdges& e,
                                                                AngularScratch& s) {
    const int n = e.n, S = p.num_species;
    const PairArrays arrays = pair_arrays(p, e, s);
    const __m256d limit = _mm256_set1_pd(p.all_g4 ? p.rc * p.rc : HUGE_VAL);
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const auto pack = [](double* out, __m256d v, __m256i index) {
        const __m256 packed = _mm256_permutevar8x32_ps(_mm256_castpd_ps(v), index);
        _mm256_storeu_pd(out, _mm256_castps_pd(packed));
    };
    int m = 0;
    for (int a = 0; a < n; ++a) {
        const __m256d xa = _mm256_set1_pd(e.vx[a]), ya = _mm256_set1_pd(e.vy[a]),
                      za = _mm256_set1_pd(e.vz[a]);
        int* run = arrays.row_run + a * (S + 1);
        for (int t = 0; t < S; ++t) {
            run[t] = m;
            const int end = e.run[t + 1];
            for (int b = std::max(a + 1, e.run[t]); b < end; b += 4) {
                const __m256d vx = _mm256_loadu_pd(e.vx + b), vy = _mm256_loadu_pd(e.vy + b),
                              vz = _mm256_loadu_pd(e.vz + b);
                const __m256d x = _mm256_sub_pd(vx, xa), y = _mm256_sub_pd(vy, ya),
                              z = _mm256_sub_pd(vz, za);
                const __m256d r2 =
                    _mm256_fmadd_pd(z, z, _mm256_fmadd_pd(y, y, _mm256_mul_pd(x, x)));
                // kept: r² < limit and b + lane < end (the lanes past end read the next
                // species' slots, or past n the arrays' zeros: `valid` drops them)
                const __m256i valid = _mm256_cmpgt_epi64(_mm256_set1_epi64x(end - b), lane);
                const int mask = _mm256_movemask_pd(_mm256_and_pd(
                    _mm256_cmp_pd(r2, limit, _CMP_LT_OQ), _mm256_castsi256_pd(valid)));
                const __m256i index = _mm256_loadu_si256(
                    reinterpret_cast<const __m256i*>(PACK.index[mask]));
                pack(arrays.dx + m, x, index);
                pack(arrays.dy + m, y, index);
                pack(arrays.dz + m, z, index);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(arrays.pb + m),
                                 _mm_add_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                                   PACK.lane[mask])),
                                               _mm_set1_epi32(b)));
                m += __builtin_popcount(static_cast<unsigned>(mask));
            }
        }
        run[S] = m;
    }
    return m;
}

// build_pairs with AVX-512's comparisons into a mask register and its compress instruction in
// place of the permute table of build_pairs_avx2 (eight candidates at a time). GCC cannot
// inline AVX-512 intrinsics into the cloned templates, so this is a function of its own.
__attribute__((target("arch=x86-64-v4"))) int build_pairs_avx512(const LanePlan& p,
                                                                  const AngularEdges& e,
                                                                  AngularScratch& s) {
    const int n = e.n, S = p.num_species;
    const PairArrays arrays = pair_arrays(p, e, s);
    const __m512d limit = _mm512_set1_pd(p.all_g4 ? p.rc * p.rc : HUGE_VAL);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int m = 0;
    for (int a = 0; a < n; ++a) {
        const __m512d xa = _mm512_set1_pd(e.vx[a]), ya = _mm512_set1_pd(e.vy[a]),
                      za = _mm512_set1_pd(e.vz[a]);
        int* run = arrays.row_run + a * (S + 1);
        for (int t = 0; t < S; ++t) {
            run[t] = m;
            const int end = e.run[t + 1];
            for (int b = std::max(a + 1, e.run[t]); b < end; b += LANES) {
                const __m512d vx = _mm512_loadu_pd(e.vx + b), vy = _mm512_loadu_pd(e.vy + b),
                              vz = _mm512_loadu_pd(e.vz + b);
                const __m512d x = _mm512_sub_pd(vx, xa), y = _mm512_sub_pd(vy, ya),
                              z = _mm512_sub_pd(vz, za);
                const __m512d r2 =
                    _mm512_fmadd_pd(z, z, _mm512_fmadd_pd(y, y, _mm512_mul_pd(x, x)));
                const int left = end - b;
                const __mmask8 valid =
                    left >= LANES ? 0xFF : static_cast<__mmask8>((1u << left) - 1);
                const __mmask8 k = _mm512_mask_cmp_pd_mask(valid, r2, limit, _CMP_LT_OQ);
                _mm256_storeu_si256(
                    reinterpret_cast<__m256i*>(arrays.pb + m),
                    _mm256_maskz_compress_epi32(k, _mm256_add_epi32(lane, _mm256_set1_epi32(b))));
                _mm512_storeu_pd(arrays.dx + m, _mm512_maskz_compress_pd(k, x));
                _mm512_storeu_pd(arrays.dy + m, _mm512_maskz_compress_pd(k, y));
                _mm512_storeu_pd(arrays.dz + m, _mm512_maskz_compress_pd(k, z));
                m += __builtin_popcount(k);
            }
        }
        run[S] = m;
    }
    return m;
}
#endif

// Row a's values beside each of its pairs [lo, hi) of the batch, so that the pair loops below
// read contiguous arrays (and vectorise).
template <bool Derivatives>
MLPOT_ALWAYS_INLINE void fill_row(const AngularEdges& e, int a, int lo, int hi,
                                  double* __restrict f) {
    // Eight at a time, past hi: the next row overwrites the excess (rows are filled in order,
    // and the arrays have LANES of room after CAP).
    const auto fill = [f, lo, hi](int factor, double value) {
        double* __restrict out = f + factor * STRIDE;
        for (int j = lo; j < hi; j += LANES) {
            for (int l = 0; l < LANES; ++l) out[j + l] = value;
        }
    };
    fill(INV_RA, e.inv_r[a]);
    fill(R2_A, e.r2[a]);
    fill(FC_A, e.fc[a]);
    if constexpr (Derivatives) fill(DLOG_C_A, e.dlog_c[a]);
}

// The partners' values beside each of the batch's m pairs (its partners pb).
template <bool Derivatives>
MLPOT_ALWAYS_INLINE void gather_partner_factors(const AngularEdges& e, const int* __restrict pb,
                                                int m, double* __restrict f) {
    double* __restrict r2 = f + R2_B * STRIDE;
    double* __restrict fc = f + FC_B * STRIDE;
    double* __restrict dlog_c = f + DLOG_C_B * STRIDE;
    double* __restrict inv_r = f + INV_RB * STRIDE;
    for (int j = 0; j < m; ++j) {
        inv_r[j] = e.inv_r[pb[j]];
        r2[j] = e.r2[pb[j]];
        fc[j] = e.fc[pb[j]];
        if constexpr (Derivatives) dlog_c[j] = e.dlog_c[pb[j]];
    }
}

// Geometry of m pairs: r_jk from d, cos θ = (r_a² + r_b² − r_jk²) / (2 r_a r_b), f_c(r_jk), …
// (r_jk ≥ rc gives f_c = f_c' = 0).
template <bool Cosine, bool Derivatives>
MLPOT_ALWAYS_INLINE void pair_geometry(const LanePlan& p, int m, const double* __restrict pv,
                                       std::size_t ps, double* __restrict f) {
    const double rc2 = p.rc * p.rc;
    const double* __restrict dx = pv + P_DX * ps;
    const double* __restrict dy = pv + P_DY * ps;
    const double* __restrict dz = pv + P_DZ * ps;
    const double* __restrict ia = f + INV_RA * STRIDE;
    const double* __restrict ib = f + INV_RB * STRIDE;
    double* __restrict cos_theta = f + COS_THETA * STRIDE;
    double* __restrict rjk2 = f + RJK2 * STRIDE;
    double* __restrict rjk = f + RJK * STRIDE;
    double* __restrict inv_rjk = f + INV_RJK * STRIDE;
    double* __restrict fcjk = f + FC_JK * STRIDE;
    double* __restrict dfcjk = f + DFC_JK * STRIDE;
    double* __restrict wa = f + W_A * STRIDE;
    double* __restrict wb = f + W_B * STRIDE;
    double* __restrict iab = f + INV_RARB * STRIDE;
    const double* __restrict r2a = f + R2_A * STRIDE;
    const double* __restrict r2b = f + R2_B * STRIDE;
    const double* __restrict fca = f + FC_A * STRIDE;
    const double* __restrict fcb = f + FC_B * STRIDE;
    double* __restrict r2ab = f + R2_AB * STRIDE;
    double* __restrict fcab = f + FC_AB * STRIDE;
    MLPOT_INDEPENDENT
    for (int j = 0; j < m; ++j) {
        const double inv_ab = ia[j] * ib[j];
        const double d2 = dx[j] * dx[j] + dy[j] * dy[j] + dz[j] * dz[j];
        const double c = 0.5 * (r2a[j] + r2b[j] - d2) * inv_ab;
        cos_theta[j] = c;
        r2ab[j] = r2a[j] + r2b[j];
        fcab[j] = fca[j] * fcb[j];
        const double r2 = d2 < rc2 ? d2 : rc2;
        rjk2[j] = r2;
        if (!Cosine) {  // the polynomial cutoff has odd powers of r_jk
            double inverse, root;
            inverse_sqrt_and_sqrt(r2, inverse, root);
            rjk[j] = root;
            inv_rjk[j] = inverse;
        }
        if constexpr (Derivatives) {
            wa[j] = inv_ab - c * ia[j] * ia[j];
            wb[j] = inv_ab - c * ib[j] * ib[j];
            iab[j] = inv_ab;
        }
    }
    // (a loop of its own: the square roots and the cutoff function are long dependency chains)
    MLPOT_INDEPENDENT
    for (int j = 0; j < m; ++j) {
        const double in = rjk2[j] < rc2 ? 1.0 : 0.0;
        double fc, dfc_over_r;
        if (Cosine) {
            cosine_cutoff_of_square(rjk2[j] * p.inv_rc * p.inv_rc, p.inv_rc * p.inv_rc, fc,
                                    dfc_over_r);
        } else {
            double dfc;
            polynomial_cutoff(rjk[j] * p.inv_rc, p.inv_rc, fc, dfc);
            dfc_over_r = dfc * inv_rjk[j];
        }
        fcjk[j] = in * fc;
        if constexpr (Derivatives) dfcjk[j] = in * dfc_over_r;  // (df_c/dr) / r
    }
}

// Distance factors of one group for m pairs (see the file header): H = exp(−η (r_a² + r_b² +
// r_jk²)) f_c(r_a) f_c(r_b) f_c(r_jk) (G5: without r_jk² and f_c(r_jk)) and, with derivatives,
// Q = (∂H/∂r_jk) / r_jk, Z = H / (r_a r_b), Z − Y_a = H (1/(r_a r_b) − cos θ / r_a²), Z − Y_b,
// and H dlog of both edges, dlog = dlog_c − 2η. The exponential is computed and kept in `exps`
// (other groups may take powers of it), or, if Given, read from there (see power_pass).
template <bool G4, bool Derivatives, bool Given>
MLPOT_ALWAYS_INLINE void group_factors(double eta, int m, const double* __restrict f,
                                       double* __restrict out, double* __restrict exps) {
    const double* __restrict r2ab = f + R2_AB * STRIDE;
    const double* __restrict fcab = f + FC_AB * STRIDE;
    const double* __restrict rjk2 = f + RJK2 * STRIDE;
    const double* __restrict fcjk = f + FC_JK * STRIDE;
    const double* __restrict dfcjk = f + DFC_JK * STRIDE;
    const double* __restrict wa = f + W_A * STRIDE;
    const double* __restrict wb = f + W_B * STRIDE;
    const double* __restrict iab = f + INV_RARB * STRIDE;
    const double* __restrict dca = f + DLOG_C_A * STRIDE;
    const double* __restrict dcb = f + DLOG_C_B * STRIDE;
    double* __restrict H = out + H_ * STRIDE;
    double* __restrict Q = out + Q_ * STRIDE;
    double* __restrict Z = out + Z_ * STRIDE;
    double* __restrict ZYa = out + ZY_A * STRIDE;
    double* __restrict ZYb = out + ZY_B * STRIDE;
    double* __restrict HDa = out + HD_A * STRIDE;
    double* __restrict HDb = out + HD_B * STRIDE;
    MLPOT_INDEPENDENT
    for (int j = 0; j < m; ++j) {
        double e;
        if constexpr (Given) {
            e = exps[j];
        } else {
            e = exp_nonpositive(-eta * (G4 ? r2ab[j] + rjk2[j] : r2ab[j]));
            exps[j] = e;
        }
        const double base = e * fcab[j];
        double Hj, q = 0.0;
        if constexpr (G4) {
            Hj = base * fcjk[j];
            if constexpr (Derivatives) q = base * (dfcjk[j] - 2.0 * eta * fcjk[j]);
        } else {
            Hj = base;
        }
        H[j] = Hj;
        if constexpr (Derivatives) {
            Q[j] = q;
            Z[j] = Hj * iab[j];
            ZYa[j] = Hj * wa[j];
            ZYb[j] = Hj * wb[j];
            HDa[j] = Hj * (dca[j] - 2.0 * eta);
            HDb[j] = Hj * (dcb[j] - 2.0 * eta);
        }
    }
}

template <int K>
MLPOT_ALWAYS_INLINE double power_of(double x) {
    if constexpr (K == 1) {
        return x;
    } else if constexpr (K % 2 == 0) {
        const double half = power_of<K / 2>(x);
        return half * half;
    } else {
        return x * power_of<K - 1>(x);
    }
}

// out[j] = in[j]^k for m pairs, 2 ≤ k ≤ MAX_SHARED_POWER: a group's exponential from its base
// group's (exp(−k η x) = exp(−η x)^k), a few multiplications instead of an exponential.
MLPOT_ALWAYS_INLINE void power_pass(int k, int m, const double* __restrict in,
                                    double* __restrict out) {
    switch (k) {
#define MLPOT_POWER(K)                                                 \
    case K:                                                            \
        MLPOT_INDEPENDENT                                              \
        for (int j = 0; j < m; ++j) out[j] = power_of<K>(in[j]);       \
        break;
        MLPOT_POWER(2) MLPOT_POWER(3) MLPOT_POWER(4) MLPOT_POWER(5) MLPOT_POWER(6) MLPOT_POWER(7)
        MLPOT_POWER(8) MLPOT_POWER(9) MLPOT_POWER(10) MLPOT_POWER(11) MLPOT_POWER(12)
        MLPOT_POWER(13) MLPOT_POWER(14) MLPOT_POWER(15) MLPOT_POWER(16)
#undef MLPOT_POWER
    }
    static_assert(MAX_SHARED_POWER == 16, "power_pass has a case for every k up to 16");
}

// The distance factors of every group: first the groups with their own exponential, then those
// that take a power of one of them. exps: [group][STRIDE].
template <bool Derivatives>
MLPOT_ALWAYS_INLINE void all_group_factors(const LanePlan& p, int m, const double* f,
                                           double* group, double* exps) {
    constexpr int per_group = Derivatives ? NUM_GROUP_FACTORS : 1;
    for (int pass = 0; pass < 2; ++pass) {
        for (int g = 0; g < p.n_groups; ++g) {
            const int base = p.group_base[g];
            if ((base >= 0) != (pass == 1)) continue;
            double* out = group + g * per_group * STRIDE;
            double* e = exps + g * STRIDE;
            const double eta = p.group_eta[g];
            if (base >= 0) {
                power_pass(p.group_power[g], m, exps + base * STRIDE, e);
                if (p.group_g4[g]) {
                    group_factors<true, Derivatives, true>(eta, m, f, out, e);
                } else {
                    group_factors<false, Derivatives, true>(eta, m, f, out, e);
                }
            } else if (p.group_g4[g]) {
                group_factors<true, Derivatives, false>(eta, m, f, out, e);
            } else {
                group_factors<false, Derivatives, false>(eta, m, f, out, e);
            }
        }
    }
}

// W of a chunk's lanes: a vector register's worth (eight, or four with AVX2).
template <int W>
struct Part {
    typedef double type __attribute__((vector_size(W * sizeof(double))));
    typedef std::int64_t mask __attribute__((vector_size(W * sizeof(std::int64_t))));
};
template <int W>
MLPOT_ALWAYS_INLINE void load_part(typename Part<W>::type& x, const double* source) {
    std::memcpy(&x, source, sizeof x);
}
template <int W>
MLPOT_ALWAYS_INLINE void store_part(double* target, const typename Part<W>::type& x) {
    std::memcpy(target, &x, sizeof x);
}

// P = 2^{1−ζ} x^ζ and P′ = ζ λ 2^{1−ζ} x^{ζ−1}, x = max(1 + λ cos θ, 0), of W of a pattern's
// lanes (a vector register's worth) for m pairs into out[j × stride] (P) and out[j × stride +
// LANES] (P′): x^{ζ−1} by binary powering with per-lane bits, the Bits bits of the part's
// largest integer ζ − 1 (lanes of non-integer ζ get x⁰ here). Padding lanes have scale 0:
// P = P′ = 0.
template <bool Derivatives, int W, int Bits>
MLPOT_ALWAYS_INLINE void part_powers(const double* lambda_in, const double* scale_in,
                                     const double* dscale_in, const int* exponent,
                                     const double* __restrict cos_theta, int m,
                                     std::size_t stride, double* __restrict out) {
    typedef typename Part<W>::type part;
    typedef typename Part<W>::mask part_mask;
    part lambda, scale, dscale;
    std::memcpy(&lambda, lambda_in, sizeof lambda);
    std::memcpy(&scale, scale_in, sizeof scale);
    std::memcpy(&dscale, dscale_in, sizeof dscale);
    part_mask bit[Bits > 0 ? Bits : 1];
    for (int k = 0; k < Bits; ++k) {
        std::int64_t set[W];
        for (int l = 0; l < W; ++l) set[l] = exponent[l] >= 0 && ((exponent[l] >> k) & 1);
        std::memcpy(&bit[k], set, sizeof set);
    }
    for (int j = 0; j < m; ++j) {
        const part value = 1.0 + lambda * cos_theta[j];
        const part x = value > 0.0 ? value : 0.0;
        part xe = part{} + 1.0, square = x;
        for (int k = 0; k < Bits; ++k) {
            xe = bit[k] != 0 ? xe * square : xe;
            if (k + 1 < Bits) square = square * square;
        }
        const part P = scale * xe * x, dP = dscale * xe;
        double* o = out + j * stride * LANES;
        std::memcpy(o, &P, sizeof P);
        if constexpr (Derivatives) std::memcpy(o + LANES, &dP, sizeof dP);
    }
}

// part_powers for four lanes whose ζ are powers of two, 2^K0 for lanes 0 and 1 and 2^K1 for
// lanes 2 and 3, with lane 2's λ equal to lane 0's and lane 3's to lane 1's (AVX2). A vector
// holds one lane pair for two neighbour pairs, x = [x₀(j), x₁(j), x₀(j + 1), x₁(j + 1)]: then x^ζ
// is the k-th of the squares x, x², x⁴, …, x^(ζ−1) the product of the ones before it, both
// lane pairs share them, and no lane needs the selects of binary powering. Reads and writes one
// pair past m when m is odd (cos_theta and out have room).
template <bool Derivatives, int K0, int K1>
MLPOT_ALWAYS_INLINE void square_part(const double* lambda, const double* scale,
                                     const double* dscale, const double* __restrict cos_theta,
                                     int m, std::size_t stride, double* __restrict out) {
    typedef typename Part<4>::type part;
    typedef typename Part<4>::mask part_mask;
    constexpr int K = K0 > K1 ? K0 : K1;
    const part lam = {lambda[0], lambda[1], lambda[0], lambda[1]};
    const part scale0 = {scale[0], scale[1], scale[0], scale[1]};
    const part scale1 = {scale[2], scale[3], scale[2], scale[3]};
    const part dscale0 = {dscale[0], dscale[1], dscale[0], dscale[1]};
    const part dscale1 = {dscale[2], dscale[3], dscale[2], dscale[3]};
    const part_mask first = {0, 1, 4, 5}, second = {2, 3, 6, 7};  // neighbour pair j, j + 1
    for (int j = 0; j < m; j += 2) {
        const part c = {cos_theta[j], cos_theta[j], cos_theta[j + 1], cos_theta[j + 1]};
        const part value = 1.0 + lam * c;
        const part x = value > 0.0 ? value : 0.0;
        part S[K + 1], R[K + 1];  // x^(2^k), x^(2^k − 1)
        S[0] = x;
        R[0] = part{} + 1.0;
        for (int k = 1; k <= K; ++k) {
            S[k] = S[k - 1] * S[k - 1];
            R[k] = k == 1 ? x : R[k - 1] * S[k - 1];
        }
        double* o = out + j * stride * LANES;
        const part P0 = scale0 * S[K0], P1 = scale1 * S[K1];
        store_part<4>(o, __builtin_shuffle(P0, P1, first));
        store_part<4>(o + stride * LANES, __builtin_shuffle(P0, P1, second));
        if constexpr (Derivatives) {
            const part dP0 = K0 == 0 ? dscale0 : dscale0 * R[K0];
            const part dP1 = K1 == 0 ? dscale1 : dscale1 * R[K1];
            store_part<4>(o + LANES, __builtin_shuffle(dP0, dP1, first));
            store_part<4>(o + (stride + 1) * LANES, __builtin_shuffle(dP0, dP1, second));
        }
    }
}

// P and P′ of every pattern (see part_powers), W lanes at a time; lanes of non-integer ζ use
// std::pow.
template <bool Derivatives, int W>
MLPOT_ALWAYS_INLINE void angular_powers(const LanePlan& p, const double* __restrict cos_theta,
                                        int m, lanes* __restrict out) {
    constexpr int per_pattern = Derivatives ? 2 : 1;
    const std::size_t stride = static_cast<std::size_t>(p.n_patterns) * per_pattern;
    for (int q = 0; q < p.n_patterns; ++q) {
        double* o = reinterpret_cast<double*>(out + q * per_pattern);
        for (int l0 = 0; l0 < LANES; l0 += W) {
            const double *lambda = p.lambda + q * LANES + l0, *scale = p.scale + q * LANES + l0,
                         *dscale = p.dscale + q * LANES + l0;
            if constexpr (W == 4) {
                switch (p.square_parts[q * 2 + l0 / 4]) {
#define MLPOT_SQUARES(K0, K1)                                                                \
    case K0 *(MAX_SQUARE_K + 1) + K1:                                                       \
        square_part<Derivatives, K0, K1>(lambda, scale, dscale, cos_theta, m, stride, o + l0); \
        continue;
#define MLPOT_SQUARES_ROW(K0)                                                                \
    MLPOT_SQUARES(K0, 0) MLPOT_SQUARES(K0, 1) MLPOT_SQUARES(K0, 2) MLPOT_SQUARES(K0, 3)     \
    MLPOT_SQUARES(K0, 4)
                    MLPOT_SQUARES_ROW(0)
                    MLPOT_SQUARES_ROW(1)
                    MLPOT_SQUARES_ROW(2)
                    MLPOT_SQUARES_ROW(3)
                    MLPOT_SQUARES_ROW(4)
#undef MLPOT_SQUARES_ROW
#undef MLPOT_SQUARES
                }
                static_assert(MAX_SQUARE_K == 4, "one case per pair of square counts");
            }
            const int* exponent = p.exponent + q * LANES + l0;
            int bits = 0;
            for (int l = 0; l < W; ++l) {
                while ((exponent[l] >> bits) > 0) ++bits;
            }
            switch (bits) {
#define MLPOT_POWERS(BITS)                                                                    \
    case BITS:                                                                                \
        part_powers<Derivatives, W, BITS>(lambda, scale, dscale, exponent, cos_theta, m,      \
                                          stride, o + l0);                                    \
        break;
                MLPOT_POWERS(0)
                MLPOT_POWERS(1)
                MLPOT_POWERS(2)
                MLPOT_POWERS(3)
                MLPOT_POWERS(4)
                MLPOT_POWERS(5)
                MLPOT_POWERS(6)
#undef MLPOT_POWERS
            }
            static_assert(MAX_EXPONENT_BITS == 6, "one case per bit count");
        }
        if (!p.pattern_fractional[q]) continue;
        for (int l = 0; l < LANES; ++l) {
            if (p.exponent[q * LANES + l] >= 0) continue;
            const double zeta = p.zeta[q * LANES + l], lambda = p.lambda[q * LANES + l];
            const double scale = p.scale[q * LANES + l], dscale = p.dscale[q * LANES + l];
            for (int j = 0; j < m; ++j) {
                const double value = 1.0 + lambda * cos_theta[j];
                const double x = value > 0.0 ? value : 0.0;
                const double xe = std::pow(x, zeta - 1.0);
                o[j * stride * LANES + l] = scale * xe * x;
                if constexpr (Derivatives) o[(j * stride + 1) * LANES + l] = dscale * xe;
            }
        }
    }
}

// Index of the unordered species pair (s, t) in the angular block.
inline int species_pair(int s, int t) {
    return s >= t ? s * (s + 1) / 2 + t : t * (t + 1) / 2 + s;
}


// The batch's descriptors: G += Σ_j P H of each chunk, over runs of pairs of one species block,
// with two independent sums per part, W of the chunk's lanes at a time (P interleaved with P′
// when there are derivatives).
template <bool Derivatives, int W>
MLPOT_ALWAYS_INLINE void descriptor_sums(const LanePlan& p, AngularScratch& s) {
    typedef typename Part<W>::type part;
    constexpr int K = LANES / W;
    constexpr int per_pattern = Derivatives ? 2 : 1;
    constexpr int per_group = Derivatives ? NUM_GROUP_FACTORS : 1;
    const int nc = p.n_chunks;
    const std::size_t stride = static_cast<std::size_t>(p.n_patterns) * per_pattern * LANES;
    const double* __restrict groups = s.factors.data() + NUM_PAIR_FACTORS * STRIDE;
    for (const Segment& segment : s.blocks) {
        const int lo = segment.lo, hi = segment.hi, block = segment.block;
        for (int c = 0; c < nc; ++c) {
            const double* __restrict H =
                groups + (p.chunk_group[c] * per_group + H_) * STRIDE;
            const double* __restrict P =
                reinterpret_cast<const double*>(s.powers.data() + p.chunk_pattern[c] * per_pattern);
            part sum[2][K] = {};
            int j = lo;
            for (; j + 1 < hi; j += 2) {
                for (int k = 0; k < K; ++k) {
                    part P0, P1;
                    load_part<W>(P0, P + j * stride + k * W);
                    load_part<W>(P1, P + (j + 1) * stride + k * W);
                    sum[0][k] += P0 * H[j];
                    sum[1][k] += P1 * H[j + 1];
                }
            }
            double* G = reinterpret_cast<double*>(s.G.data() + block * nc + c);
            for (int k = 0; k < K; ++k) {
                part Pj, old;
                if (j < hi) {
                    load_part<W>(Pj, P + j * stride + k * W);
                    sum[0][k] += Pj * H[j];
                }
                load_part<W>(old, G + k * W);
                store_part<W>(G + k * W, old + sum[0][k] + sum[1][k]);
            }
        }
    }
}

// The batch's derivative terms, segment by segment (see the file header): for each pair (a, b)
// and lane, A_a += P′ (Z − Y_a) + P H dlog_a, A_b += P′ (Z − Y_b) + P H dlog_b and B_a += β d,
// B_b −= β d with β = P′ Z − P Q and d = r_b − r_a; row a's side summed in registers over its
// partners (both parts of a chunk per pair, so each factor is read once), the partner's added in
// memory. Segments run last to first (see angular_pass): a row's sums are stored, or added where
// the row's later pairs, in a later batch, stored theirs.
template <int W>
MLPOT_ALWAYS_INLINE void derivative_sums(const LanePlan& p, AngularScratch& s, int p0) {
    typedef typename Part<W>::type part;
    constexpr int K = LANES / W;
    const int nc = p.n_chunks;
    const std::size_t stride = static_cast<std::size_t>(p.n_patterns) * 2 * LANES;
    const std::size_t slot_stride = static_cast<std::size_t>(p.n_blocks) * nc * 4 * LANES;
    const double* __restrict groups = s.factors.data() + NUM_PAIR_FACTORS * STRIDE;
    const int* __restrict pb = s.pair_b.data() + p0;
    const double* __restrict dx = s.pair_values.data() + P_DX * s.pair_stride + p0;
    const double* __restrict dy = s.pair_values.data() + P_DY * s.pair_stride + p0;
    const double* __restrict dz = s.pair_values.data() + P_DZ * s.pair_stride + p0;
    double* __restrict acc = reinterpret_cast<double*>(s.acc.data());
    for (auto segment = s.segments.rbegin(); segment != s.segments.rend(); ++segment) {
        const int a = segment->a, lo = segment->lo, hi = segment->hi, block = segment->block;
        char& row_stored = s.row_stored[static_cast<std::size_t>(a) * p.n_blocks + block];
        const bool stored = row_stored;  // (a local: the flag could alias the stores below)
        for (int c = 0; c < nc; ++c) {
            const double* __restrict g = groups + p.chunk_group[c] * NUM_GROUP_FACTORS * STRIDE;
            const double* __restrict P =
                reinterpret_cast<const double*>(s.powers.data() + p.chunk_pattern[c] * 2);
            double* cell = acc + (static_cast<std::size_t>(block) * nc + c) * 4 * LANES;  // slot 0
            double* row = cell + a * slot_stride;
            part sA[K] = {}, sx[K] = {}, sy[K] = {}, sz[K] = {};
            for (int j = lo; j < hi; ++j) {
                const double* __restrict Pj = P + j * stride;
                const double* __restrict dPj = Pj + LANES;
                double* other = cell + pb[j] * slot_stride;
                part P_[K], dP[K], beta[K];
                for (int k = 0; k < K; ++k) {
                    load_part<W>(P_[k], Pj + k * W);
                    load_part<W>(dP[k], dPj + k * W);
                }
                // The pair's factors as locals, each read once for all parts: the stores to
                // `other` could alias them for all the compiler knows, and it read them again
                // for every part.
                const double* __restrict gj = g + j;
                const double z = gj[Z_ * STRIDE], q = gj[Q_ * STRIDE];
                for (int k = 0; k < K; ++k) beta[k] = dP[k] * z - P_[k] * q;
                const double zy_a = gj[ZY_A * STRIDE], hd_a = gj[HD_A * STRIDE];
                for (int k = 0; k < K; ++k) sA[k] += dP[k] * zy_a + P_[k] * hd_a;
                const double zy_b = gj[ZY_B * STRIDE], hd_b = gj[HD_B * STRIDE];
                for (int k = 0; k < K; ++k) {
                    part o;
                    load_part<W>(o, other + k * W);
                    store_part<W>(other + k * W, o + dP[k] * zy_b + P_[k] * hd_b);
                }
                const double d[3] = {dx[j], dy[j], dz[j]};
                part* sums[3] = {sx, sy, sz};
                for (int q = 0; q < 3; ++q) {
                    for (int k = 0; k < K; ++k) {
                        part o;
                        sums[q][k] += beta[k] * d[q];
                        load_part<W>(o, other + (q + 1) * LANES + k * W);
                        store_part<W>(other + (q + 1) * LANES + k * W, o - beta[k] * d[q]);
                    }
                }
            }
            const part* sums[4] = {sA, sx, sy, sz};
            for (int q = 0; q < 4; ++q) {
                for (int k = 0; k < K; ++k) {
                    part sum = sums[q][k];
                    if (stored) {
                        part old;
                        load_part<W>(old, row + q * LANES + k * W);
                        sum += old;
                    }
                    store_part<W>(row + q * LANES + k * W, sum);
                }
            }
        }
        row_stored = 1;
    }
}

// The pair factors and terms of a batch of m packed pairs.
template <bool Derivatives>
MLPOT_ALWAYS_INLINE void angular_batch(const LanePlan& p, AngularScratch& s, int p0, int m) {
    constexpr int per_group = Derivatives ? NUM_GROUP_FACTORS : 1;
    double* f = s.factors.data();
    const std::size_t ps = s.pair_stride;
    const double* pv = s.pair_values.data() + p0;  // the batch's pair values
    if (p.cosine) {
        pair_geometry<true, Derivatives>(p, m, pv, ps, f);
    } else {
        pair_geometry<false, Derivatives>(p, m, pv, ps, f);
    }
    double* group = f + NUM_PAIR_FACTORS * STRIDE;
    all_group_factors<Derivatives>(p, m, f, group, group + p.n_groups * per_group * STRIDE);
    if (p.path == VectorPath::avx2) {  // registers of four doubles: a chunk in two parts
        angular_powers<Derivatives, LANES / 2>(p, f + COS_THETA * STRIDE, m, s.powers.data());
        descriptor_sums<Derivatives, LANES / 2>(p, s);
        if constexpr (Derivatives) derivative_sums<LANES / 2>(p, s, p0);
    } else {  // AVX-512 (registers of LANES doubles), or left to the compiler
        angular_powers<Derivatives, LANES>(p, f + COS_THETA * STRIDE, m, s.powers.data());
        descriptor_sums<Derivatives, LANES>(p, s);
        if constexpr (Derivatives) derivative_sums<LANES>(p, s, p0);
    }
}

// With derivatives, the cells of s.acc that no row's sums will be stored in (a slot's blocks in
// which its row has no pairs): zero, as the partners' terms are added to them.
MLPOT_ALWAYS_INLINE void zero_cells_without_rows(const LanePlan& p, const AngularEdges& e,
                                                 AngularScratch& s) {
    const int S = p.num_species;
    const std::size_t cells = static_cast<std::size_t>(p.n_blocks) * p.n_chunks;
    lanes* acc = s.acc.sized(static_cast<std::size_t>(e.n) * cells * 4);
    for (int a = 0; a < e.n; ++a) {
        const int* run = s.row_run.data() + a * (S + 1);
        for (int block = 0; block < p.n_blocks; ++block) {
            bool has_pairs = false;
            for (int t = 0; t < S; ++t) {
                has_pairs = has_pairs ||
                            (species_pair(e.species[a], t) == block && run[t + 1] > run[t]);
            }
            if (has_pairs) continue;
            lanes* cell = acc + (a * cells + static_cast<std::size_t>(block) * p.n_chunks) * 4;
            std::fill(cell, cell + static_cast<std::size_t>(p.n_chunks) * 4, lanes{});
        }
    }
}

// The angular block of one centre into s.G (and s.acc): the pairs, then batches of CAP pairs
// (a row may continue in the next batch), last to first. Pairs are (a, b > a), so when the rows
// run last to first, row b's own sums are written before any partner's term reaches slot b: they
// are stored, not added, and s.acc needs zeros only where no row stores its sums.
template <bool Derivatives>
MLPOT_ALWAYS_INLINE void angular_pass(const LanePlan& p, const AngularEdges& e, AngularScratch& s) {
    const int n = e.n, S = p.num_species;
    const std::size_t cells = static_cast<std::size_t>(p.n_blocks) * p.n_chunks;
    s.G.zeroed(cells);
    if (n < 2) {
        if constexpr (Derivatives) s.acc.zeroed(static_cast<std::size_t>(n) * cells * 4);
        return;
    }
#if MLPOT_X86_DISPATCH
    const int n_pairs = p.path == VectorPath::avx512 ? build_pairs_avx512(p, e, s)
                        : p.path == VectorPath::avx2 ? build_pairs_avx2(p, e, s)
                                                     : build_pairs(p, e, s);
#else
    const int n_pairs = build_pairs(p, e, s);
#endif
    const int per_group = Derivatives ? NUM_GROUP_FACTORS : 1;
    double* f = sized(s.factors, STRIDE * (NUM_PAIR_FACTORS + p.n_groups * (per_group + 1)));
    s.powers.sized(CAP * p.n_patterns * (Derivatives ? 2 : 1));
    const int* row_run = s.row_run.data();
    if constexpr (Derivatives) {
        zero_cells_without_rows(p, e, s);
        zeroed(s.row_stored, static_cast<std::size_t>(n) * p.n_blocks);
    }
    int a0 = n - 1;
    for (int p0 = (n_pairs - 1) / CAP * CAP; p0 >= 0 && n_pairs > 0; p0 -= CAP) {
        const int m = std::min(CAP, n_pairs - p0);
        while (a0 > 0 && row_run[a0 * (S + 1)] > p0) --a0;  // the row that holds pair p0
        s.segments.clear();
        s.blocks.clear();
        for (int a = a0; a < n && row_run[a * (S + 1)] < p0 + m; ++a) {
            const int* run = row_run + a * (S + 1);
            fill_row<Derivatives>(e, a, std::max(run[0] - p0, 0), std::min(run[S] - p0, m), f);
            for (int t = 0; t < S; ++t) {
                const int lo = std::max(run[t] - p0, 0), hi = std::min(run[t + 1] - p0, m);
                if (lo >= hi) continue;
                const int block = species_pair(e.species[a], t);
                if constexpr (Derivatives) s.segments.push_back({a, block, lo, hi});
                Segment* last = s.blocks.empty() ? nullptr : &s.blocks.back();
                if (last && last->block == block && last->hi == lo) {
                    last->hi = hi;
                } else {
                    s.blocks.push_back({a, block, lo, hi});
                }
            }
        }
        gather_partner_factors<Derivatives>(e, s.pair_b.data() + p0, m, f);
        angular_batch<Derivatives>(p, s, p0, m);
    }
}

// out[0 … 7] = v, with non-temporal (streaming) stores where out is 16-byte aligned: the
// derivative array (≈ 30 kB per atom) is written once and read much later, so bypassing the
// cache saves reading every line before writing it. compute() ends with a store fence.
MLPOT_ALWAYS_INLINE void stream_lanes(double* out, const lanes& v) {
#if defined(__SSE2__)
    if ((reinterpret_cast<std::uintptr_t>(out) & 15) == 0) {
        for (int k = 0; k < LANES; k += 2) _mm_stream_pd(out + k, _mm_set_pd(v[k + 1], v[k]));
        return;
    }
#endif
    std::memcpy(out, &v, sizeof v);
}

// out[3 l + d] = (x, y, z)_d[l], l < 8: 24 contiguous doubles (six two-source permutes).
MLPOT_ALWAYS_INLINE void store_interleaved(double* out, const lanes& x, const lanes& y,
                                           const lanes& z) {
    static_assert(LANES == 8, "the permutes below interleave eight lanes");
#if defined(__clang__)
    lanes o[3];
    for (int l = 0; l < LANES; ++l) {
        o[(3 * l) / LANES][(3 * l) % LANES] = x[l];
        o[(3 * l + 1) / LANES][(3 * l + 1) % LANES] = y[l];
        o[(3 * l + 2) / LANES][(3 * l + 2) % LANES] = z[l];
    }
    const lanes &o0 = o[0], &o1 = o[1], &o2 = o[2];
#else
    const lanes o0 = __builtin_shuffle(__builtin_shuffle(x, y, lane_mask{0, 8, 0, 1, 9, 0, 2, 10}),
                                       z, lane_mask{0, 1, 8, 3, 4, 9, 6, 7});
    const lanes o1 = __builtin_shuffle(__builtin_shuffle(x, y, lane_mask{0, 3, 11, 0, 4, 12, 0, 5}),
                                       z, lane_mask{10, 1, 2, 11, 4, 5, 12, 7});
    const lanes o2 = __builtin_shuffle(__builtin_shuffle(x, y, lane_mask{13, 0, 6, 14, 0, 7, 15, 0}),
                                       z, lane_mask{0, 13, 2, 3, 14, 5, 6, 15});
#endif
    stream_lanes(out, o0);
    stream_lanes(out + LANES, o1);
    stream_lanes(out + 2 * LANES, o2);
}

// One edge's derivatives dG[f, :]: radial A u (u the unit vector), then angular A v + B (v the
// edge vector, see the file header), lane by lane, in the user order; a chunk whose lanes are
// consecutive user functions (chunk_first ≥ 0) is written as one block.
MLPOT_SIMD_CLONES void edge_derivatives(int n_radial, const double* radial_A, const lanes* acc,
                                        int n_blocks, int n_chunks, int n_angular,
                                        const int* chunk_function, const int* chunk_first,
                                        const double* u, const double* v, double* out) {
    const double u0 = u[0], u1 = u[1], u2 = u[2], v0 = v[0], v1 = v[1], v2 = v[2];
    int f = 0;
    for (lanes A; f + LANES <= n_radial; f += LANES) {
        load_lanes(A, radial_A + f);
        store_interleaved(out + 3 * f, A * u0, A * u1, A * u2);
    }
    for (; f < n_radial; ++f) {
        out[3 * f] = radial_A[f] * u0;
        out[3 * f + 1] = radial_A[f] * u1;
        out[3 * f + 2] = radial_A[f] * u2;
    }
    if (!acc) return;
    out += 3 * n_radial;
    for (int block = 0; block < n_blocks; ++block) {
        for (int c = 0; c < n_chunks; ++c, acc += 4) {
            const lanes gx = acc[0] * v0 + acc[1], gy = acc[0] * v1 + acc[2],
                        gz = acc[0] * v2 + acc[3];
            if (chunk_first[c] >= 0) {
                store_interleaved(out + 3 * (block * n_angular + chunk_first[c]), gx, gy, gz);
                continue;
            }
            for (int l = 0; l < LANES; ++l) {
                const int k = chunk_function[c * LANES + l];
                if (k < 0) continue;
                double* o = out + 3 * (block * n_angular + k);
                o[0] = gx[l];
                o[1] = gy[l];
                o[2] = gz[l];
            }
        }
    }
}

// Σ_f w_f (A_f, B_f) of one edge over its `cells` chunks: sums = {along v, x, y, z}.
MLPOT_SIMD_CLONES void contract_edge(const lanes* acc, const lanes* weights, std::size_t cells,
                                     double* sums) {
    lanes sA{}, sx{}, sy{}, sz{};
    for (std::size_t k = 0; k < cells; ++k) {
        sA += weights[k] * acc[4 * k];
        sx += weights[k] * acc[4 * k + 1];
        sy += weights[k] * acc[4 * k + 2];
        sz += weights[k] * acc[4 * k + 3];
    }
    sums[0] = sums[1] = sums[2] = sums[3] = 0.0;
    for (int l = 0; l < LANES; ++l) {
        sums[0] += sA[l];
        sums[1] += sx[l];
        sums[2] += sy[l];
        sums[3] += sz[l];
    }
}

MLPOT_SIMD_CLONES void angular_descriptors(const LanePlan& p, const AngularEdges& e,
                                           AngularScratch& s) {
    angular_pass<false>(p, e, s);
}

MLPOT_SIMD_CLONES void angular_derivatives(const LanePlan& p, const AngularEdges& e,
                                           AngularScratch& s) {
    angular_pass<true>(p, e, s);
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
    std::vector<int> angular_of_slot;  // slot → angular slot, or −1
    std::vector<int> run;              // [S + 1] species runs of the angular slots
    std::vector<int> next;             // [S] counting-sort cursors
    std::vector<double> ar, ar2, ainv, avx, avy, avz, afc, adlog_c;
    std::vector<int> aspecies;
    AngularScratch angular;                  // pairs, pair factors and the angular results
    std::vector<double> descriptor, weight;  // gradient() only
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

    // Group angular functions by (η, kind), groups in order of first appearance; each group's
    // functions, LANES at a time, form its chunks.
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
        std::vector<int> functions;
        for (int k = 0; k < num_angular_; ++k) {
            if (group_of[k] == g) functions.push_back(k);
        }
        for (std::size_t start = 0; start < functions.size(); start += LANES) {
            // The chunk's lane constants; padding lanes get scale 0, so P = P' = 0 there.
            double lambda[LANES], zeta[LANES], scale[LANES], dscale[LANES];
            int exponent[LANES];
            for (int l = 0; l < LANES; ++l) {
                const bool used = start + l < functions.size();
                const int k = used ? functions[start + l] : -1;
                chunk_function_.push_back(k);
                lambda[l] = used ? p.angular[k].lambda : 1.0;
                zeta[l] = used ? p.angular[k].zeta : 1.0;
                const bool integer = zeta[l] == std::floor(zeta[l]) && zeta[l] <= MAX_INTEGER_ZETA;
                exponent[l] = integer ? static_cast<int>(zeta[l]) - 1 : -1;
                scale[l] = used ? std::pow(2.0, 1.0 - zeta[l]) : 0.0;
                dscale[l] = scale[l] * zeta[l] * lambda[l];
            }
            const int n_patterns = static_cast<int>(pattern_fractional_.size());
            int pattern = n_patterns;
            for (int q = 0; q < n_patterns && pattern == n_patterns; ++q) {
                bool same = true;
                for (int l = 0; l < LANES; ++l) {
                    same = same && pattern_lambda_[q * LANES + l] == lambda[l] &&
                           pattern_zeta_[q * LANES + l] == zeta[l] &&
                           pattern_scale_[q * LANES + l] == scale[l];
                }
                if (same) pattern = q;
            }
            if (pattern == n_patterns) {
                int fractional = 0;
                for (int l = 0; l < LANES; ++l) {
                    pattern_lambda_.push_back(lambda[l]);
                    pattern_zeta_.push_back(zeta[l]);
                    pattern_scale_.push_back(scale[l]);
                    pattern_dscale_.push_back(dscale[l]);
                    pattern_exponent_.push_back(exponent[l]);
                    fractional |= exponent[l] < 0;
                }
                pattern_fractional_.push_back(fractional);
                for (int l0 = 0; l0 < LANES; l0 += 4) {
                    // the ζ = 2^k of the lane pairs (l0, l0 + 1) and (l0 + 2, l0 + 3), padding
                    // lanes (scale 0) taking their partner's
                    int k[2] = {0, 0};
                    bool squares = true;
                    for (int l = l0; l < l0 + 4; ++l) {
                        if (scale[l] == 0.0) continue;
                        int e = 0;
                        while ((1 << e) < zeta[l] && e < MAX_SQUARE_K) ++e;
                        squares = squares && zeta[l] == (1 << e) &&
                                  (l % 2 == 0 || e == k[(l - l0) / 2]) &&
                                  (l < l0 + 2 || lambda[l] == lambda[l - 2]);
                        k[(l - l0) / 2] = e;
                    }
                    pattern_square_parts_.push_back(squares ? k[0] * (MAX_SQUARE_K + 1) + k[1]
                                                            : -1);
                }
            }
            chunk_group_.push_back(g);
            chunk_pattern_.push_back(pattern);
            bool consecutive = start + LANES <= functions.size();
            for (int l = 1; l < LANES && consecutive; ++l) {
                consecutive = functions[start + l] == functions[start] + l;
            }
            chunk_first_.push_back(consecutive ? functions[start] : -1);
        }
    }
    all_g4_ = std::all_of(group_g4_.begin(), group_g4_.end(), [](int g4) { return g4 != 0; });

    // Shared exponentials: in order of increasing η, a group takes the smallest power k ≤
    // MAX_SHARED_POWER of a group of its kind with its own exponential, where k η_base equals its η
    // to rounding; otherwise it has its own.
    const int n_groups = static_cast<int>(group_eta_.size());
    group_base_.assign(n_groups, -1);
    group_power_.assign(n_groups, 1);
    std::vector<int> by_eta(n_groups);
    for (int g = 0; g < n_groups; ++g) by_eta[g] = g;
    std::stable_sort(by_eta.begin(), by_eta.end(),
                     [this](int a, int b) { return group_eta_[a] < group_eta_[b]; });
    for (int i = 0; i < n_groups; ++i) {
        const int g = by_eta[i];
        for (int j = 0; j < i && group_base_[g] < 0; ++j) {
            const int b = by_eta[j];
            if (group_base_[b] >= 0 || group_g4_[b] != group_g4_[g] || group_eta_[b] <= 0.0) {
                continue;
            }
            const double k = std::round(group_eta_[g] / group_eta_[b]);
            if (k >= 2 && k <= MAX_SHARED_POWER &&
                std::fabs(k * group_eta_[b] - group_eta_[g]) <= 4 * DBL_EPSILON * group_eta_[g]) {
                group_base_[g] = b;
                group_power_[g] = static_cast<int>(k);
            }
        }
    }
}

void SymmetryFunctions::compute_centre(const EdgeList& edges, const std::int64_t* edge_ids,
                                       std::int64_t n_edges, Workspace& w, double* descriptor,
                                       bool derivatives) const {
    const auto& p = parameters_;
    const double rc2 = p.cutoff * p.cutoff;
    const double rca = p.angular_cutoff;
    const bool cosine = p.cutoff_function == CutoffFunction::cosine;
    const int n_rad_features = num_species_ * num_radial_;
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
                     sized(w.radial_tmp, 2 * n_max + num_radial_));
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
    double* ar = sized(w.ar, na);
    double* ar2 = sized(w.ar2, na);
    double* ainv = sized(w.ainv, na);
    double* avx = zeroed(w.avx, na + LANES);  // LANES zeros after the end: read eight at a time
    double* avy = zeroed(w.avy, na + LANES);
    double* avz = zeroed(w.avz, na + LANES);
    int* aspecies = sized(w.aspecies, na);
    int* next = sized(w.next, num_species_);
    std::copy(run, run + num_species_, next);
    for (int s = 0; s < n_slots; ++s) {
        angular_of_slot[s] = -1;
        if (!(r[s] < rca)) continue;
        const int a = next[species[s]]++;
        const double* v = edges.vectors + 3 * slot_edge[s];
        angular_of_slot[s] = a;
        ar[a] = r[s];
        ar2[a] = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        ainv[a] = inv_r[s];
        avx[a] = v[0];
        avy[a] = v[1];
        avz[a] = v[2];
        aspecies[a] = species[s];
    }
    double* afc = sized(w.afc, na);
    double* adlog_c = sized(w.adlog_c, na);
    if (n_ang > 0) edge_cutoffs(n_ang, ar, ainv, cosine, 1.0 / rca, afc, adlog_c);
    const AngularEdges angular_edges{n_ang, avx, avy, avz, ainv, ar2, afc, adlog_c, aspecies, run};
    const LanePlan plan{num_species_,
                        num_pairs_,
                        static_cast<int>(chunk_group_.size()),
                        static_cast<int>(group_eta_.size()),
                        static_cast<int>(pattern_fractional_.size()),
                        chunk_group_.data(),
                        chunk_pattern_.data(),
                        group_eta_.data(),
                        group_g4_.data(),
                        group_base_.data(),
                        group_power_.data(),
                        pattern_lambda_.data(),
                        pattern_scale_.data(),
                        pattern_dscale_.data(),
                        pattern_zeta_.data(),
                        pattern_exponent_.data(),
                        pattern_fractional_.data(),
                        pattern_square_parts_.data(),
                        cosine,
                        all_g4_,
                        vector_path(),
                        rca,
                        1.0 / rca};
    if (derivatives) {
        angular_derivatives(plan, angular_edges, w.angular);
    } else {
        angular_descriptors(plan, angular_edges, w.angular);
    }
    // Angular descriptors in the user order.
    double* out = descriptor + n_rad_features;
    const int n_chunks = plan.n_chunks;
    for (int pair = 0; pair < num_pairs_; ++pair) {
        for (int c = 0; c < n_chunks; ++c) {
            const lanes G = w.angular.G.data()[pair * n_chunks + c];
            for (int l = 0; l < LANES; ++l) {
                const int f = chunk_function_[c * LANES + l];
                if (f >= 0) out[pair * num_angular_ + f] = G[l];
            }
        }
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
            const int a = num_angular_ > 0 ? w.angular_of_slot[s] : -1;
            const int n_chunks = static_cast<int>(chunk_group_.size());
            const lanes* acc =
                a < 0 ? nullptr
                      : w.angular.acc.data() + static_cast<std::size_t>(a) * num_pairs_ * n_chunks * 4;
            if (a < 0) {  // outside the angular cutoff
                std::fill(out + 3 * n_rad_features, out + 3 * static_cast<std::size_t>(F), 0.0);
            }
            const double u[3] = {w.slot_ux[s], w.slot_uy[s], w.slot_uz[s]};
            edge_derivatives(n_rad_features,
                             w.radial_A.data() + static_cast<std::size_t>(s) * n_rad_features, acc,
                             num_pairs_, n_chunks, num_angular_, chunk_function_.data(),
                             chunk_first_.data(), u, edges.vectors + 3 * e, out);
            ++s;
        }
    }
    if (derivatives) {
        for (std::int64_t e = 0; e < edges.num_edges; ++e) {
            if (!written[e]) {
                double* out = derivatives + static_cast<std::size_t>(e) * F * 3;
                std::fill(out, out + static_cast<std::size_t>(F) * 3, 0.0);
            }
        }
#if defined(__SSE2__)
        _mm_sfence();  // order the streaming stores of the derivatives before returning
#endif
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
    const int n_chunks = static_cast<int>(chunk_group_.size());
    const std::size_t cells = static_cast<std::size_t>(num_pairs_) * n_chunks;
    Workspace w;
    double* descriptor = sized(w.descriptor, F);
    LaneBuffer weight_buffer;  // dE/dG of the angular block in lanes (0: padding)
    lanes* weights = weight_buffer.sized(cells);
    for (std::int64_t c = 0; c < n_centres; ++c) {
        const std::int64_t i = centres[c];
        const std::int64_t* ids = order.data() + offsets[i];
        const std::int64_t n = offsets[i + 1] - offsets[i];
        const double* wgt = dE_dG + static_cast<std::size_t>(c) * F;
        for (int pair = 0; pair < num_pairs_; ++pair) {
            for (int k = 0; k < n_chunks; ++k) {
                for (int l = 0; l < LANES; ++l) {
                    const int f = chunk_function_[k * LANES + l];
                    weights[pair * n_chunks + k][l] =
                        f < 0 ? 0.0 : wgt[n_rad_features + pair * num_angular_ + f];
                }
            }
        }
        compute_centre(edges, ids, n, w, descriptor, true);
        for (int s = 0; s < w.n_slots; ++s) {
            const std::int64_t e = w.slot_edge[s];
            const double* A = w.radial_A.data() + static_cast<std::size_t>(s) * n_rad_features;
            double along = 0.0;  // radial: along u; angular: A v + B
            for (int f = 0; f < n_rad_features; ++f) along += wgt[f] * A[f];
            double sums[4] = {0.0, 0.0, 0.0, 0.0};
            const int a = num_angular_ > 0 ? w.angular_of_slot[s] : -1;
            if (a >= 0) {
                contract_edge(w.angular.acc.data() + static_cast<std::size_t>(a) * cells * 4,
                              weights, cells, sums);
            }
            const double* v = edges.vectors + 3 * e;
            gradient[3 * e] = along * w.slot_ux[s] + sums[0] * v[0] + sums[1];
            gradient[3 * e + 1] = along * w.slot_uy[s] + sums[0] * v[1] + sums[2];
            gradient[3 * e + 2] = along * w.slot_uz[s] + sums[0] * v[2] + sums[3];
        }
    }
}

}  // namespace mlpot
