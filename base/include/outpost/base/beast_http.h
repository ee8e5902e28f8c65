// Boost.Beast's HTTP, included the one way this project does. GCC 12 reports Beast's parser
// (inlined into basic_parser::put) as reading an uninitialised boost::optional at -O2: a known
// false positive, silenced here for Beast's headers only and nowhere else.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/beast/http.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
