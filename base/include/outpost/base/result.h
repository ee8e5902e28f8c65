// Result<T>: the one error-carrying return type used across outpost.
//
// A Result holds either a value or an Error. An Error is an std::error_code (from one of the
// categories in errors.h, so TSS2 and mbedTLS codes keep their identity) plus a human context
// string built up as the error travels outwards ("node init: load SRK: Esys_ReadPublic").
//
// Shaped like std::expected (which g++ 12 lacks in C++20): has_value(), value(), error(),
// operator*, operator->. [[nodiscard]] so that a dropped error is a compile warning.
// Not thread-safe; a Result is a plain value.
#pragma once

#include <cstdlib>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "outpost/base/check.h"

namespace outpost {

class Error {
 public:
  Error(std::error_code code, std::string context) : code_(code), context_(std::move(context)) {}

  const std::error_code& code() const { return code_; }
  const std::string& context() const { return context_; }

  // "context: decoded message", the one-line form every CLI error takes.
  std::string message() const {
    if (context_.empty()) return code_.message();
    return context_ + ": " + code_.message();
  }

  // Prefixes the context with what the caller was doing.
  Error wrap(std::string_view outer) const& {
    return Error(code_, std::string(outer) + (context_.empty() ? "" : ": ") + context_);
  }
  Error wrap(std::string_view outer) && {
    context_ = std::string(outer) + (context_.empty() ? "" : ": ") + context_;
    return std::move(*this);
  }

  bool is(std::error_code c) const { return code_ == c; }

 private:
  std::error_code code_;
  std::string context_;
};

// Tag type so that Result<Error>-like ambiguities cannot arise: build errors with fail().
struct Failure {
  Error error;
};
inline Failure fail(std::error_code code, std::string context) {
  return Failure{Error(code, std::move(context))};
}
inline Failure fail(Error e) { return Failure{std::move(e)}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Failure f) : v_(std::in_place_index<1>, std::move(f.error)) {}  // NOLINT
  Result(Error e) : v_(std::in_place_index<1>, std::move(e)) {}         // NOLINT

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & {
    OUTPOST_CHECK(has_value(), "Result::value() on an error");
    return std::get<0>(v_);
  }
  const T& value() const& {
    OUTPOST_CHECK(has_value(), "Result::value() on an error");
    return std::get<0>(v_);
  }
  T&& value() && {
    OUTPOST_CHECK(has_value(), "Result::value() on an error");
    return std::get<0>(std::move(v_));
  }
  const Error& error() const {
    OUTPOST_CHECK(!has_value(), "Result::error() on a value");
    return std::get<1>(v_);
  }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Failure f) : error_(std::move(f.error)), ok_(false) {}  // NOLINT
  Result(Error e) : error_(std::move(e)), ok_(false) {}           // NOLINT

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const { OUTPOST_CHECK(ok_, "Result<void>::value() on an error"); }
  const Error& error() const {
    OUTPOST_CHECK(!ok_, "Result::error() on a value");
    return error_;
  }

 private:
  Error error_{std::error_code(), {}};
  bool ok_ = true;
};

inline Result<void> ok() { return {}; }

}  // namespace outpost

// Evaluates a Result-returning expression; on error returns that error from the enclosing
// function, optionally wrapped with context. Usage:
//   OUTPOST_TRY(auto key, load_key(path));
//   OUTPOST_TRY_VOID(write(...));
#define OUTPOST_CONCAT_INNER(a, b) a##b
#define OUTPOST_CONCAT(a, b) OUTPOST_CONCAT_INNER(a, b)
#define OUTPOST_TRY_IMPL(tmp, decl, expr)            \
  auto tmp = (expr);                                 \
  if (!tmp.has_value()) return ::outpost::fail(tmp.error()); \
  decl = std::move(tmp).value()
#define OUTPOST_TRY(decl, expr) OUTPOST_TRY_IMPL(OUTPOST_CONCAT(_outpost_try_, __LINE__), decl, expr)
#define OUTPOST_TRY_VOID(expr)                                  \
  do {                                                          \
    auto _outpost_r = (expr);                                   \
    if (!_outpost_r.has_value()) return ::outpost::fail(_outpost_r.error()); \
  } while (0)
