/* mlpot: integrity check of a model file's zip container.
 *
 * torch's archive reader does not verify the CRC-32 checksums of the records it loads, so a model
 * file damaged on disk or in transfer could load and run with wrong weights. This check reads
 * every stored record once and compares its checksum with the zip central directory, as Python's
 * zipfile.testzip() does on the ASE side. Plain C++17.
 */

#ifndef MLPOT_ARCHIVE_CHECK_H
#define MLPOT_ARCHIVE_CHECK_H

#include <string>

namespace mlpot {

// The name of the first record whose checksum does not match, "" when all match. Throws
// std::runtime_error when the file is not a readable zip archive.
std::string first_damaged_record(const std::string &path);

}    // namespace mlpot

#endif
