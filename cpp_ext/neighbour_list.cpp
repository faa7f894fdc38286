// O(N) full neighbour list: cell-list binning in fractional coordinates with explicit periodic
// images ("ghosts"), so that the search itself never wraps indices.
//
// Outline
//  1. Fractional coordinates in a basis whose periodic rows are the lattice vectors; atoms are
//     wrapped into the cell along periodic axes, remembering the integer wrap.
//  2. Bins of about cutoff / kBinsPerCutoff along each axis (plane spacing, so triclinic cells
//     work). Periodic axes get `reach` extra bins on both sides filled with periodic images;
//     non-periodic axes get empty padding. Every search is then a plain stencil around a bin.
//  3. The stencil keeps only bin offsets whose bins can hold a pair closer than the cutoff, and
//     is stored as rows of contiguous bins, i.e. contiguous ranges of the bin-sorted atoms.
//  4. Pass 1 visits the atoms in input order (so the output is sorted by i) and collects, with a
//     branch-free scan of the stencil's candidate ranges, the slots of their neighbours. Pass 2
//     writes the requested quantities straight into output arrays of the exact size.
//
// Results are returned in PodBuffers, whose large blocks are recycled between calls (see
// set_buffer_cache_limit): writing fresh pages costs more than finding the pairs.
#include "neighbour_list.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace mlpot {

Quantities Quantities::parse(const std::string& letters) {
    Quantities q;
    for (const char letter : letters) {
        switch (letter) {
            case 'i': q.i = true; break;
            case 'j': q.j = true; break;
            case 'S': q.S = true; break;
            case 'd': q.d = true; break;
            case 'D': q.D = true; break;
            default:
                throw std::invalid_argument("mlpot: unknown neighbour-list quantity '" +
                                            std::string(1, letter) + "' in \"" + letters +
                                            "\"; use letters from \"ijSdD\"");
        }
    }
    return q;
}

std::uint64_t available_memory_bytes() {
    if (std::FILE* meminfo = std::fopen("/proc/meminfo", "r")) {
        char line[256];
        unsigned long long kib = 0;
        bool found = false;
        while (!found && std::fgets(line, sizeof line, meminfo) != nullptr) {
            found = std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
        }
        std::fclose(meminfo);
        if (found) return static_cast<std::uint64_t>(kib) * 1024;
    }
#if defined(_SC_AVPHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_AVPHYS_PAGES);
    const long page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) {
        return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size);
    }
#endif
    return 0;
}

namespace {

// Freed blocks kept for reuse (see set_buffer_cache_limit). Blocks below kMinCachedBytes are left
// to malloc, which recycles small blocks by itself.
constexpr std::size_t kMinCachedBytes = std::size_t{1} << 16;
constexpr std::size_t kMaxCachedBlocks = 32;

struct BufferCache {
    std::mutex mutex;
    std::vector<std::pair<void*, std::size_t>> blocks;  // oldest first
    std::size_t cached_bytes = 0;
    std::size_t limit = default_limit();

    static std::size_t default_limit() {
        std::size_t physical = std::size_t{1} << 33;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
        const long pages = sysconf(_SC_PHYS_PAGES);
        const long page_size = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page_size > 0) {
            physical = static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size);
        }
#endif
        return std::min(physical / 8, std::size_t{1} << 32);
    }

    // Free the oldest blocks until the cache respects its limits. Caller holds the mutex.
    void trim() {
        std::size_t drop = 0;
        while (drop < blocks.size() &&
               (cached_bytes > limit || blocks.size() - drop > kMaxCachedBlocks)) {
            std::free(blocks[drop].first);
            cached_bytes -= blocks[drop].second;
            ++drop;
        }
        blocks.erase(blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(drop));
    }
};

BufferCache& buffer_cache() {
    static BufferCache* cache = new BufferCache();  // never destroyed: usable at exit
    return *cache;
}

}  // namespace

void set_buffer_cache_limit(std::size_t bytes) {
    BufferCache& cache = buffer_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    cache.limit = bytes;
    cache.trim();
}

std::size_t buffer_cache_limit() {
    BufferCache& cache = buffer_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    return cache.limit;
}

