#include "sync/sync_client.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>
#include <deque>
#include <random>

#include "outpost/base/errors.h"
#include "outpost/base/files.h"
#include "outpost/base/log.h"
#include "outpost/attestation/quote_files.h"
#include "outpost/offline_cache/audit_frames.h"

namespace outpost::sync {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Result<uint64_t> acked_of(const HubResponse& r) {
  boost::system::error_code ec;
  json::value v = json::parse(r.body, ec);
  if (ec || !v.is_object() || !v.as_object().contains("acked_seq") || !v.as_object().at("acked_seq").is_number()) {
    return fail(errc::corrupt, "hub reply without acked_seq: " + r.body.substr(0, 200));
  }
  uint64_t acked = v.as_object().at("acked_seq").to_number<uint64_t>(ec);
  if (ec) return fail(errc::corrupt, "hub reply with an acked_seq that is not a sequence number: " + r.body.substr(0, 200));
  return acked;
}

// A string field of an enrolment answer ("fleet", "node_token"; nothing from a hub that sends
// none).
std::optional<std::string> answer_field(const HubResponse& r, const char* name) {
  boost::system::error_code ec;
  json::value v = json::parse(r.body, ec);
  if (ec || !v.is_object()) return std::nullopt;
  const json::value* f = v.as_object().if_contains(name);
  if (!f || !f->is_string()) return std::nullopt;
  return std::string(f->as_string());
}

}  // namespace

struct SyncClient::Impl {
  SyncSettings settings;
  std::string node_json, node_id;
  offline_cache::AuditLog& log;
  SyncHooks hooks;
  asio::io_context io{1};
  std::shared_ptr<tls::Context> tls;
  asio::steady_timer wake{io};
  std::thread thread;
  std::mt19937_64 rng{std::random_device{}()};

  mutable std::mutex mu;
  SyncStatus st;
  offline_cache::FrameReaderCache frames;  // the segment being uploaded, read and hashed once
  Digest evidence_sent{};
  bool evidence_sent_once = false;
  std::chrono::steady_clock::time_point last_checkpoint_request{};

  Impl(SyncSettings s, std::string nj, std::string id, offline_cache::AuditLog& l, SyncHooks h)
      : settings(std::move(s)), node_json(std::move(nj)), node_id(std::move(id)), log(l), hooks(std::move(h)) {}

  template <class F>
  void update(F&& f) {
    std::lock_guard lock(mu);
    f(st);
  }
  // The hub named the node's fleet (over the channel its pin or CA authenticated): a change is
  // handed to outpostd, which keeps it and checks later installs against it.
  // False when it could not be kept: nothing may then be installed against the old fleet.
  bool learn_fleet(const std::optional<std::string>& fleet) {
    if (!fleet || !hooks.fleet || !hooks.set_fleet || *fleet == hooks.fleet()) return true;
    if (auto r = hooks.set_fleet(*fleet); !r) {
      log::warn("sync.fleet", {{"fleet", *fleet}, {"error", r.error().message()}});
      return false;
    }
    update([&](SyncStatus& s) { s.fleet = *fleet; });
    return true;
  }
  // The node token (guarded by mu): empty until the hub handed one out.
  std::string node_token;
  std::string token() const {
    std::lock_guard lock(mu);
    return node_token;
  }
  void keep_token(const std::string& t) {
    {
      std::lock_guard lock(mu);
      node_token = t;
    }
    if (settings.token_file.empty()) return;
    auto w = t.empty() ? Result<void>(ok()) : write_file_atomic(settings.token_file, t + "\n", 0600);
    if (t.empty()) {
      std::error_code ec;
      std::filesystem::remove(settings.token_file, ec);
    }
    if (!w) log::warn("sync.node_token", {{"file", settings.token_file.string()}, {"error", w.error().message()}});
  }
  uint64_t acked() const {
    std::lock_guard lock(mu);
    return st.acked_seq;
  }

