// Running a program inside a network namespace without nsenter or a shell, and the sysctls of a
// network namespace: the node agent's per-pod iptables-restore. On this kind of node each exec
// costs milliseconds of CPU, and Node's own child_process forks the whole (large) agent process
// first, which costs more than the program it runs.
//
// spawnInNetns: as in tcp.cc, the calling thread enters the target netns, posix_spawnp runs, and
// the thread goes back, all inside one native call; the child inherits the thread's network
// namespace (clone copies the calling thread's namespaces). glibc's posix_spawn uses
// clone(CLONE_VM | CLONE_VFORK): no page tables copied, the parent waits only until the exec.
// stdin, stdout and stderr are memfds (no pipes to drive): the input is written before the spawn,
// the output read after the exit, which a pidfd reports on Node's event loop (poller.cc).
// sysctls: the same switch around opening files under /proc/sys/net, which resolve to the
// namespace of the task that opens them.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"

extern char** environ;

namespace weir {

namespace {

// Closes the fd when it goes out of scope, unless released.
struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

// Leaves the netns on every way out of the scope (return or throw).
struct InNetns {
  NetnsSwitch sw;
  ~InNetns() { LeaveNetns(sw); }
};

bool WriteAll(int fd, const uint8_t* data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// The whole content of a memfd (from offset 0).
bool ReadAll(int fd, std::string* out) {
  char buf[16384];
  off_t off = 0;
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out->append(buf, static_cast<size_t>(n));
    off += n;
  }
}

std::vector<std::string> StringArray(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsArray()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an array of strings");
  Napi::Array a = info[i].As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsString()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an array of strings");
    out.push_back(v.As<Napi::String>());
  }
  return out;
}

// Opens /proc/sys/<path> with flags in the current netns; -1 and errno on failure.
int OpenProcSys(const std::string& rel, int flags) {
  std::string path = "/proc/sys/" + rel;
  return open(path.c_str(), flags | O_CLOEXEC | O_NOCTTY);
}

// A spawned child until reapChild or abandonChild: its pidfd and output memfds. Kept per thread
// (each Node env, main or worker, has its own) so that an env going away abandons its own.
struct Child {
  int pidfd, outFd, errFd;
};
using Children = std::unordered_map<pid_t, Child>;
thread_local Children* children = nullptr;

void CloseFds(const Child& c) {
  close(c.pidfd);
  close(c.outFd);
  close(c.errFd);
}

// Kill, not just reap-if-exited: whoever abandons a child can no longer learn its result (the
// spawn rejected, or its worker is gone), so it must not go on changing the pod unobserved, and
// one left running would end as a zombie nobody waits for. SIGKILL cannot be caught, so the wait
// is the kernel tearing the process down, not the program's run time.
void KillAndReap(pid_t pid) {
  kill(pid, SIGKILL);  // not reaped yet, so the pid is still this child's
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

void AbandonAll(void*) {
  for (const auto& [pid, c] : *children) {
    CloseFds(c);
    KillAndReap(pid);
  }
  delete children;
  children = nullptr;
}

// 0 when pidfd_open works, else the errno saying it never will here (ENOSYS: Linux < 5.3; EPERM:
// seccomp). Without a pidfd a child could only be waited for by blocking the event loop, so
// spawnInNetns refuses before spawning. Probed once per process, on first use; a passing failure
// (EMFILE, ENOMEM) throws and is not cached.
std::atomic<int> pidfdState{-1};
int PidfdSupport(Napi::Env env) {
  int state = pidfdState.load();
  if (state >= 0) return state;
  int fd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  int e = fd < 0 ? errno : 0;
  if (fd >= 0) close(fd);
  if (e != 0 && e != ENOSYS && e != EPERM) throw SysError(env, "pidfd_open", e);
  pidfdState.store(e);
  return e;
}

}  // namespace

// pidfdSupport() -> 0, or the errno of pidfd_open (see PidfdSupport).
static Napi::Value PidfdSupportFn(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), PidfdSupport(info.Env()));
}