namespace detail {

void* acquire_block(std::size_t bytes, std::size_t* granted) {
    *granted = bytes;
    if (bytes >= kMinCachedBytes) {
        // The cached block closest in size, within a factor of two; a smaller one is grown with
        // realloc, which keeps its pages.
        BufferCache& cache = buffer_cache();
        void* block = nullptr;
        std::size_t block_bytes = 0;
        {
            std::lock_guard<std::mutex> lock(cache.mutex);
            const auto misfit = [&](std::size_t size) {
                return size > bytes ? size - bytes : bytes - size;
            };
            std::size_t best = cache.blocks.size();
            for (std::size_t k = 0; k < cache.blocks.size(); ++k) {
                const std::size_t size = cache.blocks[k].second;
                if (size >= bytes / 2 && size <= 2 * bytes &&
                    (best == cache.blocks.size() ||
                     misfit(size) < misfit(cache.blocks[best].second))) {
                    best = k;
                }
            }
            if (best != cache.blocks.size()) {
                std::tie(block, block_bytes) = cache.blocks[best];
                cache.blocks.erase(cache.blocks.begin() + static_cast<std::ptrdiff_t>(best));
                cache.cached_bytes -= block_bytes;
            }
        }
        if (block != nullptr) {
            if (block_bytes >= bytes) {
                *granted = block_bytes;
                return block;
            }
            if (void* grown = std::realloc(block, bytes)) return grown;
            std::free(block);
        }
    }
    return std::malloc(bytes);
}

void release_block(void* block, std::size_t bytes) noexcept {
    if (bytes >= kMinCachedBytes) {
        BufferCache& cache = buffer_cache();
        std::lock_guard<std::mutex> lock(cache.mutex);
        if (bytes <= cache.limit) {
            try {
                cache.blocks.emplace_back(block, bytes);
            } catch (...) {
                std::free(block);
                return;
            }
            cache.cached_bytes += bytes;
            cache.trim();
            return;
        }
    }
    std::free(block);
}

}  // namespace detail

