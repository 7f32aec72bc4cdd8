// Decoding of the 6-bit scales and mins that Q4_K and Q5_K share (internal to the quant
// library; used by the AVX2 kernels of both).
#pragma once

#include <cstdint>
#include <cstring>

namespace starling {

// The 6-bit scales and mins of a Q4_K block (the layout in quant.h), four per 32-bit word, byte
// j of `sc` and `m` for sub-block j. Word arithmetic keeps them in registers: the byte-wise
// version, stored and reloaded as one word, stalls on store forwarding.
struct Q4_KScales {
  uint64_t sc;
  uint64_t m;
};

inline Q4_KScales DecodeQ4_KScales(const uint8_t* s) {
  uint32_t u[3];
  std::memcpy(u, s, 12);
  const uint32_t sc_lo = u[0] & 0x3F3F3F3Fu;
  const uint32_t m_lo = u[1] & 0x3F3F3F3Fu;
  const uint32_t sc_hi = (u[2] & 0x0F0F0F0Fu) | (u[0] >> 6 & 0x03030303u) << 4;
  const uint32_t m_hi = (u[2] >> 4 & 0x0F0F0F0Fu) | (u[1] >> 6 & 0x03030303u) << 4;
  return {sc_lo | uint64_t{sc_hi} << 32, m_lo | uint64_t{m_hi} << 32};
}

}  // namespace starling
