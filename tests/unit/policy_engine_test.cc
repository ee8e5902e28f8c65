// The decision engine against bundles built in code (FlatBuffers object API).
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <random>
#include <thread>

#include "policy/engine.h"
#include "policy/match.h"

using namespace outpost;
using namespace outpost::policy;
namespace fbt = outpost::fb;

namespace {

std::unique_ptr<fbt::DestinationT> dest(std::string host, std::vector<uint16_t> ports = {}, std::string cidr = "") {
  auto d = std::make_unique<fbt::DestinationT>();
  d->host = std::move(host);
  d->cidr = std::move(cidr);
  d->ports = std::move(ports);
  return d;
}

struct BundleBuilder {
  fbt::BundleT b;
  BundleBuilder() { b.version = 42; }
  BundleBuilder& tool(std::string server, std::string name, uint8_t sens = 0,
                      std::vector<std::unique_ptr<fbt::DestinationT>> dests = {}) {
    auto t = std::make_unique<fbt::ToolT>();
    t->server = std::move(server);
    t->name = std::move(name);
    t->output_sensitivity = sens;
    t->destinations = std::move(dests);
    b.tools.push_back(std::move(t));
    return *this;
  }
  BundleBuilder& agent(std::string name, std::vector<std::string> tools, uint8_t clearance = 0, uint32_t ttl = 300) {
    auto a = std::make_unique<fbt::AgentT>();
    a->name = std::move(name);
    a->tools = std::move(tools);
    a->clearance = clearance;
    a->credential_ttl = ttl;
    b.agents.push_back(std::move(a));
    return *this;
  }
  fbt::RuleT& rule(std::string id, bool allow, std::vector<std::string> agents, std::vector<std::string> tools) {
    auto r = std::make_unique<fbt::RuleT>();
    r->id = std::move(id);
    r->effect = allow ? fbt::Effect::Allow : fbt::Effect::Deny;
    r->agents = std::move(agents);
    r->tools = std::move(tools);
    b.rules.push_back(std::move(r));
    return *b.rules.back();
  }
  fbt::FlowRuleT& flow(std::string id, fbt::FlowKind kind) {
    auto f = std::make_unique<fbt::FlowRuleT>();
    f->id = std::move(id);
    f->kind = kind;
    b.flow_rules.push_back(std::move(f));
    return *b.flow_rules.back();
  }
  std::shared_ptr<const Engine> build() {
    flatbuffers::FlatBufferBuilder fbb;
    fbb.Finish(fbt::Bundle::Pack(fbb, &b));
    buf.assign(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
    auto p = Engine::build(buf);
    INFO((p ? std::string() : p.error().message()));
    REQUIRE(p.has_value());
    return *p;
  }
  std::vector<uint8_t> buf;
};

std::unique_ptr<fbt::ArgConstraintT> arg(std::string pointer, fbt::ArgOp op, std::vector<std::string> values = {}) {
  auto a = std::make_unique<fbt::ArgConstraintT>();
  a->pointer = std::move(pointer);
  a->op = op;
  a->values = std::move(values);
  return a;
}

Request call(std::string_view agent, std::string_view server, std::string_view tool,
             const boost::json::value* args = nullptr) {
  Request r;
  r.agent = agent;
  r.server = server;
  r.tool = tool;
  r.args = args;
  r.time = 1795000000;  // 2026-11-18, a Wednesday
  return r;
}

// A workspace policy used by several tests.
BundleBuilder workspace() {
  BundleBuilder b;
  b.tool("fs", "read_file", 1).tool("fs", "write_file").tool("fetch", "fetch").tool("shell", "run");
  b.agent("coder", {"fs/*", "fetch/*"}, 2).agent("maint", {"fs/read_file", "shell/*"});
  auto& read = b.rule("read-ws", true, {"coder"}, {"fs/read_file"});
  read.args.push_back(arg("/path", fbt::ArgOp::PathPrefix, {"/srv/ws"}));
  read.reason = "coders read their workspace";
  auto& hooks = b.rule("no-hooks", false, {"*"}, {"fs/*"});
  hooks.args.push_back(arg("/path", fbt::ArgOp::PathPrefix, {"/srv/ws/.git/hooks"}));
  return b;
}

}  // namespace

TEST_CASE("agents and tools outside the bundle or the grant are denied", "[policy-engine]") {
  BundleBuilder b = workspace();
  b.b.revoked_agents = {"maint"};
  auto p = b.build();
  auto args = boost::json::parse(R"({"path":"/srv/ws/a.txt"})");
  CHECK(p->decide(call("coder", "fs", "read_file", &args)).allow);
  CHECK(p->decide(call("nobody", "fs", "read_file", &args)).verdict == Verdict::unknown_agent);
  CHECK(p->decide(call("coder", "fs", "delete", &args)).verdict == Verdict::unknown_tool);
  CHECK(p->decide(call("coder", "shell", "run", &args)).verdict == Verdict::tool_not_granted);
  CHECK(p->decide(call("maint", "fs", "read_file", &args)).verdict == Verdict::agent_revoked);
  CHECK(p->decide(call("coder", "fs", "read_file", &args), Mode::deny_all).verdict == Verdict::bundle_not_in_force);
}

TEST_CASE("deny overrides allow and the default is deny", "[policy-engine]") {
  auto p = workspace().build();
  auto ok = boost::json::parse(R"({"path":"/srv/ws/src/main.cc"})");
  auto hook = boost::json::parse(R"({"path":"/srv/ws/.git/hooks/pre-commit"})");
  auto outside = boost::json::parse(R"({"path":"/etc/shadow"})");
  Decision d = p->decide(call("coder", "fs", "read_file", &ok));
  REQUIRE(d.allow);
  CHECK(p->rule_id(d, d.rules[0]) == "read-ws");
  CHECK(d.credential_ttl == 300);
  CHECK(d.bundle_version == 42);
  CHECK(p->explain(d, call("coder", "fs", "read_file")) == "allowed by rule read-ws (coders read their workspace)");
  d = p->decide(call("coder", "fs", "read_file", &hook));
  CHECK_FALSE(d.allow);
  CHECK(d.verdict == Verdict::denied_by_rule);
  CHECK(p->rule_id(d, d.rules[0]) == "no-hooks");
  d = p->decide(call("coder", "fs", "read_file", &outside));
  CHECK(d.verdict == Verdict::no_rule_allows);
  CHECK_THAT(p->explain(d, call("coder", "fs", "read_file")), Catch::Contains("default deny"));
  CHECK(p->decide(call("coder", "fs", "read_file")).verdict == Verdict::no_rule_allows);  // no arguments at all
}

TEST_CASE("path prefixes cannot be escaped", "[policy-engine]") {
  auto p = workspace().build();
  auto decide = [&](const char* path) {
    boost::json::object o;
    o["path"] = path;
    boost::json::value v(o);
    return p->decide(call("coder", "fs", "read_file", &v)).allow;
  };
  CHECK(decide("/srv/ws/a"));
  CHECK(decide("/srv/ws//a/./b"));
  CHECK(decide("/srv/ws/x/../a"));
  CHECK(decide("/srv/ws/%61"));
  CHECK_FALSE(decide("/srv/ws/../etc/passwd"));
  CHECK_FALSE(decide("/srv/ws/../../etc/passwd"));
  CHECK_FALSE(decide("/srv/ws/%2e%2e/etc/passwd"));
  CHECK_FALSE(decide("/srv/ws/%2E%2E%2Fetc"));
  CHECK_FALSE(decide("/srv/ws/%252e%252e/etc"));  // double encoding fails closed
  CHECK_FALSE(decide("/srv/wsx/a"));
  CHECK_FALSE(decide("srv/ws/a"));
  CHECK_FALSE(decide("/srv/ws/a%00b"));
  CHECK_FALSE(decide("/srv/ws/a%zz"));
  CHECK_FALSE(decide("/srv/ws/.git/hooks/../hooks/x"));  // normalised into the denied prefix
}

TEST_CASE("argument constraints of every kind", "[policy-engine]") {
  BundleBuilder b;
  b.tool("git", "push").agent("coder", {"git/*"});
  auto& r = b.rule("push", true, {"coder"}, {"git/push"});
  r.args.push_back(arg("/branch", fbt::ArgOp::Prefix, {"feature/", "fix/"}));
  r.args.push_back(arg("/remote", fbt::ArgOp::Glob, {"https://*.example.com/*"}));
  r.args.push_back(arg("/ref", fbt::ArgOp::Regex, {"[0-9a-f]{7,40}"}));
  r.args.push_back(arg("/mode", fbt::ArgOp::OneOf, {"fast", "safe", "3"}));
  auto range = arg("/count", fbt::ArgOp::Range);
  range->min = 1;
  range->max = 100;
  r.args.push_back(std::move(range));
  auto len = arg("/message", fbt::ArgOp::MaxLength);
  len->max_length = 10;
  r.args.push_back(std::move(len));
  auto opt = arg("/opts/0", fbt::ArgOp::OneOf, {"--quiet"});
  opt->optional = true;
  r.args.push_back(std::move(opt));
  auto p = b.build();
  const char* good = R"({"branch":"feature/x","remote":"https://git.example.com/r","ref":"abc1234",
                         "mode":"safe","count":5,"message":"short","opts":["--quiet"]})";
  auto check = [&](const std::string& patch_key, boost::json::value patch) {
    auto v = boost::json::parse(good);
    if (!patch_key.empty()) {
      if (patch.is_null()) {
        v.as_object().erase(patch_key);
      } else {
        v.as_object()[patch_key] = patch;
      }
    }
    return p->decide(call("coder", "git", "push", &v)).allow;
  };
  CHECK(check("", nullptr));
  CHECK(check("mode", 3));  // numbers compare as numbers
  CHECK(check("opts", nullptr));  // optional and missing
  CHECK_FALSE(check("branch", "main"));
  CHECK_FALSE(check("remote", "https://evil.com/r"));
  CHECK_FALSE(check("ref", "abc123"));       // too short for the regex
  CHECK_FALSE(check("ref", "xabc1234"));     // full match only
  CHECK_FALSE(check("mode", "yolo"));
  CHECK_FALSE(check("count", 0));
  CHECK_FALSE(check("count", 100.5));
  CHECK_FALSE(check("count", "5"));          // a string is not a number
  CHECK_FALSE(check("message", "far too long message"));
  CHECK_FALSE(check("ref", nullptr));        // required and missing
  CHECK_FALSE(check("opts", boost::json::array{"--force"}));
}

