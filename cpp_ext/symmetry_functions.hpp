// Atom-centred symmetry functions (Behler 2011) and their analytic derivatives with respect to
// every edge vector, from a full edge list.
//
// Pure C++17: compiled into both the Python module (mlpot._kernel) and the LAMMPS plugin, so it
// must not include Python, pybind11, torch or LAMMPS headers.
//
// Definitions (r_a = |r_ij|, r_b = |r_ik|, r_jk = |r_ik − r_ij|, cos θ = r_ij·r_ik / (r_a r_b)):
//   G2(η, r_s)  = Σ_j        exp(−η (r_ij − r_s)²) f_c(r_ij)                                 (rc)
//   G4(η, ζ, λ) = 2^{1−ζ} Σ_{j<k} (1 + λ cos θ)^ζ exp(−η (r_a² + r_b² + r_jk²))
//                 × f_c(r_a) f_c(r_b) f_c(r_jk)
//   G5(η, ζ, λ) = 2^{1−ζ} Σ_{j<k} (1 + λ cos θ)^ζ exp(−η (r_a² + r_b²))         f_c(r_a) f_c(r_b)
// Radial functions use the cutoff `cutoff`, angular ones `angular_cutoff` (≤ cutoff) for every
// distance, r_jk included. The sum over j < k runs over unordered pairs of distinct *edges* of the
// centre (a periodic image is its own edge).
//
// Cutoff functions (x = r / rc, f_c = 0 for r ≥ rc):
//   cosine:     f_c = ½ (cos(π x) + 1)                 continuous value and 1st derivative at rc
//   polynomial: f_c = 1 − 10 x³ + 15 x⁴ − 6 x⁵        continuous value, 1st and 2nd derivative
//               (n2p2's "poly2")
//
// Feature layout of one centre (S species, P = S (S + 1) / 2 unordered species pairs):
//   [ radial block of neighbour species 0 | … | species S−1 | angular block of pair 0 | … | P−1 ]
//   radial block: the radial functions in the order given;
//   angular block of the pair (s, t), s ≥ t, has index s (s + 1) / 2 + t  — i.e. (0,0), (1,0),
//   (1,1), (2,0), (2,1), (2,2), …; inside it, the angular functions in the order given.
//   The same parameters apply to every centre species (per-species networks tell them apart).
//
// Derivatives are stored per edge: dG[e, f, :] = ∂G_{i(e), f} / ∂r_e with r_e = r_j − r_i, for the
// edges e whose centre i(e) is computed; all other rows are zero. The energy gradient per edge is
// then g_e = Σ_f (∂E/∂G_{i(e), f}) dG[e, f, :].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mlpot {

enum class CutoffFunction { cosine, polynomial };

/// "cosine" or "polynomial"; anything else throws std::invalid_argument.
CutoffFunction parse_cutoff_function(const std::string& name);
const char* cutoff_function_name(CutoffFunction function);

struct RadialSymmetryFunction {
    double eta;  ///< width η (1/Å²), ≥ 0
    double r_s;  ///< centre r_s (Å), any finite value
};

struct AngularSymmetryFunction {
    enum class Kind { G4, G5 };
    Kind kind;
    double eta;     ///< η (1/Å²), ≥ 0
    double zeta;    ///< ζ ≥ 1
    double lambda;  ///< λ = −1 or +1
};

struct SymmetryFunctionParameters {
    int num_species = 0;
    double cutoff = 0.0;          ///< radial cutoff (Å)
    double angular_cutoff = 0.0;  ///< angular cutoff (Å), 0 < angular_cutoff ≤ cutoff
    CutoffFunction cutoff_function = CutoffFunction::cosine;
    std::vector<RadialSymmetryFunction> radial;
    std::vector<AngularSymmetryFunction> angular;
};

/// A full edge list: edge e goes from centre[e] to neighbour[e], vector r_neighbour − r_centre
/// (+ periodic shift). Edges need not be sorted, and edges longer than the cutoff are ignored
/// (a neighbour list with a skin can be passed as is).
struct EdgeList {
    std::int64_t num_atoms = 0;
    const std::int64_t* species = nullptr;    ///< [num_atoms], 0 ≤ species < num_species
    std::int64_t num_edges = 0;
    const std::int64_t* centre = nullptr;     ///< [num_edges]
    const std::int64_t* neighbour = nullptr;  ///< [num_edges]
    const double* vectors = nullptr;          ///< [num_edges, 3]
};

