// One cycle of the handle-leak test, run as a fresh process each time: load the node
// identity, create or load an agent key, sign with it, and quote. It connects without
// flushing leftovers, so a handle leaked by an earlier cycle stays visible to the test.
//   tpm_cycle TCTI STATE_DIR AGENT
#include <cstdio>

#include "outpost/attestation/agent_keys.h"
#include "outpost/attestation/node.h"
#include "outpost/attestation/tpm.h"

using namespace outpost;
using namespace outpost::attestation;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: tpm_cycle TCTI STATE_DIR AGENT\n");
    return 2;
  }
  auto die = [](const Error& e) {
    std::fprintf(stderr, "tpm_cycle: %s\n", e.message().c_str());
    return 1;
  };
  auto id = load_identity(argv[2]);
  if (!id) return die(id.error());
  Tpm::Options opts;
  opts.flush_leftovers = false;
  auto tpm = Tpm::connect(argv[1], opts);
  if (!tpm) return die(tpm.error());
  AgentKeyStore store(argv[2], *id);
  auto key = store.ensure(**tpm, argv[3], sha256(std::string_view("agent binary")));
  if (!key) return die(key.error());
  {
    auto loaded = store.load(**tpm, *key);
    if (!loaded) return die(loaded.error());
    auto sig = (*tpm)->sign(*loaded, sha256(std::string_view("payload")));
    if (!sig) return die(sig.error());
  }
  auto sel = parse_pcr_selection("sha256:0,23");
  auto quote = (*tpm)->quote(id->handles.ak, *sel, Bytes{1, 2, 3});
  if (!quote) return die(quote.error());
  return 0;
}
