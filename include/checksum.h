/* checksum.h: FNV-1a 64, the checksum saegap records for inputs (job identity) and for every
 * block of output it writes (saegap verify). Not cryptographic: it detects damage. */
#ifndef SAEGAP_CHECKSUM_H
#define SAEGAP_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#define FNV1A_INIT 1469598103934665603ull

uint64_t fnv1a(uint64_t h, const void *data, size_t n);

#endif