/// Which hand-written version of the kernel runs: "avx512", "avx2" or "portable" (the best the
/// CPU supports, or a lower one named by the environment variable MLPOT_SIMD, for tests). An
/// unknown MLPOT_SIMD value throws std::invalid_argument.
const char* simd_path();

class SymmetryFunctions {
public:
    /// Checks the parameters; throws std::invalid_argument saying what to fix.
    explicit SymmetryFunctions(SymmetryFunctionParameters parameters);

    const SymmetryFunctionParameters& parameters() const { return parameters_; }
    int num_features() const { return num_features_; }

    /// Descriptors of `centres` (atom indices, any order, repeats allowed) into
    /// descriptors[n_centres, F]; and, if `derivatives` is not null, ∂G/∂r_e into
    /// derivatives[num_edges, F, 3] (every row written, see the file header).
    void compute(const EdgeList& edges, const std::int64_t* centres, std::int64_t n_centres,
                 double* descriptors, double* derivatives) const;

    /// Chain rule with stored derivatives: gradient[e] = Σ_f dE_dG[row(e), f] derivatives[e, f]
    /// where row(e) is the position of centre(e) in `centres` (0 if not there).
    /// `centres` must not repeat atoms.
    void contract(const EdgeList& edges, const std::int64_t* centres, std::int64_t n_centres,
                  const double* derivatives, const double* dE_dG, double* gradient) const;

    /// The same gradient[num_edges, 3] without storing derivatives: they are computed one centre
    /// at a time and contracted with dE_dG[n_centres, F] at once (the cost of compute() with
    /// derivatives, without its O(E × F) memory). `centres` must not repeat atoms.
    void gradient(const EdgeList& edges, const std::int64_t* centres, std::int64_t n_centres,
                  const double* dE_dG, double* gradient) const;

    struct Workspace;  // per-call scratch (defined in the .cpp)

private:
    // One centre: descriptor, and with `derivatives` the derivative pieces in `work` (radial
    // coefficients per slot, angular A and B per angular slot).
    void compute_centre(const EdgeList& edges, const std::int64_t* edge_ids, std::int64_t n_edges,
                        Workspace& work, double* descriptor, bool derivatives) const;

    SymmetryFunctionParameters parameters_;
    int num_species_ = 0;
    int num_radial_ = 0;
    int num_angular_ = 0;
    int num_pairs_ = 0;
    int num_features_ = 0;
    std::vector<double> radial_eta_, radial_r_s_;

    // Angular functions are grouped by (η, kind): a group shares the distance factor
    // exp(−η …) f_c f_c (f_c). Each group's functions form "chunks" of the kernel's vector width
    // (8), evaluated side by side, one function per lane.
    std::vector<double> group_eta_;        // per group
    std::vector<int> group_g4_;            // 1: G4 (has the r_jk factor), 0: G5
    // A group whose η is a small integer multiple k of another's (same kind) takes its
    // exponential as the k-th power of that group's: group_base_ (−1: its own exponential) and
    // group_power_ (k).
    std::vector<int> group_base_, group_power_;
    std::vector<int> chunk_group_, chunk_pattern_;  // per chunk
    std::vector<int> chunk_function_;      // [chunk × 8 + lane]: user angular index, −1: padding
    std::vector<int> chunk_first_;         // user index of lane 0 if the lanes are consecutive
                                           // user functions, else −1
    // Patterns: a chunk's lane constants (λ, ζ, 2^{1−ζ}, ζ λ 2^{1−ζ}, ζ − 1 or −1 for
    // non-integer ζ) [pattern × 8 + lane]; chunks with equal patterns share (1 + λ cos θ)^ζ.
    std::vector<double> pattern_lambda_, pattern_zeta_, pattern_scale_, pattern_dscale_;
    std::vector<int> pattern_exponent_;
    std::vector<int> pattern_fractional_;  // 1: some lane has a non-integer ζ (std::pow)
    // [pattern × 2]: per four lanes (lane pairs (0, 1), (2, 3)) whose ζ are powers of two,
    // 2^K0 and 2^K1 with K ≤ 4, with one λ per lane in both pairs: K0 · 5 + K1, else −1.
    std::vector<int> pattern_square_parts_;
    bool all_g4_ = false;                  // every angular function has the f_c(r_jk) factor
};

}  // namespace mlpot
