/// @brief A small TCP rendezvous (POSIX sockets): rank 0 hands one opaque blob (the 128-byte
/// ncclUniqueId) to every other rank, with retries, a deadline and errors that say what to check.
///
/// Protocol (all integers big-endian):
///   peer -> rank 0: "AMPKRDV1", u32 rank, u32 world_size, u32 blob_bytes
///   rank 0 -> peer: "AMPKRDV1", u32 status (0 ok, 1 refused), u32 n, n bytes (blob or reason)
/// A peer whose rank, world size or blob size disagrees with rank 0's is refused and BOTH sides
/// fail at once: a launch with inconsistent variables should stop in seconds, not time out.
/// Connections that do not speak the protocol (port scanners, stale clients) are dropped.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/dist/launch_env.hpp"

namespace ampkit::dist {

namespace detail {

using Clock = std::chrono::steady_clock;
inline constexpr std::array<char, 8> kRdvMagic = {'A', 'M', 'P', 'K', 'R', 'D', 'V', '1'};
inline constexpr std::uint32_t kRdvOk = 0, kRdvRefused = 1;
/// A reason text longer than this is not a reason: the peer is not speaking our protocol.
inline constexpr std::uint32_t kRdvMaxPayload = 1 << 16;

inline std::string errno_text(int e) { return std::strerror(e); }

/// Owns one socket descriptor.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Socket& operator=(Socket&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Socket() { close(); }
  void close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

inline int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1 << 30));
}

/// Wait until `fd` is ready for `events` or the deadline passes (false).
inline bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

/// Send or receive exactly n bytes before the deadline; false with `err` set otherwise.
inline bool send_all(int fd, const void* data, std::size_t n, Clock::time_point deadline, std::string& err) {
  const char* p = static_cast<const char*>(data);
  while (n) {
    if (!wait_fd(fd, POLLOUT, deadline)) {
      err = "send timed out";
      return false;
    }
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);  // a closed peer must not SIGPIPE us
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      err = "send: " + errno_text(errno);
      return false;
    }
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

inline bool recv_all(int fd, void* data, std::size_t n, Clock::time_point deadline, std::string& err) {
  char* p = static_cast<char*>(data);
  while (n) {
    if (!wait_fd(fd, POLLIN, deadline)) {
      err = "receive timed out";
      return false;
    }
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k == 0) {
      err = "connection closed by the other side";
      return false;
    }
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      err = "receive: " + errno_text(errno);
      return false;
    }
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

inline void put_u32(std::vector<char>& out, std::uint32_t v) {
  const std::uint32_t be = htonl(v);
  const char* b = reinterpret_cast<const char*>(&be);
  out.insert(out.end(), b, b + 4);
}
inline std::uint32_t get_u32(const char* p) {
  std::uint32_t be;
  std::memcpy(&be, p, 4);
  return ntohl(be);
}

inline void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/// "host:port", with brackets around IPv6 literals.
inline std::string host_port(std::string_view host, int port) {
  const bool v6 = host.find(':') != std::string_view::npos;
  return ::ampkit::detail::concat(v6 ? "[" : "", host, v6 ? "]" : "", ":", port);
}

}  // namespace detail

/// Rank 0's side. Binds in the constructor (port 0 picks a free port, for tests), so that peers
/// started earlier simply retry until it listens.
class RendezvousServer {
 public:
  explicit RendezvousServer(int port) {
    using detail::errno_text;
    // Dual-stack when the host has IPv6, so MASTER_ADDR may resolve to ::1 or 127.0.0.1 alike.
    int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool v6 = fd >= 0;
    if (!v6) fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    AMPKIT_CHECK(fd >= 0, "rank 0: cannot create the rendezvous socket: ", errno_text(errno));
    sock_ = detail::Socket(fd);
    const int one = 1, zero = 0;
    (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // restart right after a crash
    int rc;
    if (v6) {
      (void)::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_any;
      a.sin6_port = htons(static_cast<std::uint16_t>(port));
      rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    } else {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_ANY);
      a.sin_port = htons(static_cast<std::uint16_t>(port));
      rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    }
    if (rc != 0) {
      const int e = errno;
      AMPKIT_CHECK(e != EADDRINUSE, "rank 0: rendezvous port ", port,
                   " is already in use: another job (or a previous run still shutting down) holds it. "
                   "Pick another MASTER_PORT (tools/dist_train.sh: PORT=29501 ...)");
      AMPKIT_FAIL("rank 0: cannot bind the rendezvous socket to port ", port, ": ", errno_text(e));
    }
    AMPKIT_CHECK(::listen(fd, 128) == 0, "rank 0: listen on port ", port, ": ", errno_text(errno));
    detail::set_nonblocking(fd);
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    AMPKIT_CHECK(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0, "rank 0: getsockname: ",
                 errno_text(errno));
    port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }

  int port() const { return port_; }

  /// Give `blob` to ranks 1 .. world_size-1, each once; return when all have it.
  void serve(std::span<const std::byte> blob, int world_size, std::chrono::milliseconds timeout) {
    using namespace detail;
    AMPKIT_CHECK(world_size >= 1, "rendezvous: world size ", world_size, " must be at least 1");
    const auto deadline = Clock::now() + timeout;
    std::vector<bool> served(static_cast<std::size_t>(world_size), false);
    served[0] = true;
    int n_served = 0;
    while (n_served < world_size - 1) {
      if (!wait_fd(sock_.fd(), POLLIN, deadline)) {
        std::string missing;
        int n_missing = 0;
        for (int r = 1; r < world_size; ++r) {
          if (served[static_cast<std::size_t>(r)]) continue;
          if (n_missing < 16) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
          ++n_missing;
        }
        if (n_missing > 16) missing += ", ...";
        AMPKIT_FAIL("rank 0: rendezvous on port ", port_, " timed out after ", format_seconds(timeout), ": ",
                    n_served, " of ", world_size - 1, " peer ranks connected, still missing rank(s) ", missing,
                    " (world size ", world_size, "). Check that those ranks were started with the same "
                    "MASTER_ADDR, MASTER_PORT and WORLD_SIZE, and look at their output for an earlier error; "
                    "raise the limit with AMPKIT_DIST_TIMEOUT=seconds");
      }
      Socket conn(::accept4(sock_.fd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!conn) continue;  // EAGAIN / ECONNABORTED: a peer gave up between poll and accept
      // One slow peer must not eat the whole budget; it retries if dropped.
      const auto conn_deadline = std::min(deadline, Clock::now() + std::chrono::seconds(10));
      std::array<char, 20> hello{};
      std::string err;
      if (!recv_all(conn.fd(), hello.data(), hello.size(), conn_deadline, err)) continue;
      if (!std::equal(kRdvMagic.begin(), kRdvMagic.end(), hello.begin())) continue;  // not one of ours
      const auto rank = static_cast<std::int64_t>(get_u32(hello.data() + 8));
      const auto world = static_cast<std::int64_t>(get_u32(hello.data() + 12));
      const auto bytes = static_cast<std::size_t>(get_u32(hello.data() + 16));
      std::string refuse;
      if (world != world_size)
        refuse = ::ampkit::detail::concat("rank ", rank, " was started with WORLD_SIZE=", world,
                                          " but rank 0 with WORLD_SIZE=", world_size,
                                          ": every rank must get the same world size");
      else if (rank < 1 || rank >= world_size)
        refuse = ::ampkit::detail::concat("a peer says it is rank ", rank, ", outside 1..", world_size - 1);
      else if (served[static_cast<std::size_t>(rank)])
        refuse = ::ampkit::detail::concat("rank ", rank, " connected twice: two processes were started with RANK=",
                                          rank);
      else if (bytes != blob.size())
        refuse = ::ampkit::detail::concat("rank ", rank, " expects a ", bytes, "-byte id, rank 0 has ",
                                          blob.size(), " bytes: different ampkit/NCCL builds on different ranks?");
      std::vector<char> reply(kRdvMagic.begin(), kRdvMagic.end());
      put_u32(reply, refuse.empty() ? kRdvOk : kRdvRefused);
      if (refuse.empty()) {
        put_u32(reply, static_cast<std::uint32_t>(blob.size()));
        const char* b = reinterpret_cast<const char*>(blob.data());
        reply.insert(reply.end(), b, b + blob.size());
      } else {
        put_u32(reply, static_cast<std::uint32_t>(refuse.size()));
        reply.insert(reply.end(), refuse.begin(), refuse.end());
      }
      const bool sent = send_all(conn.fd(), reply.data(), reply.size(), conn_deadline, err);
      AMPKIT_CHECK(refuse.empty(), "rank 0: rendezvous refused a peer: ", refuse);
      if (!sent) continue;  // the peer retries and is served then
      served[static_cast<std::size_t>(rank)] = true;
      ++n_served;
    }
  }

 private:
  detail::Socket sock_;
  int port_ = 0;
};

/// A peer's side: connect to rank 0 at host:port (retrying while it is not up yet), identify as
/// `rank` of `world_size`, and receive the `n_bytes` blob.
inline std::vector<std::byte> rendezvous_fetch(std::string_view host, int port, int rank, int world_size,
                                               std::size_t n_bytes, std::chrono::milliseconds timeout) {
  using namespace detail;
  const auto deadline = Clock::now() + timeout;
  const std::string where = host_port(host, port);
  const std::string host_s(host), port_s = std::to_string(port);
  std::string last_error = "none";
  auto backoff = std::chrono::milliseconds(50);
  while (Clock::now() < deadline) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int gai = ::getaddrinfo(host_s.c_str(), port_s.c_str(), &hints, &res);
    if (gai != 0) {
      last_error = ::ampkit::detail::concat("cannot resolve '", host, "': ", ::gai_strerror(gai));
    } else {
      const std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
      for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        Socket s(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
        if (!s) continue;
        set_nonblocking(s.fd());
        const auto attempt_deadline = std::min(deadline, Clock::now() + std::chrono::seconds(5));
        if (::connect(s.fd(), ai->ai_addr, ai->ai_addrlen) != 0) {
          if (errno != EINPROGRESS) {
            last_error = "connect: " + errno_text(errno);
            continue;
          }
          if (!wait_fd(s.fd(), POLLOUT, attempt_deadline)) {
            last_error = "connect timed out";
            continue;
          }
          int so = 0;
          socklen_t len = sizeof(so);
          (void)::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &so, &len);
          if (so != 0) {
            last_error = "connect: " + errno_text(so);
            continue;
          }
        }
        std::vector<char> hello(kRdvMagic.begin(), kRdvMagic.end());
        put_u32(hello, static_cast<std::uint32_t>(rank));
        put_u32(hello, static_cast<std::uint32_t>(world_size));
        put_u32(hello, static_cast<std::uint32_t>(n_bytes));
        std::array<char, 16> head{};
        std::string err;
        const auto io_deadline = std::min(deadline, Clock::now() + std::chrono::seconds(30));
        if (!send_all(s.fd(), hello.data(), hello.size(), io_deadline, err) ||
            !recv_all(s.fd(), head.data(), head.size(), io_deadline, err)) {
          last_error = err;  // rank 0 busy with another peer or restarting: retry
          continue;
        }
        const std::uint32_t status = get_u32(head.data() + 8), n = get_u32(head.data() + 12);
        AMPKIT_CHECK(std::equal(kRdvMagic.begin(), kRdvMagic.end(), head.begin()) && n <= kRdvMaxPayload,
                     "rank ", rank, ": ", where, " answered, but not as ampkit's rendezvous: is MASTER_PORT "
                     "used by another program?");
        std::vector<char> payload(n);
        if (n && !recv_all(s.fd(), payload.data(), n, io_deadline, err)) {
          last_error = err;
          continue;
        }
        AMPKIT_CHECK(status == kRdvOk, "rank ", rank, ": rank 0 at ", where, " refused this rank: ",
                     std::string(payload.begin(), payload.end()));
        AMPKIT_CHECK(n == n_bytes, "rank ", rank, ": rank 0 sent ", n, " bytes, expected ", n_bytes);
        std::vector<std::byte> out(n);
        std::memcpy(out.data(), payload.data(), n);
        return out;
      }
    }
    std::this_thread::sleep_for(std::min(backoff, std::chrono::milliseconds(remaining_ms(deadline))));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
  AMPKIT_FAIL("rank ", rank, ": no rendezvous with rank 0 at ", where, " within ", format_seconds(timeout),
              " (last error: ", last_error, "). Check that rank 0 is running and has not failed, that every "
              "rank has the same MASTER_ADDR and MASTER_PORT, that '", host, "' resolves to rank 0's machine "
              "from this host, and that no firewall blocks port ", port,
              "; raise the limit with AMPKIT_DIST_TIMEOUT=seconds");
}

/// Rank 0 serves `blob` to every other rank at e.rendezvous_port; the others fetch it from
/// e.master_addr. Everyone returns the same bytes.
inline std::vector<std::byte> rendezvous_exchange(const LaunchEnv& e, std::span<const std::byte> blob,
                                                  std::size_t n_bytes) {
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(e.timeout);
  if (e.rank == 0) {
    AMPKIT_CHECK(blob.size() == n_bytes, "rendezvous: rank 0 has ", blob.size(), " bytes, expected ", n_bytes);
    if (e.world_size > 1) RendezvousServer(e.rendezvous_port).serve(blob, e.world_size, timeout);
    return {blob.begin(), blob.end()};
  }
  return rendezvous_fetch(e.master_addr, e.rendezvous_port, e.rank, e.world_size, n_bytes, timeout);
}

}  // namespace ampkit::dist