// spawnInNetns(netnsFd, file, argv, input|null, id?) -> [pid, pidfd].
// file is looked up in PATH; argv includes argv[0]. Every signal is reset to its default and
// unblocked in the child (Node ignores SIGPIPE; an ignored disposition would survive the exec).
// The pidfd (poll it for the exit) and the output memfds stay the addon's until reapChild or
// abandonChild.
static Napi::Value SpawnInNetns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int nsFd = IntArg(info, 0, "netnsFd");
  if (info.Length() < 2 || !info[1].IsString()) throw Napi::TypeError::New(env, "file must be a string");
  std::string file = info[1].As<Napi::String>();
  std::vector<std::string> args = StringArray(info, 2, "argv");
  if (args.empty()) throw Napi::TypeError::New(env, "argv must hold at least argv[0]");
  const uint8_t* input = nullptr;
  size_t inputLen = 0;
  bool hasInput = false;
  if (info.Length() > 3 && !info[3].IsNull() && !info[3].IsUndefined()) {
    // Anything else (a DataView, a string) must not pass for no input: an empty iptables-restore
    // exits 0.
    if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      throw Napi::TypeError::New(env, "input must be a Uint8Array, or null for none");
    }
    Napi::Uint8Array in = info[3].As<Napi::Uint8Array>();
    input = in.Data();
    inputLen = in.ByteLength();
    hasInput = true;
  }
  double dev, ino;
  ExpectedId(info, 4, &dev, &ino);
  if (int e = PidfdSupport(env)) throw SysError(env, "pidfd_open", e);

  Fd in(hasInput ? memfd_create("weir-stdin", MFD_CLOEXEC) : open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (in.fd < 0) throw SysError(env, hasInput ? "memfd_create" : "open(/dev/null)", errno);
  if (hasInput && (!WriteAll(in.fd, input, inputLen) || lseek(in.fd, 0, SEEK_SET) < 0)) throw SysError(env, "write(stdin memfd)", errno);
  Fd out(memfd_create("weir-stdout", MFD_CLOEXEC));
  if (out.fd < 0) throw SysError(env, "memfd_create", errno);
  Fd err(memfd_create("weir-stderr", MFD_CLOEXEC));
  if (err.fd < 0) throw SysError(env, "memfd_create", errno);

  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  // dup2 onto 0/1/2 clears O_CLOEXEC on the copies; the originals close at exec.
  posix_spawn_file_actions_adddup2(&actions, in.fd, 0);
  posix_spawn_file_actions_adddup2(&actions, out.fd, 1);
  posix_spawn_file_actions_adddup2(&actions, err.fd, 2);
  // Nothing else of the agent's reaches the program: fds opened without O_CLOEXEC (by a library,
  // or in another thread) are closed in the child.
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
#else
  // Older libcs: a close action per fd open now (glibc ignores one that is closed by the spawn).
  if (DIR* d = opendir("/proc/self/fd")) {
    while (struct dirent* e = readdir(d)) {
      int fd = atoi(e->d_name);
      if (fd > 2) posix_spawn_file_actions_addclose(&actions, fd);
    }
    closedir(d);
  }
#endif
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  pid_t pid = -1;
  int rc = 0;
  {
    InNetns ns{EnterNetns(nsFd, dev, ino)};
    if (ns.sw.syscall != nullptr) {
      posix_spawn_file_actions_destroy(&actions);
      posix_spawnattr_destroy(&attr);
      throw SysError(env, ns.sw.syscall, ns.sw.err);
    }
    rc = posix_spawnp(&pid, file.c_str(), &actions, &attr, argv.data(), environ);
  }  // back home here, before any JS runs
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw SysError(env, "posix_spawnp", rc);

  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    // pidfd_open works here (probed), so this is EMFILE or ENOMEM; without a pidfd nobody
    // would wait for the child.
    int e = errno;
    KillAndReap(pid);
    throw SysError(env, "pidfd_open", e);
  }
  (*children)[pid] = Child{pidfd, out.release(), err.release()};
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, pid));
  result.Set(1u, Napi::Number::New(env, pidfd));
  return result;
}