  // Full jitter over the upper half: a fleet that lost its hub at once does not return at once.
  std::chrono::milliseconds jittered(std::chrono::milliseconds backoff) {
    std::uniform_int_distribution<int64_t> d(backoff.count() / 2, backoff.count());
    return std::chrono::milliseconds(d(rng));
  }

  asio::awaitable<void> sleep(std::chrono::steady_clock::duration d, asio::steady_timer* timer = nullptr) {
    asio::steady_timer local(io);
    asio::steady_timer& t = timer ? *timer : local;
    t.expires_after(d);
    co_await t.async_wait(kNoThrow);
  }

  void maybe_request_checkpoint() {
    auto now = std::chrono::steady_clock::now();
    if (now - last_checkpoint_request < settings.checkpoint_min_interval) return;
    last_checkpoint_request = now;
    if (hooks.request_checkpoint) hooks.request_checkpoint();
  }

  struct Batch {
    std::string body;
    size_t anchored_bytes = 0;
    size_t records = 0;     // through the last checkpoint; 0: none yet
    uint64_t last_seq = 0;
  };
  Result<Batch> read_batch(uint64_t from, uint64_t durable);
  // The answer to the hub's activation challenge in a 202 reply: "<expires_ms>:<secret hex>".
  Result<std::string> open_activation(const HubResponse& r);
  // A quote over a fresh hub nonce, sent to the hub. Only a transport failure is an error: a
  // refusal is logged and the uploads go on.
  asio::awaitable<Result<void>> attest(HubConnection& c);
  std::chrono::steady_clock::time_point last_attested{};
  asio::awaitable<Result<bool>> upload_round(HubConnection& c);
  asio::awaitable<void> upload_loop();
  asio::awaitable<void> bundle_loop();
};

