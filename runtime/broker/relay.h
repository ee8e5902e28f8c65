// The broker's data path for one MCP connection: a poll() loop over four pipe ends that
// splits each direction into lines and passes them through an McpSession.
//
// One thread per connection, like the byte-pump it is measured against: no event-loop hops
// on the hot path, and a slow TPM operation for one call's credential stalls only that
// connection (which must keep its order anyway). Writes go out as soon as they are produced;
// poll() is only entered when a pipe is full or there is nothing to read.
#pragma once

#include <cstddef>

#include "broker/mcp_session.h"
#include "outpost/base/metrics.h"

namespace outpost::broker {

struct RelayFds {
  int client_in = -1;    // what the agent sends (read)
  int client_out = -1;   // what the agent receives (write)
  int server_in = -1;    // the server's stdin (write); closed by the relay at client EOF
  int server_out = -1;   // the server's stdout (read)
  int control = -1;      // optional: EOF or error here (the connecting process died) ends the relay
  int wake = -1;         // optional: readable (an eventfd) ends the relay (shutdown, revocation)
};

enum class RelayEnd { finished, control_closed, woken, io_error };

// Where a relay's time went, summed over its batches (a batch: the lines one wake-up read).
// Clock reads are vDSO calls, a few tens of nanoseconds each: always on.
struct RelayTiming {
  // Per client batch with at least one whole line, when set (outpostd's metrics): the decide
  // stage, and the hold (decide and commit: how long the batch's calls waited in outpostd
  // before going to the server).
  metrics::Histogram* decide_histogram = nullptr;
  metrics::Histogram* hold_histogram = nullptr;
  uint64_t client_batches = 0, server_batches = 0;
  uint64_t read_ns = 0;          // read(2) of both directions
  uint64_t decide_ns = 0;        // client lines cut, parsed, decided, records staged
  uint64_t commit_ns = 0;        // waiting for the batch's records to be durable
  uint64_t forward_ns = 0;       // write(2) of the batch to the server
  uint64_t response_ns = 0;      // server lines cut and parsed (lists filtered)
  uint64_t return_ns = 0;        // write(2) to the client
};

// Runs until both directions are done (the client's EOF was passed on and the server's output
// ended), or `control`/`wake` say stop. Leaves the fds open except server_in, which it closes
// when the client's EOF has been forwarded (and sets to -1 in `fds`).
// `timing`, when given, receives where the time went.
RelayEnd run_relay(RelayFds& fds, McpSession& session, size_t max_line, RelayTiming* timing = nullptr);

}  // namespace outpost::broker
