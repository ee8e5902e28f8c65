// Evidence packages (`outpost evidence verify` and `show`, the hub's evidence endpoints): files
// from anywhere. Whatever the bytes, the parser never reads past the end and refuses with a
// message; a package that parses encodes to bytes that parse to the same package; and the
// verifier never crashes on it. The trust is the package's own AK when its node.json parses,
// so that signatures over the seeds check and the deeper paths (runtime and boot logs against
// verified quotes) are reached.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "outpost/attestation/node.h"
#include "outpost/offline_cache/evidence.h"

using namespace outpost;
using namespace outpost::offline_cache;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Result<EvidencePackage> p = parse_evidence_package(ByteView(data, size));
  if (!p) {
    if (p.error().context().empty()) std::abort();
    return 0;
  }
  const Bytes again = encode_evidence_package(*p);
  Result<EvidencePackage> q = parse_evidence_package(again);
  if (!q || encode_evidence_package(*q) != again) std::abort();

  EvidenceTrust trust;
  if (auto id = attestation::NodeIdentity::from_json(p->node_identity_json)) trust.ak = id->ak_public;
  const EvidenceReport rep = verify_evidence_package(*p, trust);
  if (rep.checkpoints_verified > rep.checkpoints || rep.checkpoints > rep.records) std::abort();
  if (rep.certifications_verified > p->agent_certifications.size()) std::abort();
  (void)rep.to_json();
  return 0;
}
