// OUTPOST_CHECK: a broken invariant aborts loudly (Envoy's RELEASE_ASSERT). Never used for
// input validation: bad input is an Error, not a crash.
#pragma once

#include <cstdio>
#include <cstdlib>

#define OUTPOST_CHECK(cond, msg)                                                        \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "outpost: invariant failed at %s:%d: %s (%s)\n", __FILE__, \
                   __LINE__, #cond, msg);                                               \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)