TEST_CASE("destinations by host glob CIDR and port", "[policy-engine]") {
  BundleBuilder b;
  b.tool("fetch", "fetch").agent("coder", {"fetch/fetch"});
  auto& r = b.rule("web", true, {"coder"}, {"fetch/fetch"});
  r.destinations.push_back(dest("*.example.com", {443}));
  r.destinations.push_back(dest("", {}, "10.20.0.0/16"));
  r.destinations.push_back(dest("", {8443}, "2001:db8::/32"));
  auto p = b.build();
  auto at = [&](std::string_view host, uint16_t port) {
    Request q = call("coder", "fetch", "fetch");
    q.host = host;
    q.port = port;
    return p->decide(q).allow;
  };
  CHECK(at("api.example.com", 443));
  CHECK(at("API.Example.COM", 443));
  CHECK_FALSE(at("api.example.com", 80));
  CHECK_FALSE(at("example.com.evil.net", 443));
  CHECK(at("10.20.3.4", 1234));
  CHECK_FALSE(at("10.21.0.1", 1234));
  CHECK(at("2001:db8::1", 8443));
  CHECK(at("[2001:db8::1]", 8443));
  CHECK_FALSE(at("2001:db9::1", 8443));
  CHECK_FALSE(at("", 0));
}

TEST_CASE("sensitivity time windows tasks and rate limits", "[policy-engine]") {
  BundleBuilder b;
  b.tool("db", "query").agent("analyst", {"db/*"}, 1);
  auto& r = b.rule("office-hours", true, {"analyst"}, {"db/query"});
  r.within_clearance = true;
  r.tasks = {"report-*"};
  auto w = std::make_unique<fbt::TimeWindowT>();
  w->days = 0x1f;  // Monday to Friday
  w->start_minute = 8 * 60;
  w->end_minute = 18 * 60;
  r.time_windows.push_back(std::move(w));
  r.rate = std::make_unique<fbt::RateLimitT>();
  r.rate->scope = fbt::RateScope::Task;
  r.rate->count = 3;
  r.rate->window = 60;
  auto p = b.build();
  const int64_t wed_10am = 1795000000 - (1795000000 % 86400) + 10 * 3600;  // a Wednesday, 10:00 UTC
  Request q = call("analyst", "db", "query");
  q.task = "report-q3";
  q.time = wed_10am;
  CHECK(p->decide(q).allow);
  Request secret = q;
  secret.sensitivity = 2;
  CHECK_FALSE(p->decide(secret).allow);
  Request night = q;
  night.time = wed_10am + 12 * 3600;
  CHECK_FALSE(p->decide(night).allow);
  Request saturday = q;
  saturday.time = wed_10am + 3 * 86400;
  CHECK_FALSE(p->decide(saturday).allow);
  Request other_task = q;
  other_task.task = "adhoc";
  CHECK_FALSE(p->decide(other_task).allow);

  RateLimiter rates;
  for (int i = 0; i < 3; ++i) CHECK(p->decide(q, Mode::normal, &rates).allow);
  Decision over = p->decide(q, Mode::normal, &rates);
  CHECK_FALSE(over.allow);
  CHECK(over.rate_limited);
  Request other = q;
  other.task = "report-q4";  // per task: another task has its own budget
  CHECK(p->decide(other, Mode::normal, &rates).allow);
  Request later = q;
  later.time = q.time + 60;  // the next window
  CHECK(p->decide(later, Mode::normal, &rates).allow);
}

