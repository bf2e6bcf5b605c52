// embtab/io.hpp: whole-file reads and atomic whole-file writes (POSIX).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>

namespace embtab {

// IoError: the operating system refused a read or write. what() is the failed step with the
// file it touched and errno's text; `error` is errno and `path` the caller's path (the file
// being written or read, not a temporary).
struct IoError : std::runtime_error {
    IoError(const std::string& what, int err, std::string path_)
        : std::runtime_error(what + ": " + std::strerror(err)), error(err), path(std::move(path_)) {}
    int error;
    std::string path;
};

// kTmpStemBytes: how much of the target's file name atomic_write_file's temporary keeps (the
// suffix ".tmp-<pid>-<random>" adds at most 5 + 10 + 1 + 10 bytes).
inline constexpr std::size_t kTmpStemBytes = 200;

// atomic_write_file replaces `path` with `data` so that a crash or an error at any point
// leaves either the old file or the complete new one: it writes a temporary file in the same
// directory, fsyncs it, renames it over `path` and fsyncs the directory. On error the
// temporary is removed and IoError thrown; the old file is untouched. A `path` that exists
// as something other than a regular file, a symbolic link or a directory (a FIFO, a device,
// a socket) is refused before anything is written: a rename would replace the node itself
// (a directory fails in rename; a link is replaced, its target left alone). The new file
// keeps the read/write/execute bits of the regular file it replaces (of a link's target),
// where the file system allows it.
inline void atomic_write_file(const std::string& path, const std::string& data) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode) &&
        !S_ISDIR(st.st_mode)) {
        throw IoError("cannot replace " + path + " (not a regular file)", EINVAL, path);
    }
    std::random_device rd;
    // The temporary's name is the target's, cut to kTmpStemBytes bytes of its last component,
    // plus a suffix: a legal target name of up to NAME_MAX (255) bytes keeps a legal temporary.
    const auto slash_at = path.find_last_of('/');
    const std::size_t base = slash_at == std::string::npos ? 0 : slash_at + 1;
    const std::string tmp = path.substr(0, base + std::min(path.size() - base, kTmpStemBytes)) + ".tmp-" +
                            std::to_string(::getpid()) + "-" + std::to_string(rd());
    // A new file gets 0666 less the umask, as open() in Python gives; a replaced one keeps its
    // permission bits (a file made private with chmod 600 stays private).
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        const int err = errno;
        throw IoError("cannot create " + tmp, err, path);
    }
    auto fail = [&](const std::string& what) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        throw IoError(what + " " + tmp, err, path);
    };
    // Best effort: a file system that refuses chmod (vfat, some network mounts) keeps the
    // new file's mode, as before; the set-user/group-ID and sticky bits are not carried.
    struct stat old {};
    if (::stat(path.c_str(), &old) == 0 && S_ISREG(old.st_mode)) (void)::fchmod(fd, old.st_mode & 0777);
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t w = ::write(fd, data.data() + done, data.size() - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            fail("cannot write");
        }
        done += static_cast<std::size_t>(w);
    }
    if (::fsync(fd) != 0) fail("cannot fsync");
    if (::close(fd) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw IoError("cannot close " + tmp, err, path);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw IoError("cannot rename " + tmp + " to " + path, err, path);
    }
    const auto slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

// read_file returns the whole content of `path`; throws IoError if it cannot be read.
inline std::string read_file(const std::string& path) {
    // O_NONBLOCK: opening a FIFO with no writer would block in open() itself (it has no
    // effect on a regular file's reads)
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        const int err = errno;
        throw IoError("cannot open " + path, err, path);
    }
    // Only a regular file: a device such as /dev/zero, or a FIFO, may never end.
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        throw IoError("cannot stat " + path, err, path);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw IoError("cannot read " + path + " (not a regular file)", EINVAL, path);
    }
    std::string out;
    char buf[1 << 16];
    for (;;) {
        const ssize_t r = ::read(fd, buf, sizeof buf);
        if (r < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            ::close(fd);
            throw IoError("cannot read " + path, err, path);
        }
        if (r == 0) break;
        out.append(buf, static_cast<std::size_t>(r));
    }
    ::close(fd);
    return out;
}

}  // namespace embtab