namespace {

using Vec3 = std::array<double, 3>;
using Mat3 = std::array<Vec3, 3>;  // rows

// Relative slack on geometric decisions (bin counts, stencil pruning) so that rounding in the
// fractional coordinates can never drop a pair that is closer than the cutoff.
constexpr double kMargin = 1e-8;
// Bins of about cutoff / 2: the searched volume is ~3.7x the cutoff sphere, against ~6.4x with
// bins of one cutoff, while rows of bins stay long enough to amortise their bookkeeping.
constexpr double kBinsPerCutoff = 2.0;
// Atoms whose fractional coordinate is beyond this are refused: the wrap must fit an int32.
constexpr double kMaxWrap = 1 << 30;
// Bins searched on either side of an atom's bin; far more means an absurdly thin cell.
constexpr double kMaxReach = 1e5;
// Estimated memory needs below this are not checked against the memory available.
constexpr double kSmallBytes = 64.0 * 1024 * 1024;
constexpr double kPi = 3.14159265358979323846;

double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
double norm(const Vec3& a) { return std::sqrt(dot(a, a)); }
Vec3 cross(const Vec3& a, const Vec3& b) {
    return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
Vec3 scaled(const Vec3& a, double s) { return {a[0] * s, a[1] * s, a[2] * s}; }

Mat3 inverse(const Mat3& m) {
    const Vec3 c0 = cross(m[1], m[2]);
    const Vec3 c1 = cross(m[2], m[0]);
    const Vec3 c2 = cross(m[0], m[1]);
    const double inv_det = 1.0 / dot(m[0], c0);
    // inverse[r][k] = c_k[r] / det, so that f = r @ inverse and f @ m = r.
    Mat3 inv{};
    for (int r = 0; r < 3; ++r) {
        inv[r] = {c0[r] * inv_det, c1[r] * inv_det, c2[r] * inv_det};
    }
    return inv;
}

std::string axes_text(const std::vector<int>& axes) {
    std::string text;
    for (const int k : axes) text += (text.empty() ? "" : ", ") + std::to_string(k);
    return text;
}

// Rows of periodic axes are the lattice vectors; rows of non-periodic axes are replaced by unit
// vectors orthogonal to the periodic ones and to each other. The cell vector of a non-periodic
// axis never affects the pairs (S is 0 along it), so it may be zero, and this choice makes the
// fractional coordinate along it a Cartesian length and keeps its bins as thin as possible.
Mat3 search_basis(const Mat3& cell, const std::array<bool, 3>& pbc) {
    std::vector<int> periodic, open;
    for (int k = 0; k < 3; ++k) (pbc[k] ? periodic : open).push_back(k);

    const auto singular = [&]() {
        return std::invalid_argument(
            "mlpot: the cell vectors of the periodic axes (" + axes_text(periodic) +
            ") are zero or linearly dependent, so periodic images are undefined; give linearly "
            "independent lattice vectors for periodic axes, or set pbc=False along axes that "
            "have no lattice vector");
    };
    Mat3 basis = cell;
    if (periodic.empty()) {
        basis = {{{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}};
    } else if (periodic.size() == 1) {
        const Vec3& a = cell[periodic[0]];
        const double length = norm(a);
        if (!(length > 0)) throw singular();
        // Cross with the Cartesian axis least aligned with a, then complete the triad.
        int least = 0;
        for (int c = 1; c < 3; ++c) {
            if (std::abs(a[c]) < std::abs(a[least])) least = c;
        }
        Vec3 axis{0, 0, 0};
        axis[least] = 1;
        const Vec3 u = cross(a, axis);
        const Vec3 unit_u = scaled(u, 1 / norm(u));
        basis[open[0]] = unit_u;
        basis[open[1]] = cross(scaled(a, 1 / length), unit_u);
    } else if (periodic.size() == 2) {
        const Vec3& a = cell[periodic[0]];
        const Vec3& b = cell[periodic[1]];
        const Vec3 normal = cross(a, b);
        const double area = norm(normal);
        if (!(area > 1e-12 * norm(a) * norm(b))) throw singular();
        basis[open[0]] = scaled(normal, 1 / area);
    } else {
        const double volume = std::abs(dot(cell[0], cross(cell[1], cell[2])));
        if (!(volume > 1e-12 * norm(cell[0]) * norm(cell[1]) * norm(cell[2]))) throw singular();
    }
    return basis;
}

// Binning along one axis of the search basis.
struct Axis {
    bool periodic = false;
    double spacing = 1;    // distance between planes of constant fractional coordinate 0 and 1
    double thickness = 0;  // Cartesian thickness covered by the atoms (periodic: `spacing`)
    double origin = 0;     // fractional coordinate of the lower face of bin 0
    double width = 1;      // fractional width of a bin
    std::int64_t n = 1;    // bins spanning the atoms (periodic: the cell)
    std::int64_t reach = 0;  // bins searched on either side of an atom's bin
    std::int64_t extended() const { return n + 2 * reach; }
};

// Smallest squared distance between a point of bin b and a point of bin b + offset, where the
// bins are parallelepipeds with edge vectors of Gram matrix `gram`. The difference of the two
// points is v @ edges with v in the box [offset - 1, offset + 1]; minimise v G v over that box by
// trying every split of the coordinates into lower bound / upper bound / free (the optimum of a
// convex quadratic is one of these KKT points).
double min_bin_distance_sq(const Mat3& gram, const std::array<std::int64_t, 3>& offset) {
    double best = std::numeric_limits<double>::infinity();
    for (int pattern = 0; pattern < 27; ++pattern) {
        Vec3 v{};
        int free_axes[3];
        int n_free = 0;
        for (int k = 0, p = pattern; k < 3; ++k, p /= 3) {
            const int state = p % 3;
            if (state == 2) {
                free_axes[n_free++] = k;
                v[k] = 0;
            } else {
                v[k] = static_cast<double>(offset[k]) + (state == 0 ? -1.0 : 1.0);
            }
        }
        // Solve gram[F][F] v[F] = -gram[F][B] v[B] for the free coordinates F.
        Vec3 rhs{};
        for (int f = 0; f < n_free; ++f) {
            const int k = free_axes[f];
            for (int c = 0; c < 3; ++c) rhs[f] -= gram[k][c] * v[c];
        }
        if (n_free == 1) {
            const int k = free_axes[0];
            v[k] = rhs[0] / gram[k][k];
        } else if (n_free == 2) {
            const int k = free_axes[0], l = free_axes[1];
            const double det = gram[k][k] * gram[l][l] - gram[k][l] * gram[l][k];
            v[k] = (rhs[0] * gram[l][l] - gram[k][l] * rhs[1]) / det;
            v[l] = (gram[k][k] * rhs[1] - gram[l][k] * rhs[0]) / det;
        }  // n_free == 3: v = 0 is the unconstrained minimum.
        bool feasible = true;
        for (int f = 0; f < n_free; ++f) {
            const int k = free_axes[f];
            const double centre = static_cast<double>(offset[k]);
            feasible = feasible && v[k] >= centre - 1 - 1e-12 && v[k] <= centre + 1 + 1e-12;
        }
        if (!feasible) continue;
        double value = 0;
        for (int r = 0; r < 3; ++r) {
            for (int c = 0; c < 3; ++c) value += v[r] * gram[r][c] * v[c];
        }
        best = std::min(best, value);
    }
    return best;
}

// A run of contiguous bins in the stencil, relative to the linear index of an atom's own bin.
struct StencilRow {
    std::int64_t first_bin;
    std::int64_t n_bins;
};

// Bin-sorted atoms and periodic images, searched as candidate second atoms.
struct Candidates {
    PodBuffer<double> x, y, z;          // Cartesian position of the image
    PodBuffer<std::int32_t> atom;       // index of the atom it is an image of
    PodBuffer<std::int32_t> shift;      // 3 per image: its cell shift minus the atom's wrap
    PodBuffer<std::int64_t> bin_start;  // candidates of bin b are [bin_start[b], bin_start[b+1])
    PodBuffer<std::int64_t> home_bin;   // per atom: linear index of its bin
    PodBuffer<std::int64_t> home_slot;  // per atom: slot of its unshifted copy
};

// Everything the two pair passes read.
struct Search {
    Candidates candidates;
    std::vector<StencilRow> stencil;
    const std::int32_t* wrap;  // 3 per atom: cells by which it was wrapped
    std::size_t n_atoms;
    double cutoff_sq;
    bool self_interaction;
    std::size_t expected_pairs;
};

// Pass 1: the candidate slots of the pairs of atom 0, then atom 1, ..., and the number of pairs
// of each atom in counts[a]. The scan is branch-free: every candidate is written to the end of
// `hits`, which only advances when the candidate is within the cutoff.
//
// Two passes let pass 2 write the outputs at their final size, with a tight scan loop here.
// Atoms are visited in input order in both passes: bin order would make the scan more
// cache-friendly for large inputs in random order, but scatters the output writes, which
// costs more for inputs in spatial order (supercells, most MD).
void find_hits(const Search& search, PodBuffer<std::uint32_t>& hits, std::int64_t* counts) {
    const Candidates& cand = search.candidates;
    const double* const x = cand.x.data();
    const double* const y = cand.y.data();
    const double* const z = cand.z.data();
    const std::int64_t* const bin_start = cand.bin_start.data();
    const double cutoff_sq = search.cutoff_sq;

    hits.reserve(search.expected_pairs + 1024);
    std::uint32_t* slots = hits.data();
    std::size_t n_hits = 0;
    for (std::size_t a = 0; a < search.n_atoms; ++a) {
        const std::size_t home = static_cast<std::size_t>(cand.home_slot[a]);
        const std::size_t excluded = search.self_interaction ? SIZE_MAX : home;
        const double xi = x[home], yi = y[home], zi = z[home];
        const std::size_t first_hit = n_hits;
        const std::int64_t* const bins = bin_start + cand.home_bin[a];
        for (const StencilRow& row : search.stencil) {
            std::size_t k = static_cast<std::size_t>(bins[row.first_bin]);
            const std::size_t end = static_cast<std::size_t>(bins[row.first_bin + row.n_bins]);
            if (n_hits + (end - k) > hits.capacity()) {
                hits.reserve(std::max(n_hits + (end - k), hits.capacity() + hits.capacity() / 2));
                slots = hits.data();
            }
            for (; k < end; ++k) {
                const double dx = x[k] - xi, dy = y[k] - yi, dz = z[k] - zi;
                const double d2 = dx * dx + dy * dy + dz * dz;
                slots[n_hits] = static_cast<std::uint32_t>(k);
                n_hits += static_cast<std::size_t>((d2 < cutoff_sq) & (k != excluded));
            }
        }
        counts[a] = static_cast<std::int64_t>(n_hits - first_hit);
    }
    hits.resize(n_hits);
}

// Bits of the `Want` template argument: which quantities write_pairs writes.
constexpr unsigned kWantI = 1, kWantJ = 2, kWantS = 4, kWantDist = 8, kWantVec = 16;

// Pass 2: write the requested quantities of every pair.
template <unsigned Want>
void write_pairs(const Search& search, const PodBuffer<std::uint32_t>& hits, NeighbourList& out) {
    const Candidates& cand = search.candidates;
    const double* const x = cand.x.data();
    const double* const y = cand.y.data();
    const double* const z = cand.z.data();
    const std::int32_t* const atom = cand.atom.data();
    const std::int32_t* const shift = cand.shift.data();
    const std::int64_t* const offsets = out.offsets.data();

    const std::size_t n_pairs = hits.size();
    out.n_pairs = n_pairs;
    if (Want & kWantI) out.i.resize(n_pairs);
    if (Want & kWantJ) out.j.resize(n_pairs);
    if (Want & kWantS) out.S.resize(3 * n_pairs);
    if (Want & kWantDist) out.d.resize(n_pairs);
    if (Want & kWantVec) out.D.resize(3 * n_pairs);
    // Raw pointers in locals: stores through them then cannot alias the buffers' bookkeeping,
    // which would force a reload per pair.
    std::int64_t* const i_out = out.i.data();
    std::int64_t* const j_out = out.j.data();
    std::int64_t* const S_out = out.S.data();
    double* const d_out = out.d.data();
    double* const D_out = out.D.data();

    const std::uint32_t* const slots = hits.data();
    for (std::size_t a = 0; a < search.n_atoms; ++a) {
        const std::size_t home = static_cast<std::size_t>(cand.home_slot[a]);
        const double xi = x[home], yi = y[home], zi = z[home];
        const std::int64_t wrap_x = search.wrap[3 * a], wrap_y = search.wrap[3 * a + 1],
                           wrap_z = search.wrap[3 * a + 2];
        const auto end = static_cast<std::size_t>(offsets[a + 1]);
        for (std::size_t p = static_cast<std::size_t>(offsets[a]); p < end; ++p) {
            const std::size_t k = slots[p];
            const double dx = x[k] - xi, dy = y[k] - yi, dz = z[k] - zi;
            if constexpr ((Want & kWantI) != 0) i_out[p] = static_cast<std::int64_t>(a);
            if constexpr ((Want & kWantJ) != 0) j_out[p] = atom[k];
            if constexpr ((Want & kWantS) != 0) {
                S_out[3 * p] = shift[3 * k] + wrap_x;
                S_out[3 * p + 1] = shift[3 * k + 1] + wrap_y;
                S_out[3 * p + 2] = shift[3 * k + 2] + wrap_z;
            }
            if constexpr ((Want & kWantDist) != 0) {
                d_out[p] = std::sqrt(dx * dx + dy * dy + dz * dz);
            }
            if constexpr ((Want & kWantVec) != 0) {
                D_out[3 * p] = dx;
                D_out[3 * p + 1] = dy;
                D_out[3 * p + 2] = dz;
            }
        }
    }
}

template <std::size_t... Masks>
void dispatch_write_pairs(unsigned want, const Search& search,
                          const PodBuffer<std::uint32_t>& hits, NeighbourList& out,
                          std::index_sequence<Masks...>) {
    ((want == Masks ? write_pairs<Masks>(search, hits, out) : void()), ...);
}

std::string number_text(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.4g", value);
    return text;
}

std::string bytes_text(double bytes) {
    const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    int unit = 0;
    while (bytes >= 1024 && unit < 4) {
        bytes /= 1024;
        ++unit;
    }
    return number_text(bytes) + " " + units[unit];
}

void validate(const double* positions, std::size_t n_atoms, const std::array<double, 9>& cell,
              const NeighbourListSettings& settings) {
    if (!(std::isfinite(settings.cutoff) && settings.cutoff > 0)) {
        throw std::invalid_argument("mlpot: the cutoff must be a positive finite number, got " +
                                    number_text(settings.cutoff));
    }
    for (const double value : cell) {
        if (!std::isfinite(value)) {
            throw std::invalid_argument(
                "mlpot: the cell contains NaN or infinite values; give finite lattice vectors "
                "(zero rows are fine along non-periodic axes)");
        }
    }
    for (std::size_t k = 0; k < 3 * n_atoms; ++k) {
        if (!std::isfinite(positions[k])) {
            throw std::invalid_argument("mlpot: the position of atom " + std::to_string(k / 3) +
                                        " contains NaN or infinite values; fix the structure "
                                        "before building a neighbour list");
        }
    }
    if (n_atoms > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
        throw std::invalid_argument("mlpot: at most 2^31 - 1 atoms are supported");
    }
}

// Fractional coordinates of the atoms, wrapped into [0, 1) along periodic axes.
struct Wrapped {
    PodBuffer<double> frac;        // 3 per atom
    PodBuffer<std::int32_t> wrap;  // 3 per atom: whole cells subtracted (0 on open axes)
    Vec3 lowest{{HUGE_VAL, HUGE_VAL, HUGE_VAL}};  // extent of the atoms along open axes
    Vec3 highest{{-HUGE_VAL, -HUGE_VAL, -HUGE_VAL}};
};

Wrapped wrap_into_cell(const double* positions, std::size_t n_atoms, const Mat3& to_frac,
                       const std::array<bool, 3>& pbc) {
    Wrapped atoms;
    atoms.frac.resize(3 * n_atoms);
    atoms.wrap.resize(3 * n_atoms);
    for (std::size_t a = 0; a < n_atoms; ++a) {
        const double* r = positions + 3 * a;
        for (int k = 0; k < 3; ++k) {
            double f = r[0] * to_frac[0][k] + r[1] * to_frac[1][k] + r[2] * to_frac[2][k];
            std::int32_t cells = 0;
            if (pbc[k]) {
                const double whole = std::floor(f);
                if (!(std::abs(whole) < kMaxWrap)) {
                    throw std::invalid_argument(
                        "mlpot: atom " + std::to_string(a) + " lies more than 2^30 cells "
                        "outside the cell along periodic axis " + std::to_string(k) +
                        "; wrap the positions into the cell first");
                }
                f -= whole;
                cells = static_cast<std::int32_t>(whole);
            } else {
                atoms.lowest[k] = std::min(atoms.lowest[k], f);
                atoms.highest[k] = std::max(atoms.highest[k], f);
            }
            atoms.frac[3 * a + k] = f;
            atoms.wrap[3 * a + k] = cells;
        }
    }
    return atoms;
}

// Bins of about cutoff / kBinsPerCutoff across each axis, measured between lattice planes so
// that triclinic cells work, and how many bins the search must reach on either side.
std::array<Axis, 3> choose_bins(const Wrapped& atoms, std::size_t n_atoms, const Mat3& to_frac,
                                const std::array<bool, 3>& pbc, double reach_cutoff) {
    std::array<Axis, 3> axes;
    std::array<double, 3> frac_span{}, n_bins{};
    for (int k = 0; k < 3; ++k) {
        Axis& axis = axes[k];
        axis.periodic = pbc[k];
        axis.spacing = 1 / norm(Vec3{to_frac[0][k], to_frac[1][k], to_frac[2][k]});
        axis.origin = axis.periodic ? 0.0 : atoms.lowest[k];
        frac_span[k] = axis.periodic ? 1.0 : atoms.highest[k] - atoms.lowest[k];
        axis.thickness = frac_span[k] * axis.spacing;
        const double wanted = std::floor(axis.thickness * kBinsPerCutoff / reach_cutoff);
        n_bins[k] = std::clamp(wanted, 1.0, 1e6);
    }
    // Sparse systems (a few atoms far apart) must not get many more bins than atoms.
    const double max_bins = 4.0 * static_cast<double>(n_atoms) + 64;
    while (n_bins[0] * n_bins[1] * n_bins[2] > max_bins) {
        double& largest = *std::max_element(n_bins.begin(), n_bins.end());
        largest = std::max(1.0, std::floor(largest / 2));
    }
    for (int k = 0; k < 3; ++k) {
        Axis& axis = axes[k];
        axis.n = static_cast<std::int64_t>(n_bins[k]);
        axis.width = frac_span[k] > 0 ? frac_span[k] / n_bins[k] : 1.0;
        double reach = std::ceil(reach_cutoff / (axis.width * axis.spacing));
        if (!axis.periodic) reach = std::min(reach, n_bins[k] - 1);
        if (!(reach <= kMaxReach)) {
            throw std::length_error(
                "mlpot: the cutoff " + number_text(reach_cutoff) + " spans more than " +
                number_text(kMaxReach) + " periodic images along axis " + std::to_string(k) +
                ", where the cell is only " + number_text(axis.spacing) +
                " thick; use a smaller cutoff or a cell that is not nearly flat");
        }
        axis.reach = static_cast<std::int64_t>(reach);
    }
    return axes;
}

// Pairs expected from the density of atoms (non-periodic axes count at least one cutoff thick),
// and never more than every atom paired with every atom and image.
double estimate_pairs(const std::array<Axis, 3>& axes, const Mat3& basis, std::size_t n_atoms,
                      double cutoff, bool self_interaction) {
    double volume = std::abs(dot(basis[0], cross(basis[1], basis[2])));
    double images_per_atom = 1;
    for (const Axis& axis : axes) {
        if (axis.periodic) {
            images_per_atom *= static_cast<double>(axis.extended()) / static_cast<double>(axis.n);
        } else {
            volume *= std::max(axis.thickness, cutoff);
        }
    }
    const double atoms = static_cast<double>(n_atoms);
    const double sphere = 4.0 / 3.0 * kPi * cutoff * cutoff * cutoff;
    return atoms * std::min(atoms * sphere / volume, atoms * images_per_atom) +
           (self_interaction ? atoms : 0.0);
}

// Refuse, before allocating anything large, a computation whose estimated memory need exceeds
// settings.max_memory_bytes or else the memory available.
void check_memory(const std::array<Axis, 3>& axes, std::size_t n_atoms, double expected_pairs,
                  const NeighbourListSettings& settings) {
    double images = static_cast<double>(n_atoms), n_bins = 1;
    for (const Axis& axis : axes) {
        n_bins *= static_cast<double>(axis.extended());
        if (axis.periodic) {
            images *= static_cast<double>(axis.extended()) / static_cast<double>(axis.n);
        }
    }
    const Quantities& q = settings.quantities;
    const double bytes_per_pair = 4.0 + 8.0 * (q.i + q.j + q.d) + 24.0 * (q.S + q.D);
    const double needed = static_cast<double>(n_atoms) * 80 + images * 40 + n_bins * 8 +
                          expected_pairs * bytes_per_pair;
    // Below kSmallBytes, asking the system is not worth its cost; malloc failures still throw.
    const std::uint64_t limit = settings.max_memory_bytes != 0 ? settings.max_memory_bytes
                                : needed < kSmallBytes       ? 0
                                                             : available_memory_bytes();
    if (limit != 0 && needed > static_cast<double>(limit)) {
        throw std::length_error(
            "mlpot: the neighbour list would need about " + bytes_text(needed) + " (~" +
            number_text(expected_pairs) + " pairs for " + std::to_string(n_atoms) +
            " atoms with cutoff " + number_text(settings.cutoff) + "), more than the " +
            bytes_text(static_cast<double>(limit)) +
            (settings.max_memory_bytes != 0 ? " allowed by max_memory_bytes"
                                            : " of memory available") +
            "; use a smaller cutoff or fewer atoms, request fewer quantities, or check that the "
            "cell is not much smaller than intended");
    }
}

// Rows of bins along axis 0 that can hold a pair within the cutoff, relative to an atom's bin.
std::vector<StencilRow> build_stencil(const std::array<Axis, 3>& axes, const Mat3& basis,
                                      double reach_cutoff) {
    Mat3 gram{};  // of the bin edge vectors
    for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) {
            gram[r][c] = axes[r].width * axes[c].width * dot(basis[r], basis[c]);
        }
    }
    const std::int64_t ex = axes[0].extended(), ey = axes[1].extended();
    const double reach_cutoff_sq = reach_cutoff * reach_cutoff;
    std::vector<StencilRow> stencil;
    for (std::int64_t dz = -axes[2].reach; dz <= axes[2].reach; ++dz) {
        for (std::int64_t dy = -axes[1].reach; dy <= axes[1].reach; ++dy) {
            // The offsets within reach form a convex set, so along a row they are an interval:
            // find its ends by scanning inwards.
            const auto within_reach = [&](std::int64_t dx) {
                const bool touching = std::abs(dx) <= 1 && std::abs(dy) <= 1 && std::abs(dz) <= 1;
                return touching || min_bin_distance_sq(gram, {dx, dy, dz}) < reach_cutoff_sq;
            };
            std::int64_t first = -axes[0].reach, last = axes[0].reach;
            while (first <= last && !within_reach(first)) ++first;
            while (last > first && !within_reach(last)) --last;
            if (first <= last) stencil.push_back({first + ex * (dy + ey * dz), last - first + 1});
        }
    }
    return stencil;
}

// Counting sort of the atoms and of their periodic images that fall in the padding bins.
Candidates sort_into_bins(const double* positions, const Wrapped& atoms, std::size_t n_atoms,
                          const std::array<Axis, 3>& axes, const Mat3& cell) {
    const std::int64_t ex = axes[0].extended(), ey = axes[1].extended();
    const std::int64_t total_bins = ex * ey * axes[2].extended();

    PodBuffer<std::int32_t> bin_of(3 * n_atoms);  // per axis, in the unpadded grid
    for (std::size_t a = 0; a < n_atoms; ++a) {
        for (int k = 0; k < 3; ++k) {
            const double position = (atoms.frac[3 * a + k] - axes[k].origin) / axes[k].width;
            bin_of[3 * a + k] = static_cast<std::int32_t>(
                std::clamp(position, 0.0, static_cast<double>(axes[k].n - 1)));
        }
    }
    // Cell shifts t of atom a whose image lands in the padded grid, and the image's bin.
    std::array<std::int64_t, 3> first_image{}, last_image{};
    const auto image_range = [&](std::size_t a) {
        for (int k = 0; k < 3; ++k) {
            const Axis& axis = axes[k];
            const std::int64_t b = bin_of[3 * a + k];
            first_image[k] = axis.periodic ? -((axis.reach + b) / axis.n) : 0;
            last_image[k] = axis.periodic ? (axis.n + axis.reach - 1 - b) / axis.n : 0;
        }
    };
    const auto bin_index = [&](std::size_t a, std::int64_t tx, std::int64_t ty, std::int64_t tz) {
        const std::int64_t bx = bin_of[3 * a] + tx * axes[0].n + axes[0].reach;
        const std::int64_t by = bin_of[3 * a + 1] + ty * axes[1].n + axes[1].reach;
        const std::int64_t bz = bin_of[3 * a + 2] + tz * axes[2].n + axes[2].reach;
        return bx + ex * (by + ey * bz);
    };
    const auto for_each_image = [&](std::size_t a, auto&& visit) {
        image_range(a);
        for (std::int64_t tz = first_image[2]; tz <= last_image[2]; ++tz) {
            for (std::int64_t ty = first_image[1]; ty <= last_image[1]; ++ty) {
                for (std::int64_t tx = first_image[0]; tx <= last_image[0]; ++tx) {
                    visit(tx, ty, tz);
                }
            }
        }
    };

    Candidates cand;
    cand.bin_start.resize(static_cast<std::size_t>(total_bins) + 1);
    std::int64_t* const bin_start = cand.bin_start.data();
    std::fill(bin_start, bin_start + total_bins + 1, 0);
    for (std::size_t a = 0; a < n_atoms; ++a) {
        for_each_image(a, [&](std::int64_t tx, std::int64_t ty, std::int64_t tz) {
            ++bin_start[bin_index(a, tx, ty, tz) + 1];
        });
    }
    for (std::int64_t b = 0; b < total_bins; ++b) bin_start[b + 1] += bin_start[b];
    const auto n_candidates = static_cast<std::size_t>(bin_start[total_bins]);
    if (n_candidates > std::numeric_limits<std::uint32_t>::max()) {
        throw std::length_error("mlpot: more than 2^32 atoms and periodic images to search; use "
                                "a smaller cutoff or fewer atoms");
    }
    for (auto* buffer : {&cand.x, &cand.y, &cand.z}) buffer->resize(n_candidates);
    cand.atom.resize(n_candidates);
    cand.shift.resize(3 * n_candidates);
    cand.home_bin.resize(n_atoms);
    cand.home_slot.resize(n_atoms);

    for (std::size_t a = 0; a < n_atoms; ++a) {
        const double* r = positions + 3 * a;
        const std::int32_t* wrap = atoms.wrap.data() + 3 * a;
        for_each_image(a, [&](std::int64_t tx, std::int64_t ty, std::int64_t tz) {
            const std::int64_t bin = bin_index(a, tx, ty, tz);
            const auto slot = static_cast<std::size_t>(bin_start[bin]++);
            // Shift relative to the input position, so that S refers to it.
            const std::int64_t s[3] = {tx - wrap[0], ty - wrap[1], tz - wrap[2]};
            double p[3] = {r[0], r[1], r[2]};
            for (int k = 0; k < 3; ++k) {
                if (s[k] == 0) continue;
                for (int c = 0; c < 3; ++c) p[c] += static_cast<double>(s[k]) * cell[k][c];
            }
            cand.x[slot] = p[0];
            cand.y[slot] = p[1];
            cand.z[slot] = p[2];
            cand.atom[slot] = static_cast<std::int32_t>(a);
            for (int k = 0; k < 3; ++k) cand.shift[3 * slot + k] = static_cast<std::int32_t>(s[k]);
            if (tx == 0 && ty == 0 && tz == 0) {
                cand.home_bin[a] = bin;
                cand.home_slot[a] = static_cast<std::int64_t>(slot);
            }
        });
    }
    // Filling advanced each bin_start[b] to the end of bin b; shift back to the starts.
    std::memmove(bin_start + 1, bin_start,
                 static_cast<std::size_t>(total_bins) * sizeof *bin_start);
    bin_start[0] = 0;
    return cand;
}

}  // namespace