TEST_CASE("flow rules see the session", "[policy-engine]") {
  BundleBuilder b;
  std::vector<std::unique_ptr<fbt::DestinationT>> gh;
  gh.push_back(dest("github.com", {443}));
  b.tool("fs", "read_file", 0).tool("vault", "read", 3).tool("fetch", "fetch").tool("git", "push", 0, std::move(gh));
  b.tool("shell", "restart").tool("approvals", "grant").tool("pay", "send");
  b.agent("coder", {"*"}, 3);
  b.rule("all", true, {"*"}, {"*"});
  auto& taint = b.flow("no-exfil", fbt::FlowKind::Taint);
  taint.min_sensitivity = 2;
  taint.trusted.push_back(dest("*.corp.example"));
  auto& approval = b.flow("restart-needs-approval", fbt::FlowKind::RequireApproval);
  approval.tools = {"shell/restart"};
  approval.approval_tool = "approvals/grant";
  auto& spend = b.flow("spend", fbt::FlowKind::WindowLimit);
  spend.tools = {"pay/*"};
  spend.window = 3600;
  spend.max_count = 3;
  spend.max_total = 100;
  spend.total_pointer = "/amount";
  auto p = b.build();

  Request web = call("coder", "fetch", "fetch");
  web.host = "paste.evil.net";
  web.port = 443;
  CHECK(p->decide(web).allow);  // clean session
  std::vector<SessionEvent> history = {{"vault", "read", web.time - 10, 0, nullptr}};
  web.history = history;
  Decision d = p->decide(web);
  CHECK(d.verdict == Verdict::flow_denied);
  CHECK(p->rule_id(d, d.rules[0]) == "no-exfil");
  Request corp = web;
  corp.host = "wiki.corp.example";
  CHECK(p->decide(corp).allow);
  Request push = call("coder", "git", "push");  // no destination on the call: the tool's own count
  push.history = history;
  CHECK(p->decide(push).verdict == Verdict::flow_denied);
  Request local = call("coder", "fs", "read_file");
  local.history = history;
  CHECK(p->decide(local).allow);  // reaches nowhere

  Request restart = call("coder", "shell", "restart");
  CHECK(p->decide(restart).verdict == Verdict::flow_denied);
  std::vector<SessionEvent> approved = {{"approvals", "grant", restart.time - 5, 0, nullptr}};
  restart.history = approved;
  CHECK(p->decide(restart).allow);

  auto a40 = boost::json::parse(R"({"amount":40})");
  auto a10 = boost::json::parse(R"({"amount":10})");
  Request pay = call("coder", "pay", "send", &a40);
  std::vector<SessionEvent> spent = {{"pay", "send", pay.time - 100, 0, &a40}};
  pay.history = spent;
  CHECK(p->decide(pay).allow);  // 80 of 100
  spent.push_back({"pay", "send", pay.time - 50, 0, &a40});
  pay.history = spent;
  CHECK(p->decide(pay).verdict == Verdict::flow_denied);  // 120
  Request small = pay;
  small.args = &a10;
  small.history = spent;
  CHECK(p->decide(small).allow);  // third call in the hour, 90 of 100
  auto a1 = boost::json::parse(R"({"amount":1})");
  spent.push_back({"pay", "send", pay.time - 20, 0, &a1});
  small.history = spent;
  CHECK(p->decide(small).verdict == Verdict::flow_denied);  // fourth call in the hour, though only 91
  std::vector<SessionEvent> old = {{"pay", "send", pay.time - 4000, 0, &a40}, {"pay", "send", pay.time - 3700, 0, &a40}};
  pay.history = old;
  CHECK(p->decide(pay).allow);  // outside the window
}

