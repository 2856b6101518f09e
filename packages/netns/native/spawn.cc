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

#include <string>
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

}  // namespace

// spawnInNetns(netnsFd, file, argv, input|null, id?) -> [pid, pidfd, stdoutFd, stderrFd].
// file is looked up in PATH; argv includes argv[0]. Every signal is reset to its default and
// unblocked in the child (Node ignores SIGPIPE; an ignored disposition would survive the exec).
// The four fds are the caller's (O_CLOEXEC); reapChild closes them once the child is gone.
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
  if (info.Length() > 3 && info[3].IsTypedArray()) {
    Napi::Uint8Array in = info[3].As<Napi::Uint8Array>();
    input = in.Data();
    inputLen = in.ByteLength();
    hasInput = true;
  }
  double dev, ino;
  ExpectedId(info, 4, &dev, &ino);

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
    int e = errno;
    // Without a pidfd nobody would reap it: wait here (it already runs, it will end).
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    throw SysError(env, "pidfd_open", e);
  }
  Napi::Array result = Napi::Array::New(env, 4);
  result.Set(0u, Napi::Number::New(env, pid));
  result.Set(1u, Napi::Number::New(env, pidfd));
  result.Set(2u, Napi::Number::New(env, out.release()));
  result.Set(3u, Napi::Number::New(env, err.release()));
  return result;
}

// reapChild(pid, pidfd, stdoutFd, stderrFd) -> null while the child runs, else
// [exitCode|-1, signal|0, stdout, stderr]; then the three fds are closed.
static Napi::Value ReapChild(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = IntArg(info, 0, "pid");
  int pidfd = IntArg(info, 1, "pidfd");
  int outFd = IntArg(info, 2, "stdoutFd");
  int errFd = IntArg(info, 3, "stderrFd");
  int status = 0;
  pid_t r;
  do r = waitpid(pid, &status, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r < 0) throw SysError(env, "waitpid", errno);
  if (r == 0) return env.Null();
  std::string out, err;
  bool ok = ReadAll(outFd, &out) && ReadAll(errFd, &err);
  int readErr = errno;
  close(pidfd);
  close(outFd);
  close(errFd);
  if (!ok) throw SysError(env, "pread(output memfd)", readErr);
  Napi::Array result = Napi::Array::New(env, 4);
  result.Set(0u, Napi::Number::New(env, WIFEXITED(status) ? WEXITSTATUS(status) : -1));
  result.Set(1u, Napi::Number::New(env, WIFSIGNALED(status) ? WTERMSIG(status) : 0));
  result.Set(2u, Napi::Buffer<char>::Copy(env, out.data(), out.size()));
  result.Set(3u, Napi::Buffer<char>::Copy(env, err.data(), err.size()));
  return result;
}

// procSys(netnsFd, reads, writes, id?) -> [[path, value]..., written]: inside the netns, reads
// each /proc/sys path of `reads` (relative, e.g. "net/ipv6/conf/*/disable_ipv6"; a `*` component
// matches every entry of that directory; absent paths are left out, any other failure throws
// naming the path), then writes each [path, value] of `writes` (stopping at the first failure but
// ENOENT). `written` lists, per write, 0 (done), or the errno; ENOENT means the kernel has no such sysctl. Values come back with trailing
// whitespace removed.
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
    if (!failed.empty()) writes.clear();
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
  exports.Set("spawnInNetns", Napi::Function::New(env, SpawnInNetns, "spawnInNetns"));
  exports.Set("reapChild", Napi::Function::New(env, ReapChild, "reapChild"));
  exports.Set("procSys", Napi::Function::New(env, ProcSys, "procSys"));
}

}  // namespace weir