// One round: enrol if needed, send the evidence state if it changed, upload one batch.
// Returns whether the hub has caught up with what is durable here.
asio::awaitable<Result<bool>> SyncClient::Impl::upload_round(HubConnection& c) {
  bool enrolled;
  {
    std::lock_guard lock(mu);
    enrolled = st.enrolled;
  }
  if (!enrolled) {
    // Without a node token the node asks for one: the hub then challenges even a known node.
    const bool want_token = token().empty();
    HubRequest req{"POST", "/v1/enroll", node_json};  // a named local: it lives across the suspension
    if (want_token) req.headers["X-Outpost-Want-Token"] = "1";
    auto r = co_await c.request(std::move(req));
    if (!r) co_return fail(r.error());
    if (r->status == 202) {
      // A new node: the hub made a credential for this TPM's EK and AK; opening it proves both
      // are in the same TPM, and the secret it held enrols the node.
      auto answer = open_activation(*r);
      if (!answer) co_return fail(answer.error());
      HubRequest again{"POST", "/v1/enroll", node_json};
      again.headers["X-Outpost-Activation"] = *answer;
      if (want_token) again.headers["X-Outpost-Want-Token"] = "1";
      r = co_await c.request(std::move(again));
      if (!r) co_return fail(r.error());
      if (r->status == 200) log::info("sync.activated", {{"hub", settings.hub.url()}});
    }
    if (r->status != 200) co_return fail(hub_error(*r, "enrol"));
    auto a = acked_of(*r);
    if (!a) co_return fail(a.error());
    update([&](SyncStatus& s) {
      s.enrolled = true;
      s.acked_seq = *a;
    });
    if (auto t = answer_field(*r, "node_token"); t && !t->empty()) keep_token(*t);
    learn_fleet(answer_field(*r, "fleet"));
    log::info("sync.enrolled", {{"hub", settings.hub.url()}, {"acked_seq", std::to_string(*a)}});
  }
  if (hooks.quote && (last_attested == std::chrono::steady_clock::time_point{} ||
                      std::chrono::steady_clock::now() - last_attested >= settings.attest_interval)) {
    auto a = co_await attest(c);
    if (!a) co_return fail(a.error());
  }
  if (hooks.evidence_state) {
    auto pkg = hooks.evidence_state();
    if (!pkg) {
      log::warn("sync.evidence", {{"error", pkg.error().message()}});
    } else if (Digest d = sha256(*pkg); !evidence_sent_once || d != evidence_sent) {
      HubRequest req{"PUT", "/v1/nodes/" + node_id + "/evidence", std::string(as_chars(*pkg)), "application/vnd.outpost.evidence"};
      auto r = co_await c.request(std::move(req));
      if (!r) co_return fail(r.error());
      if (r->status == 404) {
        update([](SyncStatus& s) { s.enrolled = false; });
        co_return fail(hub_error(*r, "evidence state"));
      }
      // The records matter more than the state: a refused state is reported and the uploads go
      // on. A refusal (4xx) is not retried until the state changes; a hub error (5xx) is.
      if (r->status != 200) log::warn("sync.evidence", {{"error", hub_error(*r, "evidence state").message()}});
      if (r->status < 500) {
        evidence_sent = d;
        evidence_sent_once = true;
      }
    }
  }

  // Up to two uploads in flight on the connection: the next batch is read and sent while the
  // hub verifies and stores the one before. A failure drops both; the next round resumes from
  // what the hub acknowledged (it refuses a gap, so nothing is stored out of order).
  struct InFlight {
    uint64_t last_seq;
    size_t records, bytes;
    std::chrono::steady_clock::time_point sent;
  };
  std::deque<InFlight> inflight;
  uint64_t next = acked() + 1;
  bool drained = false;  // nothing more to send now (caught up, or the tail waits for a checkpoint)
  for (;;) {
    while (!drained && inflight.size() < 2) {
      const uint64_t durable = log.durable_seq();
      update([&](SyncStatus& s) { s.durable_seq = durable; });
      if (next > durable) {
        drained = true;
        break;
      }
      auto batch = read_batch(next, durable);
      if (!batch) co_return fail(batch.error());
      if (batch->records == 0) {
        drained = true;
        break;
      }
      HubRequest req{"POST", "/v1/nodes/" + node_id + "/records", std::move(batch->body), "application/vnd.outpost.audit-frames"};
      req.timeout = 120s;
      // How far the log is durable here: the hub's console shows the backlog from it.
      req.headers["X-Outpost-Durable-Seq"] = std::to_string(durable);
      const size_t bytes = req.body.size();
      auto sent = co_await c.send(req);
      if (!sent) co_return fail(sent.error());
      inflight.push_back({batch->last_seq, batch->records, bytes, std::chrono::steady_clock::now()});
      next = batch->last_seq + 1;
    }
    if (inflight.empty()) co_return true;
    auto r = co_await c.receive(120s);
    if (!r) co_return fail(r.error());
    const InFlight done = inflight.front();
    inflight.pop_front();
    if (r->status == 404) update([](SyncStatus& s) { s.enrolled = false; });
    if (r->status != 200) {
      c.close();
      co_return fail(hub_error(*r, "upload through seq " + std::to_string(done.last_seq)));
    }
    auto a = acked_of(*r);
    if (!a) co_return fail(a.error());
    update([&](SyncStatus& s) {
      s.acked_seq = *a;
      s.uploaded_records += done.records;
      s.uploaded_bytes += done.bytes;
    });
    // Never release past what this upload carried, whatever the hub says it holds.
    auto released = log.release_acknowledged(std::min(*a, done.last_seq));
    if (!released) log::warn("sync.release", {{"error", released.error().message()}});
    if (settings.bandwidth_bytes_per_s > 0) {
      const auto budget = std::chrono::microseconds(done.bytes * 1000000 / settings.bandwidth_bytes_per_s);
      const auto spent = std::chrono::steady_clock::now() - done.sent;
      if (budget > spent) co_await sleep(budget - spent);
    }
  }
}