TEST_CASE("shadow rules are reported and not enforced and the safe set applies after expiry", "[policy-engine]") {
  BundleBuilder b = workspace();
  auto& sh = b.rule("shadow-deny-reads", false, {"coder"}, {"fs/read_file"});
  sh.shadow = true;
  auto safe = std::make_unique<fbt::RuleT>();
  safe->id = "safe-read";
  safe->effect = fbt::Effect::Allow;
  safe->agents = {"coder"};
  safe->tools = {"fs/read_file"};
  b.b.safe_set.push_back(std::move(safe));
  auto p = b.build();
  auto args = boost::json::parse(R"({"path":"/srv/ws/a"})");
  Decision d = p->decide(call("coder", "fs", "read_file", &args));
  CHECK(d.allow);
  REQUIRE(d.shadow_count == 1);
  CHECK(p->rule_id(d, d.shadow[0]) == "shadow-deny-reads");
  CHECK_THAT(p->explain(d, call("coder", "fs", "read_file")), Catch::Contains("shadow rule shadow-deny-reads"));
  auto anywhere = boost::json::parse(R"({"path":"/etc/hosts"})");
  CHECK(p->decide(call("coder", "fs", "read_file", &anywhere), Mode::safe_set).allow);
  CHECK_FALSE(p->decide(call("coder", "fs", "write_file", &anywhere), Mode::safe_set).allow);
}

