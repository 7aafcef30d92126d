// Runs a kernel body over a grid, one block at a time (all started together when cooperative, a
// cluster's blocks together in a cluster launch), the blocks' threads as fibers.
#pragma once
#include <stddef.h>

#include <string>

#include "include/cuda_emu.h"

namespace emu {
// Returns "" on success, else what went wrong (a barrier deadlock).
std::string run_grid(void (*body)(void*), void* params, uint3 grid, uint3 block, size_t smem_bytes, bool cooperative, uint3 cluster);
// How many threads passed griddepcontrol.wait since the last call (and restarts the count).
unsigned long long take_pdl_waits();
}  // namespace emu