Result<std::string> SyncClient::Impl::open_activation(const HubResponse& r) {
  if (!hooks.activate_credential) return fail(errc::unsupported, "the hub asks for credential activation; this client has no TPM to answer");
  boost::system::error_code ec;
  json::value v = json::parse(r.body, ec);
  const json::object* a = nullptr;
  if (!ec && v.is_object() && v.as_object().contains("activation") && v.as_object().at("activation").is_object()) {
    a = &v.as_object().at("activation").as_object();
  }
  auto field = [&](const char* k) -> std::string {
    return a && a->contains(k) && a->at(k).is_string() ? std::string(a->at(k).as_string()) : std::string();
  };
  auto blob = hex_decode(field("credential_blob"));
  auto secret = hex_decode(field("encrypted_secret"));
  if (!a || !blob || !secret || !a->contains("expires_ms") || !a->at("expires_ms").is_int64()) {
    return fail(errc::corrupt, "hub activation challenge malformed: " + r.body.substr(0, 200));
  }
  attestation::CredentialChallenge challenge{std::move(*blob), std::move(*secret)};
  OUTPOST_TRY(Bytes opened, hooks.activate_credential(challenge));
  std::string answer = std::to_string(a->at("expires_ms").as_int64()) + ":" + hex_encode(opened);
  if (!opened.empty()) explicit_bzero(opened.data(), opened.size());
  return answer;
}

asio::awaitable<Result<void>> SyncClient::Impl::attest(HubConnection& c) {
  HubRequest ask{"GET", "/v1/nodes/" + node_id + "/nonce"};
  auto r = co_await c.request(std::move(ask));
  if (!r) co_return fail(r.error());
  last_attested = std::chrono::steady_clock::now();  // tried: not again before the interval, whatever the outcome
  if (r->status == 404) {
    update([](SyncStatus& s) { s.enrolled = false; });
    co_return fail(hub_error(*r, "nonce"));
  }
  boost::system::error_code ec;
  json::value v = json::parse(r->body, ec);
  Result<Bytes> nonce = fail(errc::corrupt, "hub reply without a nonce: " + r->body.substr(0, 200));
  if (r->status == 200 && !ec && v.is_object() && v.as_object().contains("nonce") && v.as_object().at("nonce").is_string()) {
    nonce = hex_decode(v.as_object().at("nonce").as_string());
  }
  if (r->status != 200 || !nonce) {
    log::warn("sync.attest", {{"error", r->status != 200 ? hub_error(*r, "nonce").message() : nonce.error().message()}});
    co_return ok();
  }
  auto q = hooks.quote(*nonce);
  if (!q) {
    log::warn("sync.attest", {{"error", q.error().message()}});
    co_return ok();
  }
  json::object body{{"nonce", hex_encode(*nonce)},
                    {"attest", hex_encode(q->signed_attest.attest)},
                    {"signature", hex_encode(q->signed_attest.signature)},
                    {"pcrs", hex_encode(attestation::encode_pcrs_tpm2tools(q->pcrs))}};
  HubRequest send{"POST", "/v1/nodes/" + node_id + "/attestation", json::serialize(body)};
  auto a = co_await c.request(std::move(send));
  if (!a) co_return fail(a.error());
  if (a->status != 200) {
    log::warn("sync.attest", {{"error", hub_error(*a, "attestation").message()}});
    co_return ok();
  }
  update([](SyncStatus& s) { s.last_attested_ms = now_ms(); });
  co_return ok();
}

// The next upload: records from `from`, the configured batch size and then on to the next
// checkpoint (the hub stores through the last one), up to a hard cap. No records when the
// tail has no checkpoint yet (one is asked for).
Result<SyncClient::Impl::Batch> SyncClient::Impl::read_batch(uint64_t from, uint64_t durable) {
  Batch b;
  size_t count = 0;
  const uint64_t hard_cap = std::max<uint64_t>(settings.batch_bytes * 8, 16ull << 20);
  auto read = offline_cache::read_audit_frames(
      log.dir(), from, durable,
      [&](const offline_cache::AuditFrame& f) {
        if (count == 0 && f.seq != from) return false;  // released already: the hub is behind what is kept here
        b.body.append(as_chars(f.frame));
        ++count;
        if (f.kind == offline_cache::RecordKind::checkpoint) {
          b.anchored_bytes = b.body.size();
          b.records = count;
          b.last_seq = f.seq;
        }
        const bool target = count >= settings.batch_records || b.body.size() >= settings.batch_bytes;
        return !(target && b.records > 0) && b.body.size() < hard_cap;
      },
      &frames);
  if (!read) return fail(read.error().wrap("read the audit log"));
  if (count == 0) {
    return fail(errc::not_found, "the hub acknowledged up to seq " + std::to_string(from - 1) +
                                     " but this node no longer has seq " + std::to_string(from));
  }
  if (b.records < count && b.body.size() < hard_cap) maybe_request_checkpoint();
  if (b.records == 0 && b.body.size() >= hard_cap) {
    return fail(errc::invalid_argument, "no checkpoint within " + std::to_string(hard_cap >> 20) + " MiB of records from seq " +
                                            std::to_string(from) + ": the board's checkpoint cadence is too sparse");
  }
  b.body.resize(b.anchored_bytes);
  return b;
}