TEST_CASE("the index decides exactly as a linear scan over random bundles and requests", "[policy-engine]") {
  std::mt19937 rng(20261128);
  auto pick = [&](auto& v) -> auto& { return v[rng() % v.size()]; };
  std::vector<std::string> servers = {"fs", "git", "web", "db"};
  std::vector<std::string> names = {"read", "write", "list", "push", "get"};
  std::vector<std::string> agents = {"a1", "a2", "a3", "b1", "b2"};
  std::vector<std::string> agent_globs = {"a1", "a*", "b?", "*", "b2", "a3"};
  std::vector<std::string> tool_globs = {"fs/*", "*/read", "git/push", "*", "web/get", "db/*", "*/w*"};
  std::vector<std::string> paths = {"/srv/a", "/srv/a/../b", "/srv/b/x", "/etc/passwd", "/srv/a/%2e%2e/c", "rel"};
  for (int round = 0; round < 30; ++round) {
    BundleBuilder b;
    for (const auto& s : servers) {
      for (const auto& n : names) b.tool(s, n, static_cast<uint8_t>(rng() % 4));
    }
    for (const auto& a : agents) {
      std::vector<std::string> grant;
      for (int i = 0; i < 3; ++i) grant.push_back(pick(tool_globs));
      b.agent(a, grant, static_cast<uint8_t>(rng() % 4));
    }
    int nrules = 5 + static_cast<int>(rng() % 40);
    for (int i = 0; i < nrules; ++i) {
      auto& r = b.rule("r" + std::to_string(i), rng() % 3 != 0, {pick(agent_globs)}, {pick(tool_globs)});
      r.shadow = rng() % 10 == 0;
      if (rng() % 2) r.args.push_back(arg("/path", fbt::ArgOp::PathPrefix, {rng() % 2 ? "/srv/a" : "/srv"}));
      if (rng() % 4 == 0) r.within_clearance = true;
      if (rng() % 4 == 0) r.max_sensitivity = static_cast<uint8_t>(rng() % 4);
      if (rng() % 5 == 0) r.destinations.push_back(dest(rng() % 2 ? "*.example.com" : "db.internal"));
    }
    if (rng() % 2) {
      auto& f = b.flow("taint", fbt::FlowKind::Taint);
      f.min_sensitivity = 2;
      f.trusted.push_back(dest("*.example.com"));
    }
    auto p = b.build();
    for (int i = 0; i < 400; ++i) {
      boost::json::object o;
      o["path"] = pick(paths);
      boost::json::value args(o);
      std::string_view agent = rng() % 10 ? std::string_view(pick(agents)) : std::string_view("zz");
      Request q = call(agent, pick(servers), pick(names), &args);
      q.sensitivity = static_cast<uint8_t>(rng() % 4);
      if (rng() % 2) q.host = rng() % 2 ? "api.example.com" : "db.internal";
      std::vector<SessionEvent> hist;
      if (rng() % 2) hist.push_back({pick(servers), pick(names), q.time - 1, static_cast<uint8_t>(rng() % 4), nullptr});
      q.history = hist;
      Decision x = p->decide(q);
      Decision y = p->decide_unindexed(q);
      INFO("round " << round << " request " << i << ": " << p->explain(x, q) << " | " << p->explain(y, q));
      REQUIRE(x.allow == y.allow);
      REQUIRE(x.verdict == y.verdict);
      REQUIRE(x.rule_count == y.rule_count);
      REQUIRE(std::equal(x.rules.begin(), x.rules.begin() + x.rule_count, y.rules.begin()));
      REQUIRE(x.shadow_count == y.shadow_count);
    }
  }
}