NeighbourList compute_neighbour_list(const double* positions, std::size_t n_atoms,
                                     const std::array<double, 9>& cell_values,
                                     const NeighbourListSettings& settings) {
    validate(positions, n_atoms, cell_values, settings);
    NeighbourList out;
    out.offsets.resize(n_atoms + 1);
    out.offsets[0] = 0;
    if (n_atoms == 0) return out;

    const Mat3 cell{{{cell_values[0], cell_values[1], cell_values[2]},
                     {cell_values[3], cell_values[4], cell_values[5]},
                     {cell_values[6], cell_values[7], cell_values[8]}}};
    const Mat3 basis = search_basis(cell, settings.pbc);
    const Mat3 to_frac = inverse(basis);
    const double reach_cutoff = settings.cutoff * (1 + kMargin);

    const Wrapped atoms = wrap_into_cell(positions, n_atoms, to_frac, settings.pbc);
    const std::array<Axis, 3> axes =
        choose_bins(atoms, n_atoms, to_frac, settings.pbc, reach_cutoff);
    const double expected_pairs =
        estimate_pairs(axes, basis, n_atoms, settings.cutoff, settings.self_interaction);
    check_memory(axes, n_atoms, expected_pairs, settings);

    Search search;
    search.stencil = build_stencil(axes, basis, reach_cutoff);
    search.candidates = sort_into_bins(positions, atoms, n_atoms, axes, cell);
    search.wrap = atoms.wrap.data();
    search.n_atoms = n_atoms;
    search.cutoff_sq = settings.cutoff * settings.cutoff;
    search.self_interaction = settings.self_interaction;
    search.expected_pairs = static_cast<std::size_t>(expected_pairs);

    PodBuffer<std::uint32_t> hits;
    std::int64_t* const offsets = out.offsets.data();
    find_hits(search, hits, offsets + 1);
    for (std::size_t a = 0; a < n_atoms; ++a) offsets[a + 1] += offsets[a];

    const Quantities& q = settings.quantities;
    const unsigned want = (q.i ? kWantI : 0) | (q.j ? kWantJ : 0) | (q.S ? kWantS : 0) |
                          (q.d ? kWantDist : 0) | (q.D ? kWantVec : 0);
    dispatch_write_pairs(want, search, hits, out, std::make_index_sequence<32>{});
    return out;
}

}  // namespace mlpot