asio::awaitable<void> SyncClient::Impl::upload_loop() {
  HubConnection c(io.get_executor(), settings.hub, tls);
  auto backoff = settings.backoff_initial;
  for (;;) {
    auto r = co_await upload_round(c);
    if (!r) {
      const auto wait = jittered(backoff);
      const std::string msg = r.error().message();
      bool first;
      {
        std::lock_guard lock(mu);
        first = st.last_error.empty();
        st.last_error = msg;
        ++st.failures;
        st.next_attempt_ms = now_ms() + wait.count();
      }
      if (first) log::warn("sync.failed", {{"hub", settings.hub.url()}, {"error", msg}});
      c.close();
      // Enrol again on the next round: it re-reads what the hub holds, which may have moved
      // (a hub restored from a backup acknowledges less than before).
      update([](SyncStatus& s) { s.enrolled = false; });
      co_await sleep(wait);
      backoff = std::min(backoff * 2, settings.backoff_max);
      continue;
    }
    bool recovered;
    {
      std::lock_guard lock(mu);
      recovered = !st.last_error.empty();
      st.last_error.clear();
      st.next_attempt_ms = 0;
      st.last_contact_ms = now_ms();
    }
    if (recovered) log::info("sync.restored", {{"hub", settings.hub.url()}});
    backoff = settings.backoff_initial;
    if (*r) co_await sleep(settings.idle_poll, &wake);
  }
}