TEST_CASE("a new policy swaps in while readers keep deciding", "[policy-engine]") {
  PolicySlot slot;
  slot.set(workspace().build());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> decisions{0}, wrong{0};
  auto args = boost::json::parse(R"({"path":"/srv/ws/a"})");
  std::thread reader([&] {  // Catch2 assertions are not thread-safe: count, check after join
    while (!stop) {
      auto p = slot.get();
      Decision d = p->decide(call("coder", "fs", "read_file", &args));
      if (!d.allow || (d.bundle_version != 42 && d.bundle_version != 43)) ++wrong;
      ++decisions;
    }
  });
  for (int i = 0; i < 50 || decisions < 1000; ++i) {
    BundleBuilder b = workspace();
    b.b.version = 42 + static_cast<uint64_t>(i % 2);
    slot.set(b.build());
    std::this_thread::yield();
  }
  stop = true;
  reader.join();
  CHECK(decisions >= 1000);
  CHECK(wrong == 0);
}

TEST_CASE("glob and CIDR primitives", "[policy-engine]") {
  CHECK(glob_match("*", ""));
  CHECK(glob_match("fs/*", "fs/read_file"));
  CHECK(glob_match("*.example.com", "a.b.example.com"));
  CHECK_FALSE(glob_match("*.example.com", "example.com"));
  CHECK(glob_match("a?c", "abc"));
  CHECK_FALSE(glob_match("a?c", "ac"));
  CHECK(glob_match("*a*b*c*", "xxaxxbxxcxx"));
  CHECK_FALSE(glob_valid(""));
  CHECK_FALSE(glob_valid("a\tb"));
  auto net = parse_cidr("192.168.0.0/16");
  REQUIRE(net.has_value());
  CHECK(cidr_contains(*net, "192.168.44.1"));
  CHECK_FALSE(cidr_contains(*net, "192.169.0.1"));
  CHECK_FALSE(cidr_contains(*net, "host.example"));
  CHECK_FALSE(parse_cidr("10.0.0.0/33").has_value());
  CHECK_FALSE(parse_cidr("10.0.0/8").has_value());
  CHECK(cidr_covers(*parse_cidr("10.0.0.0/8"), *parse_cidr("10.1.0.0/16")));
  CHECK_FALSE(cidr_covers(*parse_cidr("10.1.0.0/16"), *parse_cidr("10.0.0.0/8")));
}
