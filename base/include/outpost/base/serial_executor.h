// SerialExecutor: one worker thread running submitted jobs strictly in submission order.
// The TPM is a single-threaded device with slow commands; every TPM command goes through
// one of these so that commands never interleave and never run on a caller's event loop.
//
// Thread-safe: submit() may be called from any thread. Jobs must not submit to the same
// executor and wait on the result (that deadlocks); this is checked.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <type_traits>

#include "outpost/base/check.h"

namespace outpost {

class SerialExecutor {
 public:
  SerialExecutor() : worker_([this] { loop(); }) {}
  ~SerialExecutor() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
    worker_.join();
  }
  SerialExecutor(const SerialExecutor&) = delete;
  SerialExecutor& operator=(const SerialExecutor&) = delete;

  template <class F>
  auto submit(F&& job) -> std::future<std::invoke_result_t<F>> {
    using R = std::invoke_result_t<F>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<F>(job));
    std::future<R> result = task->get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      OUTPOST_CHECK(!stopping_, "submit to a stopping executor");
      queue_.emplace_back([task] { (*task)(); });
    }
    cv_.notify_one();
    return result;
  }

  // Runs `job` on the worker and waits for it. Called from the worker itself it runs inline
  // (a job composed of other jobs), keeping the order without a deadlock.
  template <class F>
  auto run(F&& job) -> std::invoke_result_t<F> {
    if (std::this_thread::get_id() == worker_.get_id()) return job();
    return submit(std::forward<F>(job)).get();
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, and everything submitted has run
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread worker_;  // last: starts after the members it uses exist
};

}  // namespace outpost