asio::awaitable<void> SyncClient::Impl::bundle_loop() {
  HubConnection c(io.get_executor(), settings.hub, tls);
  std::string etag;
  auto backoff = settings.backoff_initial;
  auto next_poll = std::chrono::steady_clock::now();
  for (;;) {
    // At most one poll a second, whatever the hub does with the wait: a hub configured with no
    // long-poll, or a proxy that strips the ETag, must not turn this into a busy loop.
    co_await sleep(next_poll - std::chrono::steady_clock::now());
    next_poll = std::chrono::steady_clock::now() + 1s;
    // With a node token, poll whatever the uploads do: a failing upload must not keep policy
    // from the node. Without one, wait for the enrolment under way (which brings it); a hub
    // that hands out none (older, or activation off) is polled without once enrolled.
    const std::string sent_token = token();
    if (sent_token.empty()) {
      std::lock_guard lock(mu);
      if (!st.enrolled) continue;
    }
    // The hub offers the newest bundle whose scope includes this node; the fleet is the one the
    // node believes it is in, so that a move it missed is answered at once.
    const std::string believed = hooks.fleet ? hooks.fleet() : std::string();
    HubRequest req{"GET", "/v1/bundle?wait=" + std::to_string(settings.bundle_wait.count()) + "&node=" + node_id + "&fleet=" + believed, ""};
    if (!etag.empty()) req.headers["If-None-Match"] = etag;
    if (!sent_token.empty()) req.headers["X-Outpost-Node-Token"] = sent_token;
    req.timeout = settings.bundle_wait + 15s;
    auto r = co_await c.request(std::move(req));
    if (r && r->status == 401) {
      // The hub does not take the token (another hub key, or none yet): enrol again for one,
      // now rather than at the upload loop's next round.
      log::warn("sync.bundle", {{"error", hub_error(*r, "bundle poll").message()}});
      // Only the token this poll carried, if it is still the one kept (the upload loop may
      // have got a new one meanwhile).
      if (!sent_token.empty() && token() == sent_token) {
        keep_token("");
        update([](SyncStatus& s) { s.enrolled = false; });
        wake.cancel();
      }
    }
    if (!r || (r->status != 200 && r->status != 304 && r->status != 404)) {
      if (r) c.close();
      co_await sleep(jittered(backoff));
      backoff = std::min(backoff * 2, settings.backoff_max);
      continue;
    }
    backoff = settings.backoff_initial;
    update([](SyncStatus& s) { s.last_contact_ms = now_ms(); });
    // Before an install: the bundle served is checked against the fleet the hub names with it.
    if (auto f = r->headers.find("x-outpost-fleet"); f != r->headers.end() && f->second != believed) {
      if (!learn_fleet(f->second)) {
        co_await sleep(jittered(backoff));
        backoff = std::min(backoff * 2, settings.backoff_max);
        continue;
      }
      etag.clear();  // what the old fleet's check refused may pass now
    }
    if (r->status == 404) continue;  // none published; the hub held the poll
    if (r->status == 304) continue;
    etag = r->header("etag");
    uint64_t version = 0;
    try {
      version = std::stoull(r->header("x-outpost-bundle-version"));
    } catch (...) {
    }
    if (hooks.bundle_version && version != 0 && version <= hooks.bundle_version()) continue;
    auto installed = hooks.install_bundle ? hooks.install_bundle(Bytes(r->body.begin(), r->body.end()))
                                          : Result<uint64_t>(fail(errc::unsupported, "no installer"));
    if (!installed) {
      log::warn("sync.bundle", {{"version", std::to_string(version)}, {"error", installed.error().message()}});
      continue;  // the ETag is kept: the same bundle is not fetched again until another is published
    }
    update([](SyncStatus& s) { ++s.bundles_installed; });
    log::info("sync.bundle_installed", {{"version", std::to_string(*installed)}});
  }
}

SyncClient::SyncClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SyncClient::~SyncClient() { stop(); }

Result<std::unique_ptr<SyncClient>> SyncClient::start(SyncSettings settings, std::string node_json, std::string node_id,
                                                      offline_cache::AuditLog& log, SyncHooks hooks) {
  if (settings.batch_records == 0 || settings.batch_bytes == 0) {
    return fail(errc::invalid_argument, "hub.batch_records and hub.batch_bytes must be positive");
  }
  OUTPOST_TRY(auto tls, HubConnection::make_tls(settings.hub));
  auto impl = std::make_unique<Impl>(std::move(settings), std::move(node_json), std::move(node_id), log, std::move(hooks));
  impl->tls = std::move(tls);
  impl->st.hub = impl->settings.hub.url();
  impl->st.durable_seq = log.durable_seq();
  if (impl->hooks.fleet) impl->st.fleet = impl->hooks.fleet();
  if (!impl->settings.token_file.empty()) {
    if (auto t = read_text_file(impl->settings.token_file, 4096)) {
      std::string token = *t;
      while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.pop_back();
      impl->node_token = token;
    }
  }
  Impl* m = impl.get();
  asio::co_spawn(m->io, m->upload_loop(), asio::detached);
  asio::co_spawn(m->io, m->bundle_loop(), asio::detached);
  m->thread = std::thread([m] { m->io.run(); });
  return std::unique_ptr<SyncClient>(new SyncClient(std::move(impl)));
}

void SyncClient::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  impl_->io.stop();
  impl_->thread.join();
}

SyncStatus SyncClient::status() const {
  std::lock_guard lock(impl_->mu);
  SyncStatus s = impl_->st;
  s.durable_seq = impl_->log.durable_seq();
  return s;
}

void SyncClient::notify() {
  asio::post(impl_->io, [m = impl_.get()] { m->wake.cancel(); });
}

}  // namespace outpost::sync
