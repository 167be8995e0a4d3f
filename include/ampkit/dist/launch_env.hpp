/// @brief Who am I in a multi-process job: rank, world size, local rank and rank 0's address,
/// read from torchrun's, Slurm's or Open MPI's environment variables, checked for consistency.
///
/// Precedence (the first that applies wins; `AMPKIT_LAUNCHER=torchrun|slurm|mpi|single` forces one):
///   1. torchrun names (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
///      which tools/dist_train.sh sets too. They describe THIS process even when the launcher runs
///      inside a Slurm allocation or an mpirun, whose variables then describe the outer job.
///   2. Open MPI (OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE): mpirun may itself run inside
///      a Slurm allocation, whose SLURM_* variables then describe the allocation, not the ranks.
///   3. A Slurm job step (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, and the first host of
///      the step's node list as rank 0's address. Only inside a step (SLURM_STEP_ID set): an sbatch
///      script itself is one process even when the allocation has many tasks.
///   4. Nothing set: one process, rank 0 of 1.
/// Empty variables count as unset. AMPKIT_DIST_TIMEOUT (seconds, default 300) bounds every wait
/// (rendezvous, communicator set-up, collectives).
#pragma once

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit::dist {

/// Where the rank layout came from.
enum class Launcher { kSingle, kTorchrun, kSlurm, kOpenMpi };

inline constexpr std::string_view launcher_name(Launcher l) {
  switch (l) {
    case Launcher::kTorchrun: return "torchrun variables";
    case Launcher::kSlurm: return "Slurm";
    case Launcher::kOpenMpi: return "Open MPI";
    case Launcher::kSingle: break;
  }
  return "single process";
}

/// The default rendezvous port, torchrun's.
inline constexpr int kDefaultMasterPort = 29500;
/// The default bound on every distributed wait.
inline constexpr std::chrono::seconds kDefaultTimeout{300};

/// "300 s", "1.5 s", "0.25 s": durations in the unit users set AMPKIT_DIST_TIMEOUT in.
inline std::string format_seconds(std::chrono::milliseconds d) {
  const auto ms = d.count();
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
  std::string s = std::to_string(ms / 1000) + "." + std::to_string(1000 + ms % 1000).substr(1);
  while (s.back() == '0') s.pop_back();
  return s + " s";
}

/// This process's place in the job.
struct LaunchEnv {
  Launcher launcher = Launcher::kSingle;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        ///< index among the ranks on this node; also the CUDA device index
  int local_world_size = 1;  ///< ranks on this node
  std::string master_addr = "127.0.0.1";  ///< rank 0's host (name or address)
  int master_port = kDefaultMasterPort;
  /// Port of ampkit's NCCL-id rendezvous on rank 0: MASTER_PORT, or MASTER_PORT + 1 under a real
  /// torchrun (its agent already listens on MASTER_PORT), or AMPKIT_RDZV_PORT.
  int rendezvous_port = kDefaultMasterPort;
  std::chrono::seconds timeout = kDefaultTimeout;

  bool is_main() const { return rank == 0; }
  bool distributed() const { return world_size > 1; }
  /// "rank 1 of 4 (local 1 of 2, Slurm), rank 0 at node01:29500"
  std::string describe() const {
    if (!distributed()) return "single process (rank 0 of 1)";
    return ::ampkit::detail::concat("rank ", rank, " of ", world_size, " (local ", local_rank, " of ", local_world_size,
                          ", ", launcher_name(launcher), "), rank 0 at ", master_addr, ":", master_port);
  }
};

/// Reads one environment variable; std::nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;

namespace detail {

inline std::optional<std::string> lookup(const EnvLookup& env, std::string_view name) {
  auto v = env(name);
  if (v && v->empty()) return std::nullopt;  // `RANK=` is as good as unset
  return v;
}

inline int parse_int(std::string_view name, std::string_view text) {
  int v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  AMPKIT_CHECK(ec == std::errc{} && end == text.data() + text.size(), name, "='", text,
               "' is not an integer");
  return v;
}

inline std::optional<int> get_int(const EnvLookup& env, std::string_view name) {
  auto v = lookup(env, name);
  if (!v) return std::nullopt;
  return parse_int(name, *v);
}

inline int require_int(const EnvLookup& env, std::string_view name, std::string_view why) {
  auto v = get_int(env, name);
  AMPKIT_CHECK(v.has_value(), name, " is not set (", why, ")");
  return *v;
}

/// Largest count in a Slurm tasks-per-node list: "4(x2),2" -> 4.
inline std::optional<int> max_tasks_per_node(std::string_view name, std::string_view list) {
  int best = 0;
  while (!list.empty()) {
    const auto comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    item = item.substr(0, item.find('('));
    best = std::max(best, parse_int(name, item));
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  if (best <= 0) return std::nullopt;
  return best;
}

/// Expand one bracket-free-or-bracketed item, recursively: "a[1-2]b[3,5]" -> a1b3 a1b5 a2b3 a2b5.
inline void expand_host_item(std::string_view whole, std::string prefix, std::string_view rest,
                             std::vector<std::string>& out) {
  const auto open = rest.find('[');
  if (open == std::string_view::npos) {
    AMPKIT_CHECK(rest.find(']') == std::string_view::npos, "hostlist '", whole, "': unmatched ']'");
    out.push_back(prefix + std::string(rest));
    return;
  }
  const auto close = rest.find(']', open);
  AMPKIT_CHECK(close != std::string_view::npos, "hostlist '", whole, "': unmatched '['");
  prefix += rest.substr(0, open);
  std::string_view ranges = rest.substr(open + 1, close - open - 1);
  const std::string_view tail = rest.substr(close + 1);
  AMPKIT_CHECK(!ranges.empty(), "hostlist '", whole, "': empty brackets");
  while (!ranges.empty()) {
    const auto comma = ranges.find(',');
    const std::string_view r = ranges.substr(0, comma);
    ranges = comma == std::string_view::npos ? std::string_view{} : ranges.substr(comma + 1);
    const auto dash = r.find('-');
    const std::string_view lo_s = r.substr(0, dash);
    const std::string_view hi_s = dash == std::string_view::npos ? lo_s : r.substr(dash + 1);
    auto number = [&](std::string_view s) {
      long v = 0;
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      AMPKIT_CHECK(!s.empty() && ec == std::errc{} && end == s.data() + s.size() && v >= 0, "hostlist '",
                   whole, "': '", r, "' is not a number or a range like 01-04");
      return v;
    };
    const long lo = number(lo_s), hi = number(hi_s);
    AMPKIT_CHECK(lo <= hi, "hostlist '", whole, "': range ", r, " runs backwards");
    // Slurm keeps the zero padding of the range's first bound: node[08-10] -> node08 node09 node10.
    const std::size_t width = lo_s.size();
    for (long v = lo; v <= hi; ++v) {
      std::string num = std::to_string(v);
      if (num.size() < width) num.insert(0, width - num.size(), '0');
      expand_host_item(whole, prefix + num, tail, out);
    }
  }
}

}  // namespace detail

/// Expand a Slurm host list ("node[01-04,07],gpu-b[1-2]") into host names, in order.
inline std::vector<std::string> expand_hostlist(std::string_view list) {
  std::vector<std::string> out;
  int depth = 0;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= list.size(); ++i) {
    const char c = i < list.size() ? list[i] : ',';
    if (c == '[') ++depth;
    if (c == ']') --depth;
    AMPKIT_CHECK(depth >= 0 && depth <= 1, "hostlist '", list, "': unbalanced or nested brackets");
    if (c == ',' && depth == 0) {
      const std::string_view item = list.substr(start, i - start);
      if (!item.empty()) detail::expand_host_item(list, {}, item, out);
      start = i + 1;
    }
  }
  AMPKIT_CHECK(depth == 0, "hostlist '", list, "': unmatched '['");
  return out;
}

/// Work out this process's rank layout from `env` (see the precedence at the top of this file).
inline LaunchEnv parse_launch_env(const EnvLookup& env) {
  using detail::get_int;
  using detail::lookup;
  using detail::require_int;
  LaunchEnv e;

  auto forced = lookup(env, "AMPKIT_LAUNCHER");
  auto has = [&](std::string_view n) { return lookup(env, n).has_value(); };
  if (forced) {
    const std::string& f = *forced;
    if (f == "torchrun") e.launcher = Launcher::kTorchrun;
    else if (f == "slurm") e.launcher = Launcher::kSlurm;
    else if (f == "mpi") e.launcher = Launcher::kOpenMpi;
    else if (f == "single") e.launcher = Launcher::kSingle;
    else AMPKIT_FAIL("AMPKIT_LAUNCHER='", f, "': use torchrun, slurm, mpi or single");
  } else if (has("RANK") || has("WORLD_SIZE")) {
    e.launcher = Launcher::kTorchrun;
  } else if (has("OMPI_COMM_WORLD_SIZE") || has("OMPI_COMM_WORLD_RANK")) {
    e.launcher = Launcher::kOpenMpi;
  } else if (has("SLURM_PROCID") && (has("SLURM_STEP_ID") || has("SLURM_STEPID"))) {
    e.launcher = Launcher::kSlurm;
  }

  auto master_port = [&] { return get_int(env, "MASTER_PORT").value_or(kDefaultMasterPort); };
  bool addr_required = false;
  switch (e.launcher) {
    case Launcher::kSingle: break;
    case Launcher::kTorchrun: {
      constexpr std::string_view why = "torchrun and tools/dist_train.sh set RANK, WORLD_SIZE, LOCAL_RANK, "
                                       "MASTER_ADDR and MASTER_PORT; set all of them";
      e.rank = require_int(env, "RANK", why);
      e.world_size = require_int(env, "WORLD_SIZE", why);
      // Without the node-local variables, assume one node: that is what a hand launch usually is.
      e.local_world_size = get_int(env, "LOCAL_WORLD_SIZE").value_or(e.world_size);
      e.local_rank = get_int(env, "LOCAL_RANK").value_or(e.local_world_size > 0 ? e.rank % e.local_world_size : 0);
      e.master_port = master_port();
      addr_required = true;
      break;
    }
    case Launcher::kOpenMpi: {
      constexpr std::string_view why = "mpirun sets it for every rank";
      e.rank = require_int(env, "OMPI_COMM_WORLD_RANK", why);
      e.world_size = require_int(env, "OMPI_COMM_WORLD_SIZE", why);
      e.local_rank = get_int(env, "OMPI_COMM_WORLD_LOCAL_RANK").value_or(e.rank);
      e.local_world_size = get_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE").value_or(e.world_size);
      e.master_port = master_port();
      // All ranks on one node: rank 0 is on this host. Across nodes nothing says where rank 0 is.
      addr_required = e.local_world_size != e.world_size;
      break;
    }
    case Launcher::kSlurm: {
      constexpr std::string_view why = "srun sets it in every task of a job step";
      e.rank = require_int(env, "SLURM_PROCID", why);
      auto ntasks = get_int(env, "SLURM_NTASKS");
      if (!ntasks) ntasks = get_int(env, "SLURM_NPROCS");
      AMPKIT_CHECK(ntasks.has_value(), "SLURM_NTASKS is not set (", why, ")");
      e.world_size = *ntasks;
      e.local_rank = require_int(env, "SLURM_LOCALID", why);
      std::optional<int> per_node = get_int(env, "SLURM_NTASKS_PER_NODE");
      for (std::string_view n : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"})
        if (auto v = lookup(env, n); !per_node && v) per_node = detail::max_tasks_per_node(n, *v);
      e.local_world_size = std::min(per_node.value_or(e.world_size), e.world_size);
      e.master_port = master_port();
      if (!has("MASTER_ADDR")) {
        // Task 0 always runs on the first node of the step, whatever the distribution.
        for (std::string_view n : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
          if (auto v = lookup(env, n)) {
            const auto hosts = expand_hostlist(*v);
            AMPKIT_CHECK(!hosts.empty(), n, "='", *v, "' names no host");
            e.master_addr = hosts.front();
            break;
          }
        }
      }
      addr_required = false;
      break;
    }
  }
  if (auto a = lookup(env, "MASTER_ADDR")) e.master_addr = *a;

  const std::string_view src = launcher_name(e.launcher);
  AMPKIT_CHECK(e.world_size >= 1, "world size is ", e.world_size, " (from ", src, "): it must be at least 1");
  AMPKIT_CHECK(e.rank >= 0 && e.rank < e.world_size, "rank ", e.rank, " is outside world size ", e.world_size,
               " (from ", src, "): ranks run from 0 to ", e.world_size - 1);
  AMPKIT_CHECK(e.local_world_size >= 1 && e.local_world_size <= e.world_size, "local world size ",
               e.local_world_size, " (from ", src, ") must be between 1 and the world size ", e.world_size);
  AMPKIT_CHECK(e.local_rank >= 0 && e.local_rank < e.local_world_size, "local rank ", e.local_rank,
               " is outside the local world size ", e.local_world_size, " (from ", src, ")");
  AMPKIT_CHECK(!(addr_required && e.distributed() && !has("MASTER_ADDR")), "world size is ", e.world_size,
               " (from ", src, ") but MASTER_ADDR is not set: set it to rank 0's host name or address "
               "(127.0.0.1 when every rank runs on this machine) and MASTER_PORT to a free port");
  AMPKIT_CHECK(e.master_port > 0 && e.master_port < 65536, "MASTER_PORT=", e.master_port,
               " is not a TCP port (1-65535)");

  e.rendezvous_port = e.master_port + (has("TORCHELASTIC_RUN_ID") ? 1 : 0);
  if (auto p = get_int(env, "AMPKIT_RDZV_PORT")) e.rendezvous_port = *p;
  AMPKIT_CHECK(e.rendezvous_port > 0 && e.rendezvous_port < 65536, "rendezvous port ", e.rendezvous_port,
               " (MASTER_PORT or AMPKIT_RDZV_PORT) is not a TCP port (1-65535)");

  if (auto t = get_int(env, "AMPKIT_DIST_TIMEOUT")) {
    AMPKIT_CHECK(*t > 0, "AMPKIT_DIST_TIMEOUT=", *t, ": the timeout is in seconds and must be positive");
    e.timeout = std::chrono::seconds(*t);
  }
  return e;
}

/// parse_launch_env over this process's environment.
inline LaunchEnv launch_env_from_process() {
  return parse_launch_env([](std::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  });
}

/// The GPU a rank uses is its LOCAL_RANK among the visible devices; say clearly when there are
/// fewer devices than ranks on this node. `visible` is CUDA_VISIBLE_DEVICES's value, if any.
inline void check_local_device(const LaunchEnv& e, int n_visible_devices,
                               std::optional<std::string> visible = std::nullopt) {
  AMPKIT_CHECK(e.local_rank < n_visible_devices, "rank ", e.rank, ": local rank ", e.local_rank,
               " needs GPU ", e.local_rank, " but only ", n_visible_devices, " GPU(s) are visible",
               visible ? " (CUDA_VISIBLE_DEVICES=" + *visible + ")" : std::string(),
               ": start at most ", n_visible_devices, " processes per node (GPUS=", n_visible_devices, ")");
}

}  // namespace ampkit::dist
