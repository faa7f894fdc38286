// O(N) full neighbour list with periodic images (triclinic cells, mixed boundary conditions).
//
// Pure C++17: compiled into both the Python module and the LAMMPS plugin, so it must not include
// Python, pybind11, torch or LAMMPS headers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

namespace mlpot {

/// Pages of large freed buffers are kept for reuse, up to this many bytes in all (default: 1/8
/// of physical memory, at most 4 GiB; 0 disables the cache and frees what it holds). Writing to
/// fresh pages costs ~0.4 ns per byte (page faults and zeroing), several times more than finding
/// the pairs, and a neighbour list is usually rebuilt at about the same size again and again.
void set_buffer_cache_limit(std::size_t bytes);
std::size_t buffer_cache_limit();

namespace detail {
/// malloc-compatible block of at least `bytes`, possibly recycled; its size goes to *granted.
void* acquire_block(std::size_t bytes, std::size_t* granted);
/// Return a block from acquire_block (or realloc of one) of `bytes` to the cache or to free().
void release_block(void* block, std::size_t bytes) noexcept;
}  // namespace detail

/// Growable array of trivially copyable values, without value-initialisation. Large blocks are
/// recycled through the buffer cache; growing goes through realloc, which for large blocks
/// remaps pages instead of copying them. Move-only.
template <typename T>
class PodBuffer {
public:
    PodBuffer() = default;
    explicit PodBuffer(std::size_t size) { resize(size); }
    PodBuffer(const PodBuffer&) = delete;
    PodBuffer& operator=(const PodBuffer&) = delete;
    PodBuffer(PodBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)),
          size_(std::exchange(other.size_, 0)),
          capacity_(std::exchange(other.capacity_, 0)) {}
    PodBuffer& operator=(PodBuffer&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
        std::swap(capacity_, other.capacity_);
        return *this;
    }
    ~PodBuffer() {
        if (data_ != nullptr) detail::release_block(data_, capacity_ * sizeof(T));
    }

    T* data() noexcept { return data_; }
    const T* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    std::size_t capacity() const noexcept { return capacity_; }
    T& operator[](std::size_t k) noexcept { return data_[k]; }
    const T& operator[](std::size_t k) const noexcept { return data_[k]; }

    /// Make room for `capacity` values; existing values are kept.
    void reserve(std::size_t capacity) {
        if (capacity <= capacity_) return;
        if (capacity > SIZE_MAX / sizeof(T)) {
            throw std::length_error("mlpot: buffer size overflows");
        }
        std::size_t granted = capacity * sizeof(T);
        void* grown = data_ == nullptr ? detail::acquire_block(granted, &granted)
                                       : std::realloc(data_, granted);
        if (grown == nullptr) throw std::bad_alloc();
        data_ = static_cast<T*>(grown);
        capacity_ = granted / sizeof(T);
    }
    /// Set the size; new values are left uninitialised.
    void resize(std::size_t size) {
        reserve(size);
        size_ = size;
    }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

/// Which per-pair arrays to fill, named after the letters used by ase and matscipy.
struct Quantities {
    bool i = false;  ///< first atom index
    bool j = false;  ///< second atom index
    bool S = false;  ///< integer cell shift of the second atom
    bool d = false;  ///< distance
    bool D = false;  ///< distance vector

    /// Parse letters from "ijSdD" (repeats allowed); throws std::invalid_argument otherwise.
    static Quantities parse(const std::string& letters);
    static Quantities all() { return {true, true, true, true, true}; }
};

struct NeighbourListSettings {
    double cutoff = 0.0;  ///< pairs with distance strictly below this are listed
    std::array<bool, 3> pbc{{false, false, false}};  ///< periodicity along each cell vector
    Quantities quantities = Quantities::all();
    bool self_interaction = false;  ///< also list each atom as its own neighbour (S = 0, d = 0)
    /// Refuse (std::length_error) when the estimated memory need exceeds this many bytes.
    /// 0: the memory currently available (MemAvailable on Linux), not checked below 64 MiB.
    std::uint64_t max_memory_bytes = 0;
};

/// Full neighbour list as a struct of arrays. Pair p is (i[p], j[p], S[3p..3p+2]) with
/// D = positions[j] - positions[i] + S @ cell and d = |D| < cutoff. Pairs are sorted by i, so the
/// pairs of atom a are [offsets[a], offsets[a + 1]). Arrays of quantities that were not requested
/// are empty; `offsets` (n_atoms + 1 values) is always filled.
struct NeighbourList {
    std::size_t n_pairs = 0;
    PodBuffer<std::int64_t> i;
    PodBuffer<std::int64_t> j;
    PodBuffer<std::int64_t> S;  ///< n_pairs x 3, row-major
    PodBuffer<double> d;
    PodBuffer<double> D;  ///< n_pairs x 3, row-major
    PodBuffer<std::int64_t> offsets;
};

/// Compute the full neighbour list of `n_atoms` atoms.
///
/// positions: n_atoms x 3 row-major Cartesian coordinates; they may lie outside the cell (S then
///   refers to these unwrapped positions, as in ase).
/// cell: 3 x 3 row-major, rows are the lattice vectors. Rows of non-periodic axes are ignored and
///   may be zero; rows of periodic axes must be linearly independent.
///
/// Throws std::invalid_argument for invalid input (non-finite values, cutoff <= 0, singular
/// periodic cell) and std::length_error when the estimated output does not fit in memory.
/// Thread-safe: concurrent calls share nothing but the buffer cache, which is locked.
NeighbourList compute_neighbour_list(const double* positions, std::size_t n_atoms,
                                     const std::array<double, 9>& cell,
                                     const NeighbourListSettings& settings);

/// Bytes of memory currently available to a new allocation (MemAvailable on Linux), or 0 when
/// the platform does not say.
std::uint64_t available_memory_bytes();

}  // namespace mlpot
