// The AMX tile configuration (palette 1) loaded by _tile_loadconfig. Include only from files
// compiled with -mamx-tile.
#pragma once

#include <cstdint>

namespace sparsebert {
namespace cpu {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tile t
  uint8_t rows[16] = {};    // rows of tile t
};

}  // namespace
}  // namespace cpu
}  // namespace sparsebert