// reapChild(pid) -> null while the child runs, else [exitCode|-1, signal|0, stdout, stderr]. Once
// it is gone (also when waitpid or reading its output fails) its fds are closed.
static Napi::Value ReapChild(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = IntArg(info, 0, "pid");
  auto it = children->find(pid);
  if (it == children->end()) throw Napi::Error::New(env, "not a running child of spawnInNetns: " + std::to_string(pid));
  Child c = it->second;
  int status = 0;
  pid_t r;
  do r = waitpid(pid, &status, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return env.Null();
  int waitErr = errno;
  children->erase(it);
  std::string out, err;
  bool ok = r > 0 && ReadAll(c.outFd, &out) && ReadAll(c.errFd, &err);
  int readErr = errno;
  CloseFds(c);
  if (r < 0) throw SysError(env, "waitpid", waitErr);
  if (!ok) throw SysError(env, "pread(output memfd)", readErr);
  Napi::Array result = Napi::Array::New(env, 4);
  result.Set(0u, Napi::Number::New(env, WIFEXITED(status) ? WEXITSTATUS(status) : -1));
  result.Set(1u, Napi::Number::New(env, WIFSIGNALED(status) ? WTERMSIG(status) : 0));
  result.Set(2u, Napi::Buffer<char>::Copy(env, out.data(), out.size()));
  result.Set(3u, Napi::Buffer<char>::Copy(env, err.data(), err.size()));
  return result;
}

// abandonChild(pid): for a caller that will not wait (its poller failed): closes the child's fds,
// kills and reaps it (see KillAndReap). Nothing for a child already reaped.
static Napi::Value AbandonChild(const Napi::CallbackInfo& info) {
  pid_t pid = IntArg(info, 0, "pid");
  auto it = children->find(pid);
  if (it != children->end()) {
    CloseFds(it->second);
    children->erase(it);
    KillAndReap(pid);
  }
  return info.Env().Undefined();
}

// procSys(netnsFd, reads, writes, id?) -> [[path, value]..., written]: inside the netns, reads
// each /proc/sys path of `reads` (relative, e.g. "net/ipv6/conf/*/disable_ipv6"; a `*` component
// matches every entry of that directory; absent paths are left out, any other failure throws
// naming the path), then writes each [path, value] of `writes` (stopping at the first failure but
// ENOENT). `written` lists, per write, 0 (done), or the errno; ENOENT means the kernel has no such
// sysctl. Values come back with trailing whitespace removed.
static Napi::Value ProcSys(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int nsFd = IntArg(info, 0, "netnsFd");
  std::vector<std::string> reads = StringArray(info, 1, "reads");
  if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(env, "writes must be an array of [path, value]");
  std::vector<std::pair<std::string, std::string>> writes;
  Napi::Array wa = info[2].As<Napi::Array>();
  for (uint32_t k = 0; k < wa.Length(); k++) {
    Napi::Value w = wa.Get(k);
    if (!w.IsArray() || w.As<Napi::Array>().Length() != 2 || !w.As<Napi::Array>().Get(0u).IsString() ||
        !w.As<Napi::Array>().Get(1u).IsString()) {
      throw Napi::TypeError::New(env, "writes must be an array of [path, value]");
    }
    writes.emplace_back(w.As<Napi::Array>().Get(0u).As<Napi::String>(), w.As<Napi::Array>().Get(1u).As<Napi::String>());
  }
  for (const auto& p : reads) {
    if (p.empty() || p[0] == '/' || p.find("..") != std::string::npos) throw Napi::TypeError::New(env, "read path must be relative to /proc/sys: " + p);
  }
  for (const auto& w : writes) {
    if (w.first.empty() || w.first[0] == '/' || w.first.find("..") != std::string::npos || w.first.find('*') != std::string::npos) {
      throw Napi::TypeError::New(env, "write path must be relative to /proc/sys, without *: " + w.first);
    }
  }
  double dev, ino;
  ExpectedId(info, 3, &dev, &ino);

  std::vector<std::pair<std::string, std::string>> values;
  std::vector<int> written;
  std::string failed;  // "open(/proc/sys/...)" of a read that failed for another reason than absence
  int failErr = 0;
  {
    InNetns ns{EnterNetns(nsFd, dev, ino)};
    if (ns.sw.syscall != nullptr) throw SysError(env, ns.sw.syscall, ns.sw.err);
    // Only ENOENT/ENOTDIR mean the kernel (or this netns) lacks the key. Anything else (EMFILE,
    // ENOMEM, EACCES) must not pass for absence: a caller would conclude e.g. that IPv6 is off.
    // True: absent, carry on; false: the failure is recorded, to throw once back home.
    auto absentOrFail = [&](const char* op, const std::string& path, int e) {
      if (e == ENOENT || e == ENOTDIR) return true;
      failed = std::string(op) + "(/proc/sys/" + path + ")";
      failErr = e;
      return false;
    };
    auto readOne = [&](const std::string& rel) {
      Fd f(OpenProcSys(rel, O_RDONLY));
      if (f.fd < 0) return absentOrFail("open", rel, errno);
      std::string v;
      if (!ReadAll(f.fd, &v)) return absentOrFail("read", rel, errno);  // ENOENT: it went away meanwhile
      while (!v.empty() && (v.back() == '\n' || v.back() == ' ' || v.back() == '\t')) v.pop_back();
      values.emplace_back(rel, v);
      return true;
    };
    for (const auto& p : reads) {
      if (!failed.empty()) break;
      size_t star = p.find("/*/");
      if (star == std::string::npos) {
        readOne(p);
        continue;
      }
      // One `*` component: list that directory (itself resolved in this netns).
      std::string dir = p.substr(0, star);
      DIR* d = opendir(("/proc/sys/" + dir).c_str());
      if (d == nullptr) {
        absentOrFail("opendir", dir, errno);
        continue;
      }
      for (;;) {
        errno = 0;  // readdir's end and its failure differ only by errno
        struct dirent* e = readdir(d);
        if (e == nullptr) {
          if (errno != 0) absentOrFail("readdir", dir, errno);
          break;
        }
        if (e->d_name[0] == '.') continue;
        if (!readOne(dir + "/" + e->d_name + p.substr(star + 2))) break;
      }
      closedir(d);
    }
    if (!failed.empty()) writes.clear();  // a failed read ends the call: nothing written
    for (const auto& w : writes) {
      Fd f(OpenProcSys(w.first, O_WRONLY));
      int e = 0;
      if (f.fd < 0) e = errno;
      else if (!WriteAll(f.fd, reinterpret_cast<const uint8_t*>(w.second.data()), w.second.size())) e = errno ? errno : EIO;
      written.push_back(e);
      if (e != 0 && e != ENOENT) break;
    }
  }  // back home before any JS value is made
  if (!failed.empty()) throw SysError(env, failed.c_str(), failErr);
  Napi::Array result = Napi::Array::New(env, values.size() + 1);
  uint32_t i = 0;
  for (const auto& v : values) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, Napi::String::New(env, v.first));
    pair.Set(1u, Napi::String::New(env, v.second));
    result.Set(i++, pair);
  }
  Napi::Array w = Napi::Array::New(env, written.size());
  for (uint32_t k = 0; k < written.size(); k++) w.Set(k, Napi::Number::New(env, written[k]));
  result.Set(i, w);
  return result;
}

void InitSpawn(Napi::Env env, Napi::Object exports) {
  if (children == nullptr) {
    children = new Children();
    // A worker that ends (or is terminated) with children running leaves neither zombies nor fds.
    napi_add_env_cleanup_hook(env, AbandonAll, nullptr);
  }
  exports.Set("pidfdSupport", Napi::Function::New(env, PidfdSupportFn, "pidfdSupport"));
  exports.Set("abandonChild", Napi::Function::New(env, AbandonChild, "abandonChild"));
  exports.Set("spawnInNetns", Napi::Function::New(env, SpawnInNetns, "spawnInNetns"));
  exports.Set("reapChild", Napi::Function::New(env, ReapChild, "reapChild"));
  exports.Set("procSys", Napi::Function::New(env, ProcSys, "procSys"));
}

}  // namespace weir
