#include "archive_check.h"

#include <array>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace mlpot {

namespace {

std::uint32_t crc32(const unsigned char *data, std::size_t size)
{
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t k = 0; k < size; ++k) crc = table[(crc ^ data[k]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

// Little-endian reads with bounds checks: a damaged archive must not read out of range.
struct Bytes {
  const std::string &data;
  std::uint64_t get(std::size_t at, int width) const
  {
    if (at + width > data.size()) throw std::runtime_error("zip structure out of range");
    std::uint64_t value = 0;
    for (int k = width - 1; k >= 0; --k)
      value = (value << 8) | static_cast<unsigned char>(data[at + k]);
    return value;
  }
};

}    // namespace

std::string first_damaged_record(const std::string &path)
{
  std::ifstream stream(path, std::ios::binary);
  const std::string data((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
  const Bytes bytes{data};
  if (data.size() < 22) throw std::runtime_error("too short to be a zip archive");

  // End of central directory: the last occurrence of its signature.
  std::size_t eocd = data.size() - 22;
  while (bytes.get(eocd, 4) != 0x06054b50u) {
    if (eocd == 0 || data.size() - eocd > 65557) throw std::runtime_error("no zip directory");
    --eocd;
  }
  std::uint64_t entries = bytes.get(eocd + 10, 2);
  std::uint64_t offset = bytes.get(eocd + 16, 4);
  if (offset == 0xFFFFFFFFu || entries == 0xFFFFu) {    // zip64: follow the locator
    if (eocd < 20 || bytes.get(eocd - 20, 4) != 0x07064b50u)
      throw std::runtime_error("bad zip64 locator");
    const std::uint64_t eocd64 = bytes.get(eocd - 20 + 8, 8);
    entries = bytes.get(eocd64 + 32, 8);
    offset = bytes.get(eocd64 + 48, 8);
  }

  for (std::uint64_t entry = 0; entry < entries; ++entry) {
    if (bytes.get(offset, 4) != 0x02014b50u) throw std::runtime_error("bad zip directory entry");
    const auto method = bytes.get(offset + 10, 2);
    const auto crc = static_cast<std::uint32_t>(bytes.get(offset + 16, 4));
    std::uint64_t size = bytes.get(offset + 20, 4);
    const auto name_length = bytes.get(offset + 28, 2);
    const auto extra_length = bytes.get(offset + 30, 2);
    const auto comment_length = bytes.get(offset + 32, 2);
    std::uint64_t local = bytes.get(offset + 42, 4);
    const std::string name = data.substr(offset + 46, name_length);
    // zip64 extended sizes/offset, in the order of the fields that overflowed
    for (std::uint64_t at = offset + 46 + name_length; at + 4 <= offset + 46 + name_length + extra_length;) {
      const auto id = bytes.get(at, 2), length = bytes.get(at + 2, 2);
      if (id == 0x0001) {
        std::uint64_t field = at + 4;
        if (bytes.get(offset + 24, 4) == 0xFFFFFFFFu) field += 8;    // uncompressed size
        if (size == 0xFFFFFFFFu) { size = bytes.get(field, 8); field += 8; }
        if (local == 0xFFFFFFFFu) local = bytes.get(field, 8);
      }
      at += 4 + length;
    }
    if (method == 0) {    // stored, as torch writes every record
      const auto start = local + 30 + bytes.get(local + 26, 2) + bytes.get(local + 28, 2);
      if (start + size > data.size()) return name;
      if (crc32(reinterpret_cast<const unsigned char *>(data.data()) + start, size) != crc)
        return name;
    }
    offset += 46 + name_length + extra_length + comment_length;
  }
  return "";
}

}    // namespace mlpot
